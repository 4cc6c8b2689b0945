"""except - reverse a program's exit code for qmail-local (bin name ``except``).

SYNOPSIS  | except program [arg ...]
RUNS AS   the recipient, under qmail-local.
DOES      runs program (execvp) on the message: exit 0 → 100 (bounce); 111 → 111;
          anything else → 0.
EXIT      as above; 100 usage; 111 if the child crashed or could not be started.
"""
from __future__ import annotations

import sys

from qpy import child


def main(argv: list[str] | None = None) -> int:
    """Run argv and turn success into a bounce."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        sys.stderr.write("except: usage: except program [ arg ... ]\n")
        return 100
    try:
        code = child.wait(child.start(argv))
    except child.Crashed:
        sys.stderr.write("except: fatal: child crashed\n")
        return 111
    except OSError as e:
        sys.stderr.write(f"except: fatal: unable to fork: {e.strerror}\n")
        return 111
    if code == 0:
        return 100
    if code == 111:
        sys.stderr.write("except: fatal: temporary child error\n")
        return 111
    return 0
