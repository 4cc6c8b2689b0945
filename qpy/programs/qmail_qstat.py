"""qmail-qstat - summarize the queue.

SYNOPSIS  qmail-qstat
RUNS AS   root or qmails (anyone who can read queue/)
PRINTS    ``messages in queue: N`` (files in mess/*) and
          ``messages in queue but not yet preprocessed: M`` (files in todo/).
EXIT      0; 111 if the queue cannot be read (one line on stderr).
"""
from __future__ import annotations

import os

import click

from qpy import auto, queuedir
from qpy.errors import Exit
from qpy.programs import options


def count(queue: str) -> tuple[int, int]:
    """Return (messages in mess/*, entries in todo/)."""
    return len(queuedir.scan_split(queue, "mess")), len(queuedir.scan_flat(queue, "todo"))


@click.command(context_settings=options.CONTEXT)
def cli() -> None:
    """Print the number of queued and not yet preprocessed messages."""
    try:
        messages, todo = count(os.path.join(auto.home(), "queue"))
    except OSError as e:
        raise Exit(111, f"unable to read the queue: {e.strerror}")
    click.echo(f"messages in queue: {messages}")
    click.echo(f"messages in queue but not yet preprocessed: {todo}")


def main(argv: list[str] | None = None) -> int:
    """Run the click command; return its exit code."""
    return options.run(cli, "qmail-qstat", argv)
