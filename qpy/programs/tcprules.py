"""tcprules - compile tcpserver access rules into a cdb (ucspi-tcp 0.88 compatible).

SYNOPSIS  tcprules rules.cdb rules.tmp   (rules on stdin)
RUNS AS   the admin.
READS     rule lines ``address:allow|deny[,VAR=<q>value<q>]…`` on fd 0; ``#`` lines, empty
          lines and lines without ``:`` are skipped; trailing spaces and tabs ignored.
WRITES    rules.tmp, fsync, rename over rules.cdb: the same bytes as ucspi-tcp's tcprules
          (qpy.tcprules).  Nothing is written when a line is bad.
EXIT      0 done; 100 usage or ``tcprules: fatal: unable to parse this line: …``;
          111 read/create/write/rename trouble (``tcprules: fatal: …``, djb's error texts).
"""
from __future__ import annotations

import os
import sys

from qpy import errstr, fdio, tcprules

USAGE = "tcprules: usage: tcprules rules.cdb rules.tmp"
FATAL = "tcprules: fatal: "


def fatal(text: str, code: int = 111) -> int:
    """One line on stderr; return the exit code."""
    os.write(2, os.fsencode(FATAL + text + "\n"))
    return code


def main(argv: list[str] | None = None) -> int:
    """Read rules on fd 0 and write the cdb."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        os.write(2, (USAGE + "\n").encode())
        return 100
    path, tmp = argv[0], argv[1]
    try:
        text = fdio.read_all(0)
    except OSError as e:
        return fatal(f"unable to read input: {errstr.text(e)}")
    try:
        records = tcprules.compile_rules(text)
    except tcprules.BadLine as e:
        return fatal(f"unable to parse this line: {e.text}", 100)
    try:
        tcprules.write(path, tmp, records)
    except OSError as e:
        if e.filename2 is not None:
            return fatal(f"unable to move {tmp} to {path}: {errstr.text(e)}")
        if e.filename == tmp:
            return fatal(f"unable to create {tmp}: {errstr.text(e)}")
        return fatal(f"unable to write to {tmp}: {errstr.text(e)}")
    return 0
