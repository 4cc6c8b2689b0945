"""qmail-tcpto - print the table of remote hosts whose connect timed out.

SYNOPSIS  qmail-tcpto
RUNS AS   root or qmailr (anyone who can open queue/lock/tcpto for writing, to lock it)
READS     queue/lock/tcpto (qmail's IPv4 table) and queue/lock/tcpto6 (qpy's IPv6 table,
          skipped if missing) under flock; see qpy.tcpto for the formats.
PRINTS    one line per host with a nonzero count, IPv4 file first, in file order:
          ``<ip> timed out <seconds> seconds ago; # recent timeouts: <count>``
EXIT      0; 111 if the table cannot be opened, locked or read (one line on stderr).
"""
from __future__ import annotations

import time

import click

from qpy import tcpto
from qpy.errors import Exit
from qpy.programs import options


def lines(entries: list[tcpto.Entry], now: int) -> list[str]:
    """qmail-tcpto's output lines."""
    return [f"{e.ip} timed out {now - e.when} seconds ago; # recent timeouts: {e.count}"
            for e in entries]


@click.command(context_settings=options.CONTEXT)
def cli() -> None:
    """Print the remote-host timeout table (queue/lock/tcpto)."""
    try:
        entries = tcpto.entries()
    except OSError as e:
        raise Exit(111, f"unable to read tcpto: {e.strerror}")
    for line in lines(entries, int(time.time())):
        click.echo(line)


def main(argv: list[str] | None = None) -> int:
    """Run the click command; return its exit code."""
    return options.run(cli, "qmail-tcpto", argv)
