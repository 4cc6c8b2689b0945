"""datemail - sendmail with a local-time Date field added (``predate sendmail``).

SYNOPSIS  datemail [sendmail arguments]
RUNS AS   the user.
DOES      runs our sendmail with the arguments; its input is a ``Date:`` line in local
          time (predate's format) followed by datemail's stdin.
EXIT      sendmail's exit code; 111 if it cannot be run or crashed.
"""
from __future__ import annotations

import signal
import sys

from qpy.programs import predate


def main(argv: list[str] | None = None) -> int:
    """Run sendmail behind a Date line."""
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    return predate.predate(argv, program="sendmail")
