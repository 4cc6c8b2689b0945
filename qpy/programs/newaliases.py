"""newaliases - compile /etc/aliases into /etc/aliases.cdb for fastforward.

SYNOPSIS  newaliases [-f|--file ALIASES]
          (also ``sendmail -bi`` and sendmail run as ``newaliases``)
RUNS AS   the admin (whoever may write the file's directory).
READS     ALIASES: --file, else $QPY_ALIASES, else /etc/aliases; control/me, defaulthost,
          defaultdomain, plusdomain (to complete addresses).  Format (sendmail's, as read
          by fastforward's newaliases; see qpy.aliases): ``name: addr, addr, "|prog args",
          /mbox/file, /maildir/, :include:/path/list``, continuation lines start with a
          blank, ``#`` lines are comments, names match without regard to case, and an
          ``owner-name`` alias becomes the envelope sender of mail forwarded through name.
WRITES    ALIASES.tmp, fsync, rename to ALIASES.cdb (mode 0644); the old cdb stays in use
          until the rename.  Records: fastforward's (``:name@`` → ``&addr\\0!prog\\0…``,
          ``?name@`` → owner), plus qpy's ``>/path`` file deliveries.
EXIT      0; 100 NUL bytes or addresses over 800 bytes; 111 unparsable line, unreadable
          file, write trouble (``newaliases: fatal: …``; the old cdb is kept).
"""
from __future__ import annotations

import os

import click

from qpy import aliases, auto, cdb
from qpy.errors import Exit, QmailError
from qpy.programs import options

DEFAULT = "/etc/aliases"


def compile_file(path: str) -> int:
    """Compile ``path`` into ``path.cdb``; return the number of aliases."""
    try:
        os.chdir(auto.home())
    except OSError as e:
        raise Exit(111, f"unable to chdir to {auto.home()}: {e.strerror}")
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as e:
        raise Exit(111, f"unable to read {path}: {e.strerror}")
    try:
        records = aliases.compile_aliases(text, aliases.Qualifier.from_control())
    except QmailError as e:
        raise Exit(e.exit_code, e.text)
    try:
        cdb.rebuild(path + ".cdb", records, tmp=path + ".tmp", mode=0o644)
        os.chmod(path + ".cdb", 0o644)
    except OSError as e:
        raise Exit(111, f"unable to write {path}.tmp: {e.strerror}")
    return sum(1 for key, _ in records if key.startswith(b":"))


@click.command(context_settings=options.CONTEXT)
@click.option("-f", "--file", "path", envvar="QPY_ALIASES", default=DEFAULT, show_default=True,
              help="The aliases file ($QPY_ALIASES); the cdb is FILE.cdb.")
def cli(path: str) -> None:
    """Compile an aliases file into the cdb fastforward reads."""
    os.umask(0o022)
    compile_file(os.path.abspath(path))


def main(argv: list[str] | None = None) -> int:
    """Run the click command; return its exit code."""
    return options.run(cli, "newaliases", argv)
