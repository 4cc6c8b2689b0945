"""The only module that changes uid, gid or groups (a test checks it); account lookups by name.

In single-user mode every qmail account maps to the invoking user, and
``drop_to`` changes nothing.  In privileged mode (the instance's queue is owned
by the qmailq account and we run as root) programs become their accounts.

The kernel forgets a parent-death signal (prctl PR_SET_PDEATHSIG, which ``qpy run``
gives its children so they never outlive it) whenever ids change; a session leader
(a daemon started that way) sets it again after each change made here.
"""
from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass
from typing import Any

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


def account_of(uid: int) -> Account:
    """The passwd entry of ``uid``; its number as the name if it has none."""
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return Account(str(uid), uid, uid, "/")
    return Account(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)


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
    keep = _death_signal()
    os.setgroups(groups if groups is not None else [gid])
    os.setgid(gid)
    os.setuid(uid)
    _set_again(keep)
    if os.getuid() != uid or os.geteuid() != uid:
        raise TempFail("Unable to switch user. (#4.3.0)")


def set_gid(gid: int) -> None:
    """ucspi-tcp's prot_gid: supplementary groups = [gid], then gid.  Raises OSError."""
    keep = _death_signal()
    os.setgroups([gid])
    os.setgid(gid)
    _set_again(keep)


def set_uid(uid: int) -> None:
    """ucspi-tcp's prot_uid: setuid.  Raises OSError."""
    keep = _death_signal()
    os.setuid(uid)
    _set_again(keep)


PR_SET_PDEATHSIG = 1
PR_GET_PDEATHSIG = 2
_libc: Any = None


def _prctl(option: int, arg: Any) -> int:
    """prctl(option, arg, 0, 0, 0) through libc (ctypes, loaded once); -1 on failure."""
    global _libc
    import ctypes
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if isinstance(arg, int):
        arg = ctypes.c_ulong(arg)
    zero = ctypes.c_ulong(0)
    return int(_libc.prctl(ctypes.c_int(option), arg, zero, zero, zero))


def set_death_signal(sig: int) -> bool:
    """Have the kernel send us ``sig`` when our parent dies; False if it cannot (not Linux)."""
    try:
        return _prctl(PR_SET_PDEATHSIG, sig) == 0
    except (OSError, AttributeError):
        return False


def parent_death_signal() -> int:
    """The signal the kernel sends us when our parent dies; 0 for none (or not Linux)."""
    import ctypes
    value = ctypes.c_int(0)
    try:
        if _prctl(PR_GET_PDEATHSIG, ctypes.byref(value)) != 0:
            return 0
    except (OSError, AttributeError):
        return 0
    return value.value


def _death_signal() -> tuple[int, int]:
    """(parent-death signal, parent pid) of a session leader; (0, 0) for anyone else."""
    if os.getsid(0) != os.getpid():
        return 0, 0
    return parent_death_signal(), os.getppid()


def _set_again(keep: tuple[int, int]) -> None:
    """Restore the parent-death signal an id change cleared; act on it if the parent is gone."""
    sig, parent = keep
    if sig and set_death_signal(sig) and os.getppid() != parent:
        os.kill(os.getpid(), sig)


def set_umask(mask: int) -> int:
    """Set the umask; return the old one."""
    return os.umask(mask)
