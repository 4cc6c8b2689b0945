"""What qmail compiles in: account names, the queue split, the spawn limit.

The instance home is the only thing taken from the environment: ``QMAILHOME``
(default ``/var/qmail``).
"""
from __future__ import annotations

import os

DEFAULT_HOME = "/var/qmail"
SPLIT = 23          # conf-split: prime; mess|info|local|remote/<id % SPLIT>/<id>
SPAWN_LIMIT = 120   # conf-spawn: the byte a spawner writes at start
PATTERN = 0o002     # conf-patrn: a home directory with these bits is unsafe
BREAK = b"-"        # conf-break: the extension separator

# conf-users / conf-groups, in qmail's order.
ALIAS, QMAILD, QMAILL, ROOT, QMAILP, QMAILQ, QMAILR, QMAILS = (
    "alias", "qmaild", "qmaill", "root", "qmailp", "qmailq", "qmailr", "qmails")
ACCOUNTS = (ALIAS, QMAILD, QMAILL, QMAILP, QMAILQ, QMAILR, QMAILS)
GROUP_QMAIL, GROUP_NOFILES = "qmail", "nofiles"


def home() -> str:
    """Return the instance directory: $QMAILHOME or /var/qmail."""
    return os.environ.get("QMAILHOME") or DEFAULT_HOME


def path(*parts: str) -> str:
    """Return a path inside the instance."""
    return os.path.join(home(), *parts)


def force_exec() -> bool:
    """True when QPY_EXEC is set: spawners exec programs instead of forking warm."""
    return bool(os.environ.get("QPY_EXEC"))
