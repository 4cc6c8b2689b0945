"""maildirmake - create a maildir.

SYNOPSIS  maildirmake dir
RUNS AS   the user who will own the maildir.
DOES      umask 077; mkdir dir, dir/tmp, dir/new, dir/cur, each mode 0700.  An existing
          dir is an error (nothing is changed).
EXIT      0; 100 usage; 111 (``maildirmake: fatal: unable to mkdir …: …``) on failure.
"""
from __future__ import annotations

import os

import click

from qpy.errors import Exit
from qpy.programs import options


@click.command(context_settings=options.CONTEXT)
@click.argument("name", type=click.Path())
def cli(name: str) -> None:
    """Create the maildir NAME with tmp, new and cur."""
    os.umask(0o077)
    try:
        os.mkdir(name, 0o700)
    except OSError as e:
        raise Exit(111, f"unable to mkdir {name}: {e.strerror}")
    for sub in ("tmp", "new", "cur"):
        try:
            os.mkdir(os.path.join(name, sub), 0o700)
        except OSError as e:
            raise Exit(111, f"unable to mkdir {name}/{sub}: {e.strerror}")


def main(argv: list[str] | None = None) -> int:
    """Run the click command; return its exit code."""
    return options.run(cli, "maildirmake", argv)
