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
import time

from qpy import child, fdio

MONTHS = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct",
          b"Nov", b"Dec")


def date_line(now: float | None = None) -> bytes:
    """``Date: …\\n`` in local time with its numeric offset."""
    t = time.localtime(time.time() if now is None else now)
    offset = t.tm_gmtoff or 0
    sign = b"-" if offset < 0 else b"+"
    minutes = (abs(offset) + 30) // 60
    return b"Date: %d %s %d %02d:%02d:%02d %s%02d%02d\n" % (
        t.tm_mday, MONTHS[t.tm_mon - 1], t.tm_year, t.tm_hour, t.tm_min, t.tm_sec,
        sign, minutes // 60, minutes % 60)


def predate(argv: list[str], program: str | None = None) -> int:
    """Run argv (or our ``program`` with argv as its arguments) behind a Date line."""
    r, w = os.pipe()

    def cannot_run(err: OSError) -> int:
        os.write(2, f"predate: fatal: unable to run {argv[0]}: {err.strerror}\n".encode())
        return 111
    pid = child.start(argv, stdin=r, close=(w,), program=program, exec_fail=cannot_run)
    os.close(r)
    if fdio.feed(w, date_line()):
        try:
            fdio.copy(0, w)
        except OSError:
            pass
    os.close(w)
    try:
        return child.wait(pid)
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
