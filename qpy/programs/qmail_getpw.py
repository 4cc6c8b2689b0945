"""qmail-getpw - say which account gets mail for a local part.

SYNOPSIS  qmail-getpw local
RUNS AS   qmailp (group nofiles), started by qmail-lspawn in privileged mode (warm or
          exec'd); the invoking user in single-user mode.  Nothing else is needed.
READS     the passwd database (getpwnam) and stat()s candidate home directories.
WRITES    on fd 1: ``user\\0uid\\0gid\\0homedir\\0dash\\0ext\\0``.
SEARCH    prefixes of ``local`` ending at its end or before a ``-``, longest first,
          shorter than 32 bytes, lowercased: a passwd user with uid ≠ 0 whose home
          exists and belongs to it.  Whole match → dash and ext empty; ``name-rest`` →
          dash ``-``, ext ``rest``.  No match → the alias account with dash ``-``, ext =
          local; its home is QMAILHOME/alias (see qpy.getpw for the modes).
TRUSTS    nothing: ``local`` comes from an envelope address and is only used as a name.
EXIT      0 ok; 100 no argument; 115 temporary error from stat (NFS); 116 no alias
          account; 111 write error.
"""
from __future__ import annotations

import os
import sys

from qpy import fdio, getpw
from qpy.errors import TempFail


def main(argv: list[str] | None = None) -> int:
    """Print the lookup result for argv[0]."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        return 100
    try:
        entry = getpw.lookup(os.fsencode(args[0]))
    except TempFail as e:
        return e.exit_code
    try:
        fdio.write_all(1, entry.encode())
    except OSError:
        return 111
    return 0
