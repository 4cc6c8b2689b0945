"""The next program of a chain (``tcpserver … rblsmtpd … qmail-smtpd``): ours warm, others exec'd.

A program is ours when its argv[0] is a bare name in qpy.hier.PROGRAMS, or a
path to one of our shims (qpy.shim.ours: an instance's bin/<name>, an installed
console script, the source tree's bin/, each checked by its text).
Ours run warm: ``warm.run`` in this very process, as an exec would.  Anything
else, and everything when QPY_EXEC is set, is exec'd through $PATH like
ucspi-tcp's pathexec (a bare name of ours missing from $PATH falls back to
QMAILHOME/bin/<name>).
"""
from __future__ import annotations

import os
import shutil
import signal
import sys

from qpy import auto, hier, shim, warm


def ours(prog: str) -> str | None:
    """Our program name if ``prog`` names one of our programs, else None."""
    name = os.path.basename(prog)
    if name not in hier.PROGRAMS:
        return None
    if "/" not in prog:
        return name
    return shim.ours(prog)


def preload(argv: list[str]) -> list[str]:
    """Import every program of ours named in ``argv`` (a parent does this once); return them."""
    if auto.force_exec():
        return []
    names = []
    for arg in argv:
        name = ours(arg)
        if name is not None and name not in names:
            try:
                warm.preload(name)
            except ImportError:
                continue
            names.append(name)
    return names


def exec_next(argv: list[str]) -> None:
    """exec argv through $PATH with default SIGPIPE; returns only by raising OSError."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    prog = argv[0]
    if "/" not in prog and shutil.which(prog) is None and ours(prog) is not None:
        prog = auto.path("bin", prog)
    try:
        os.execvp(prog, argv)
    finally:
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)


def run_next(argv: list[str]) -> int:
    """Become the next program: run ours warm and return its exit code, or exec (OSError if that fails)."""
    name = ours(argv[0])
    if name is not None and not auto.force_exec():
        return warm.run(name, argv[1:])
    exec_next(argv)
    raise OSError("exec returned")
