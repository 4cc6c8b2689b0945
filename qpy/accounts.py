"""Creating qmail's accounts and groups (INSTALL.ids) with the system's useradd/groupadd.

Groups ``qmail`` and ``nofiles``; users alias, qmaild, qmaill, qmailp (group
nofiles) and qmailq, qmailr, qmails (group qmail), all system accounts without a
login shell.  Existing accounts are left as they are.
"""
from __future__ import annotations

import os
import subprocess

from qpy import auto, prot
from qpy.errors import TempFail

GROUPS = (auto.GROUP_QMAIL, auto.GROUP_NOFILES)
USERS: dict[str, str] = {
    auto.ALIAS: auto.GROUP_NOFILES, auto.QMAILD: auto.GROUP_NOFILES,
    auto.QMAILL: auto.GROUP_NOFILES, auto.QMAILP: auto.GROUP_NOFILES,
    auto.QMAILQ: auto.GROUP_QMAIL, auto.QMAILR: auto.GROUP_QMAIL, auto.QMAILS: auto.GROUP_QMAIL,
}
NOLOGIN = next((p for p in ("/usr/sbin/nologin", "/sbin/nologin") if os.path.exists(p)), "/bin/false")


def _run(argv: list[str]) -> None:
    r = subprocess.run(argv, capture_output=True)
    if r.returncode != 0:
        raise TempFail(f"{' '.join(argv)}: {r.stderr.decode(errors='replace').strip()}")


def ensure(home: str = auto.DEFAULT_HOME) -> list[str]:
    """Create whatever groups and accounts are missing; return the names created."""
    made = []
    for group in GROUPS:
        if prot.lookup_group(group) is None:
            _run(["groupadd", "--system", group])
            made.append(group)
    for user, group in USERS.items():
        if prot.lookup_user(user) is None:
            user_home = os.path.join(home, "alias") if user == auto.ALIAS else home
            _run(["useradd", "--system", "--no-create-home", "--gid", group, "--home-dir",
                  user_home, "--shell", NOLOGIN, user])
            made.append(user)
    return made
