"""qpy - create and run qpy instances.

SYNOPSIS  qpy init [--home DIR] [--me HOSTNAME]
RUNS AS   the admin.  As root with the qmail accounts present, ``init`` gives the
          instance qmail's owners and modes (privileged mode); otherwise every file
          belongs to the invoking user (single-user mode).
WRITES    the instance tree of qpy.hier: control/ (existing files are kept), queue/ in
          qmail's layout, users/, alias/, bin/ (shims for this interpreter).
EXIT      0 ok; 100 usage; 111 on any failure (one line on stderr).
"""
from __future__ import annotations

import os
import socket

import click

from qpy import hier, prot
from qpy.programs import options


def default_me() -> str:
    """This host's fully qualified name, as best the resolver knows it."""
    return socket.getfqdn() or socket.gethostname() or "localhost"


@click.group(context_settings=options.CONTEXT)
def cli() -> None:
    """Create, run and inspect qpy mail instances."""


@cli.command()
@options.home_option
@click.option("--me", default=None, help="This host's FQDN (default: the system's).")
def init(home: str, me: str | None) -> None:
    """Create (or repair) an instance directory."""
    home = os.path.abspath(home)
    priv = os.geteuid() == 0 and prot.accounts_exist()
    try:
        hier.install(home, (me or default_me()).encode(), priv)
    except OSError as e:
        raise options.Fatal(f"unable to create {e.filename or home}: {e.strerror}")
    mode = "privileged" if priv else "single-user"
    click.echo(f"qpy: instance ready at {home} ({mode} mode)")


def main(argv: list[str] | None = None) -> int:
    """Dispatch a qpy subcommand."""
    return options.run(cli, "qpy", argv)
