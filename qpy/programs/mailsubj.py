"""mailsubj - send stdin as a message with a subject.

SYNOPSIS  mailsubj subject recip [recip ...]
RUNS AS   the user.
DOES      feeds ``Subject: <subject>``, ``To: <recips joined by spaces>``, a blank line and
          then stdin to qmail-inject (which turns the spaces into commas and takes the
          recipients from the header).
EXIT      qmail-inject's exit code; 100 usage; 111 if it cannot be run.
"""
from __future__ import annotations

import os
import signal
import sys

from qpy import child, fdio


def header(subject: str, recipients: list[str]) -> bytes:
    """The lines mailsubj puts before the message (echo's output)."""
    return (b"Subject: " + os.fsencode(subject) + b"\nTo: "
            + b" ".join(os.fsencode(r) for r in recipients) + b"\n\n")


def main(argv: list[str] | None = None) -> int:
    """Send stdin to the recipients with a Subject line."""
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    if len(argv) < 2:
        sys.stderr.write("mailsubj: usage: mailsubj subject recip ...\n")
        return 100
    r, w = os.pipe()
    pid = child.start([], stdin=r, close=(w,), program="qmail-inject")
    os.close(r)
    if fdio.feed(w, header(argv[0], argv[1:])):
        try:
            fdio.copy(0, w)
        except OSError:
            pass
    os.close(w)
    try:
        return child.wait(pid)
    except child.Crashed:
        sys.stderr.write("mailsubj: fatal: qmail-inject crashed\n")
        return 111
