"""The only module that changes uid, gid or groups (a test checks it); account lookups by name.

In single-user mode every qmail account maps to the invoking user, and
``drop_to`` changes nothing.  In privileged mode (the instance's queue is owned
by the qmailq account and we run as root) programs become their accounts.
"""
from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

from qpy import auto
from qpy.errors import TempFail


@dataclass(frozen=True)
class Account:
    """A uid/gid pair with a name and a home."""

    name: str
    uid: int
    gid: int
    home: str


def lookup_user(name: str) -> Account | None:
    """Return the passwd entry for ``name``, or None."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    return Account(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)


def lookup_group(name: str) -> int | None:
    """Return the gid of group ``name``, or None."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def accounts_exist() -> bool:
    """True if every qmail account and both groups exist on this system."""
    return (all(lookup_user(n) is not None for n in auto.ACCOUNTS)
            and lookup_group(auto.GROUP_QMAIL) is not None
            and lookup_group(auto.GROUP_NOFILES) is not None)


def privileged(home: str | None = None) -> bool:
    """True if we run as root on an instance whose queue belongs to the qmailq account."""
    if os.geteuid() != 0:
        return False
    qmailq = lookup_user(auto.QMAILQ)
    if qmailq is None or qmailq.uid == 0:
        return False
    try:
        st = os.stat(os.path.join(home or auto.home(), "queue"))
    except OSError:
        return False
    return st.st_uid == qmailq.uid


def account(name: str, priv: bool) -> Account:
    """The account a program runs as: the named one when privileged, else the invoking user."""
    if priv:
        acct = lookup_user(name)
        if acct is None:
            raise TempFail(f"Unable to find account {name}. (#4.3.0)")
        return acct
    return Account(pwd.getpwuid(os.getuid()).pw_name if _has_pw() else str(os.getuid()),
                   os.getuid(), os.getgid(), os.path.expanduser("~"))


def _has_pw() -> bool:
    try:
        pwd.getpwuid(os.getuid())
        return True
    except KeyError:
        return False


def drop_to(uid: int, gid: int, groups: list[int] | None = None) -> None:
    """Become uid/gid with exactly ``groups`` as supplementary groups (none by default).

    A no-op when we already are that uid and are not root (single-user mode).
    """
    if os.geteuid() != 0:
        if uid != os.geteuid():
            raise TempFail("Unable to switch user: not root. (#4.3.0)")
        return
    os.setgroups(groups if groups is not None else [gid])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise TempFail("Unable to switch user. (#4.3.0)")


def set_gid(gid: int) -> None:
    """ucspi-tcp's prot_gid: supplementary groups = [gid], then gid.  Raises OSError."""
    os.setgroups([gid])
    os.setgid(gid)


def set_uid(uid: int) -> None:
    """ucspi-tcp's prot_uid: setuid.  Raises OSError."""
    os.setuid(uid)


def set_umask(mask: int) -> int:
    """Set the umask; return the old one."""
    return os.umask(mask)
