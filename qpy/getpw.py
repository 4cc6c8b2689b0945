"""qmail-getpw's passwd search (docs/control.md §3) and the alias account.

``lookup(local)`` answers "who gets mail for this local part": a passwd user
whose name is a prefix of ``local`` ending at the end or before a ``-``
(longest first, shorter than 32 bytes, lowercased), whose uid is not 0 and
whose home exists and belongs to that uid; otherwise the alias account with
dash ``-`` and ext = the whole local part.

Modes.  In privileged mode (the queue belongs to another account than ours) the
alias account is the ``alias`` passwd entry.  In single-user mode (the queue is
ours) it is the invoking user, and the passwd search only accepts the invoking
user: deliveries run as the invoking user, who could not write to anyone else's
home.  In both modes the alias home is the instance's ``QMAILHOME/alias``
directory, so several instances can share one machine.
"""
from __future__ import annotations

import os
import pwd
from dataclasses import dataclass

from qpy import auto
from qpy.errors import TempFail, temporary_errno
from qpy.exitcodes import QLX

USERLEN = 32   # GETPW_USERLEN: a passwd name is shorter than this


class NoAlias(TempFail):
    """Unable to find alias user!"""

    exit_code = QLX.NOALIAS


class NFSFail(TempFail):
    """NFS failure in qmail-local."""

    exit_code = QLX.NFS


@dataclass(frozen=True)
class Entry:
    """Who gets mail for a local part: qmail-getpw's six output fields, also a users/cdb value's."""

    user: bytes
    uid: int
    gid: int
    home: bytes
    dash: bytes
    ext: bytes

    def encode(self) -> bytes:
        """``user\\0uid\\0gid\\0home\\0dash\\0ext\\0`` (qmail-getpw's output)."""
        return b"".join(f + b"\0" for f in (self.user, b"%d" % self.uid, b"%d" % self.gid,
                                            self.home, self.dash, self.ext))


def decode(data: bytes) -> Entry | None:
    """Parse qmail-getpw's output; None if it is not six NUL-terminated fields."""
    parts = data.split(b"\0")
    if len(parts) != 7 or parts[6] or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    return Entry(parts[0], int(parts[1]), int(parts[2]), parts[3], parts[4], parts[5])


def single_user(home: str | None = None) -> bool:
    """True if the instance's queue belongs to us (single-user mode)."""
    try:
        return os.stat(os.path.join(home or auto.home(), "queue")).st_uid == os.getuid()
    except OSError:
        return True


def find_user(local: bytes, only_uid: int | None = None) -> Entry | None:
    """The passwd search: the user owning ``local``, or None.  NFSFail on a temporary stat error."""
    for end in range(len(local), -1, -1):
        if end >= USERLEN or (end < len(local) and local[end:end + 1] != auto.BREAK):
            continue
        name = local[:end].lower()
        if not name or b"\0" in name:
            continue
        try:
            pw = pwd.getpwnam(os.fsdecode(name))
        except (KeyError, ValueError, UnicodeError):
            continue
        if pw.pw_uid == 0 or (only_uid is not None and pw.pw_uid != only_uid):
            continue
        try:
            st = os.stat(pw.pw_dir)
        except OSError as e:
            if temporary_errno(e.errno):
                raise NFSFail() from e
            continue
        if st.st_uid != pw.pw_uid:
            continue
        ext = local[end + 1:] if end < len(local) else b""
        return Entry(os.fsencode(pw.pw_name), pw.pw_uid, pw.pw_gid, os.fsencode(pw.pw_dir),
                     b"-" if end < len(local) else b"", ext)
    return None


def alias_account(priv: bool) -> Entry:
    """The alias account with an empty dash/ext: its name, uid, gid and QMAILHOME/alias."""
    home = os.fsencode(auto.path("alias"))
    if priv:
        try:
            pw = pwd.getpwnam(auto.ALIAS)
        except KeyError:
            raise NoAlias() from None
        return Entry(os.fsencode(pw.pw_name), pw.pw_uid, pw.pw_gid, home, b"", b"")
    uid = os.getuid()
    try:
        name = os.fsencode(pwd.getpwuid(uid).pw_name)
    except KeyError:
        name = b"%d" % uid
    return Entry(name, uid, os.getgid(), home, b"", b"")


def lookup(local: bytes, priv: bool | None = None) -> Entry:
    """qmail-getpw: the passwd user for ``local`` or the alias account (NoAlias if none)."""
    if priv is None:
        priv = not single_user()
    found = find_user(local, None if priv else os.getuid())
    if found is not None:
        return found
    alias = alias_account(priv)
    return Entry(alias.user, alias.uid, alias.gid, alias.home, b"-", local)
