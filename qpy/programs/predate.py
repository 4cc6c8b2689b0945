"""predate - run a program with a local-time Date field in front of its input.

SYNOPSIS  predate program [arg ...]
RUNS AS   the user.
DOES      runs program (execvp) with a pipe on its stdin, writes
          ``Date: D Mon YYYY hh:mm:ss +hhmm`` (local time, the offset from UTC rounded to
          minutes) and then copies its own stdin into the pipe.
EXIT      the program's exit code; 100 usage; 111 if the program cannot be run or
          crashed (one line ``predate: fatal: …`` on stderr).
"""
from __future__ import annotations

import os
import signal
import sys

from qpy import child, received


def date_line(now: float | None = None) -> bytes:
    """``Date: …\\n`` in local time with its numeric offset."""
    return b"Date: " + received.date_local(now) + b"\n"


def predate(argv: list[str]) -> int:
    """Run argv behind a Date line."""
    def cannot_run(err: OSError) -> int:
        os.write(2, f"predate: fatal: unable to run {argv[0]}: {err.strerror}\n".encode())
        return 111
    try:
        return child.run_fed(argv, date_line(), exec_fail=cannot_run)
    except child.Crashed:
        os.write(2, b"predate: fatal: child crashed\n")
        return 111


def main(argv: list[str] | None = None) -> int:
    """Prepend a Date field to the input of a program."""
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    if not argv:
        sys.stderr.write("predate: usage: predate child\n")
        return 100
    return predate(argv)
