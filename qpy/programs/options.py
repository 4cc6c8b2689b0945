"""Shared pieces of the human-facing (click) tools: option sets and exit-code mapping.

Not a program: it has no bin/ shim.  Click's own exit 2 for usage errors would
collide with qmail's codes, so ``run`` maps usage errors to 100 and other
failures to 111, each as one ``<name>: fatal: …`` line on stderr; a command leaves
with its own code through ``qpy.errors.Exit``, shown the same way.
"""
from __future__ import annotations

import click

from qpy.errors import Exit

CONTEXT = {"help_option_names": ["-h", "--help"]}

home_option = click.option(
    "--home", envvar="QMAILHOME", default="/var/qmail", show_default=True,
    type=click.Path(file_okay=False), help="The instance directory ($QMAILHOME).")


def run(command: click.Command, name: str, argv: list[str] | None) -> int:
    """Run a click command without letting click exit; return qmail's exit code."""
    try:
        result = command.main(args=argv, prog_name=name, standalone_mode=False)
    except click.UsageError as e:
        click.echo(f"{name}: usage: {e.format_message()}", err=True)
        return 100
    except click.ClickException as e:
        click.echo(f"{name}: fatal: {e.format_message()}", err=True)
        return e.exit_code if e.exit_code not in (0, 1, 2) else 111
    except Exit as e:
        click.echo(f"{name}: fatal: {e.text}", err=True)
        return e.code
    except click.exceptions.Abort:
        return 111
    except click.exceptions.Exit as e:
        return e.exit_code
    return result if isinstance(result, int) else 0
