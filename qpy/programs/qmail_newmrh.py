"""qmail-newmrh - compile control/morercpthosts into control/morercpthosts.cdb.

SYNOPSIS  qmail-newmrh
RUNS AS   root (the admin); cwd QMAILHOME
READS     control/morercpthosts, one domain per line (control file rules: trailing blanks
          stripped, empty and ``#`` lines skipped).
WRITES    control/morercpthosts.tmp, fsync, rename to control/morercpthosts.cdb; keys are
          the lowercased domains, values empty.
EXIT      0 done; 111 on any error (one line on stderr); the old cdb is kept.
"""
from __future__ import annotations

import os
import sys

from qpy import auto, cdb, control
from qpy.errors import QmailError


def fatal(text: str) -> int:
    """Print qmail's one-line fatal message; return 111."""
    sys.stderr.write(f"qmail-newmrh: fatal: {text}\n")
    return 111


def main(argv: list[str] | None = None) -> int:
    """Rebuild control/morercpthosts.cdb."""
    os.umask(0o022)
    try:
        os.chdir(auto.home())
        hosts = control.read_list("morercpthosts")
    except (OSError, QmailError) as e:
        return fatal(f"unable to read control/morercpthosts: {e}")
    try:
        cdb.rebuild("control/morercpthosts.cdb", ((h.lower(), b"") for h in hosts or []),
                    tmp="control/morercpthosts.tmp")
    except OSError as e:
        return fatal(f"unable to write control/morercpthosts.cdb: {e.strerror}")
    return 0
