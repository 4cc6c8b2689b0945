"""qmail-newu - compile users/assign into users/cdb.

SYNOPSIS  qmail-newu
RUNS AS   root (the admin); cwd QMAILHOME
READS     users/assign: ``=local:user:uid:gid:home:dash:ext:`` and
          ``+loc:user:uid:gid:home:dash:pre:`` lines, ended by a line starting with ``.``.
WRITES    users/cdb.tmp, fsync, rename to users/cdb, in qmail-newu's record format:
          key ``!local\\0`` or ``!loc``, value ``user\\0uid\\0gid\\0home\\0dash\\0ext``, and
          key "" = the wildcard characters.
EXIT      0 done; 111 on any error (one line on stderr naming the bad line); the old
          users/cdb is kept.
"""
from __future__ import annotations

import os
import sys

from qpy import auto, cdb, users
from qpy.errors import QmailError


def fatal(text: str) -> int:
    """Print qmail's one-line fatal message; return 111."""
    sys.stderr.write(f"qmail-newu: fatal: {text}\n")
    return 111


def main(argv: list[str] | None = None) -> int:
    """Rebuild users/cdb from users/assign."""
    os.umask(0o022)
    try:
        os.chdir(auto.home())
    except OSError as e:
        return fatal(f"unable to chdir to {auto.home()}: {e.strerror}")
    try:
        with open("users/assign", "rb") as f:
            text = f.read()
    except OSError as e:
        return fatal(f"unable to read users/assign: {e.strerror}")
    try:
        records = users.compile_assign(text)
        cdb.rebuild("users/cdb", records)
    except QmailError as e:
        return fatal(f"users/assign {e.text}")
    except OSError as e:
        return fatal(f"unable to write users/cdb: {e.strerror}")
    return 0
