"""datemail - sendmail with a local-time Date field added (``predate sendmail``).

SYNOPSIS  datemail [sendmail arguments]
RUNS AS   the user.
DOES      runs our sendmail with the arguments; its input is a ``Date:`` line in local
          time (predate's format) followed by datemail's stdin.
EXIT      sendmail's exit code; 111 if it cannot be run or crashed.
"""
from __future__ import annotations

import os
import signal
import sys

from qpy import child, received


def main(argv: list[str] | None = None) -> int:
    """Run sendmail behind a Date line."""
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        return child.run_fed(argv, b"Date: " + received.date_local() + b"\n", program="sendmail")
    except child.Crashed:
        os.write(2, b"predate: fatal: child crashed\n")    # datemail is ``predate sendmail``
        return 111
