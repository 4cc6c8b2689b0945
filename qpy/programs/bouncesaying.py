"""bouncesaying - bounce the message with an error text, perhaps only if a program agrees.

SYNOPSIS  | bouncesaying error [program [arg ...]]
RUNS AS   the recipient, under qmail-local.
DOES      without a program: prints error on stderr and exits 100 (qmail-local bounces
          with that text).  With a program (execvp, on the message): exit 0 → bounce as
          above; 111 → 111; anything else → 0 (deliver normally).
EXIT      100 bounced or usage; 111 temporary failure or crashed child; 0 otherwise.
"""
from __future__ import annotations

import sys

from qpy import child


def main(argv: list[str] | None = None) -> int:
    """Bounce with argv[0] unless the program argv[1:] objects."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        sys.stderr.write("bouncesaying: usage: bouncesaying error [ program [ arg ... ] ]\n")
        return 100
    if len(argv) > 1:
        try:
            code = child.wait(child.start(argv[1:]))
        except child.Crashed:
            sys.stderr.write("bouncesaying: fatal: child crashed\n")
            return 111
        except OSError as e:
            sys.stderr.write(f"bouncesaying: fatal: unable to fork: {e.strerror}\n")
            return 111
        if code == 111:
            sys.stderr.write("bouncesaying: fatal: temporary child error\n")
            return 111
        if code != 0:
            return 0
    sys.stderr.write(argv[0] + "\n")
    sys.stderr.flush()
    return 100
