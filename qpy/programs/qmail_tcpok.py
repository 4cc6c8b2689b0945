"""qmail-tcpok - forget every remote-host timeout (zero queue/lock/tcpto).

SYNOPSIS  qmail-tcpok
RUNS AS   root or qmailr
WRITES    zeroes over queue/lock/tcpto (1024 bytes) and queue/lock/tcpto6 (2048 bytes,
          skipped if missing), each under flock; qmail-remote then tries every host again.
EXIT      0; 111 if the table cannot be opened, locked or written (one line on stderr).
"""
from __future__ import annotations

import click

from qpy import tcpto
from qpy.errors import Exit
from qpy.programs import options


@click.command(context_settings=options.CONTEXT)
def cli() -> None:
    """Clear the remote-host timeout table."""
    try:
        tcpto.clear()
    except OSError as e:
        raise Exit(111, f"unable to clear {e.filename or 'queue/lock/tcpto'}: {e.strerror}")


def main(argv: list[str] | None = None) -> int:
    """Run the click command; return its exit code."""
    return options.run(cli, "qmail-tcpok", argv)
