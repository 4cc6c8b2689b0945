"""preline - feed a program the message with qmail-local's UFLINE, RPLINE and DTLINE in front.

SYNOPSIS  | preline [-dfrDFR] command [arg ...]
RUNS AS   the recipient, under qmail-local.
READS     $UFLINE (``From sender date``), $RPLINE (Return-Path), $DTLINE (Delivered-To);
          -f, -r, -d leave out UFLINE, RPLINE, DTLINE (-F, -R, -D put them back).
DOES      runs command (execvp) with a pipe as stdin: the chosen lines, then the message.
          If the command stops reading early, preline stops writing and returns the
          command's exit code (qmail's preline exits 111 then).
EXIT      the command's exit code; 100 usage (also when a variable is unset) or a command
          that does not exist; 111 crashed child, fork/pipe trouble or a read error.
"""
from __future__ import annotations

import getopt
import os
import signal
import sys

from qpy import child, fdio
from qpy.errors import temporary_errno

USAGE = "preline: usage: preline cmd [ arg ... ]\n"


def main(argv: list[str] | None = None) -> int:
    """Run the command with the envelope lines prepended."""
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    lines = {name: os.environb.get(name) for name in (b"UFLINE", b"RPLINE", b"DTLINE")}
    try:
        opts, args = getopt.getopt(argv, "frdFRD")
    except getopt.GetoptError:
        opts, args = [], []
    if any(v is None for v in lines.values()) or not args:
        sys.stderr.write(USAGE)
        return 100
    use = {b"UFLINE": True, b"RPLINE": True, b"DTLINE": True}
    names = {"f": b"UFLINE", "r": b"RPLINE", "d": b"DTLINE"}
    for opt, _ in opts:
        use[names[opt[1].lower()]] = opt[1].isupper()

    def cannot_run(err: OSError) -> int:
        os.write(2, f"preline: fatal: unable to run {args[0]}: {err.strerror}\n".encode())
        return 111 if temporary_errno(err.errno) else 100
    try:
        r, w = os.pipe()
        pid = child.start(args, stdin=r, close=(w,), exec_fail=cannot_run)
    except OSError as e:
        sys.stderr.write(f"preline: fatal: unable to fork: {e.strerror}\n")
        return 111
    os.close(r)
    prefix = b"".join(lines[n] for n in (b"UFLINE", b"RPLINE", b"DTLINE") if use[n])
    try:
        if fdio.feed(w, prefix):
            fdio.copy(0, w)
    except OSError as e:
        sys.stderr.write(f"preline: fatal: unable to copy input: {e.strerror}\n")
        os.close(w)
        return 111
    os.close(w)
    try:
        return child.wait(pid)
    except child.Crashed:
        sys.stderr.write("preline: fatal: child crashed\n")
        return 111
