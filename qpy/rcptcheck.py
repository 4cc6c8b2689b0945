"""Recipient validation at RCPT time: would a local address find a mailbox?

qmail-smtpd uses this when ``control/rcptcheck`` holds 1 (``enabled()``), so mail
for local addresses that qmail-local would bounce with "Sorry, no mailbox here by
that name." is refused during the SMTP dialogue instead of producing backscatter.

``RecipientCheck.from_control().check(address) -> bool``:

- True for a remote address (qmail-send's rewriting, qpy.rewrite: locals,
  percenthack, virtualdomains) — not ours to judge;
- True for ``postmaster`` at any local domain (RFC 5321 §4.5.1: always accepted,
  whatever the files say), and for an empty local part (qmail-lspawn succeeds);
- otherwise the account qmail-lspawn would pick (users/cdb via qpy.users, else
  qmail-getpw's search via qpy.getpw, else the alias account with home
  QMAILHOME/alias) decides: an exact user (empty dash) always has a mailbox (no
  dot-qmail file means defaultdelivery); with a dash, the address is accepted
  iff one of qmail-local's candidate files (``.qmail<dash><ext>`` then the
  ``-default`` chain, qpy.dotqmail.candidates) exists as a regular file.
- Whenever the answer cannot be known (users/cdb or a control file unreadable,
  no alias account, a home or dot-qmail file we may not stat), it is True:
  the check only refuses what is certain to bounce.

Needs no privileges: it reads users/cdb, the passwd database and stat()s files.
"""
from __future__ import annotations

import errno
import os
import stat

from qpy import addr, auto, control, dotqmail, getpw, rewrite, users
from qpy.errors import QmailError

_ABSENT = (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP)


def enabled() -> bool:
    """True if control/rcptcheck says 1."""
    return control.read_int("rcptcheck") == 1


class RecipientCheck:
    """Answers "would this RCPT be delivered or is it remote?" for one SMTP session."""

    def __init__(self, rewriter: rewrite.Rewriter | None, priv: bool,
                 users_cdb: str | None = None) -> None:
        self.rewriter = rewriter
        self.priv = priv
        self.users_cdb = users_cdb or auto.path("users", "cdb")

    @classmethod
    def from_control(cls) -> "RecipientCheck":
        """Read locals/virtualdomains/percenthack now; unreadable controls → accept everything."""
        try:
            rewriter: rewrite.Rewriter | None = rewrite.Rewriter.from_control()
        except QmailError:
            rewriter = None
        return cls(rewriter, not getpw.single_user())

    enabled = staticmethod(enabled)

    def check(self, address: bytes) -> bool:
        """True unless ``address`` is local and certainly has no mailbox."""
        if self.rewriter is None:
            return True
        try:
            channel, rewritten = self.rewriter.rewrite(address)
        except QmailError:
            return True
        if channel != rewrite.LOCAL:
            return True
        if addr.split(address)[0].lower() == b"postmaster":
            return True
        local = addr.split(rewritten)[0]
        if not local:
            return True
        try:
            who = self.account(local)
        except QmailError:
            return True
        return self.has_mailbox(who)

    def account(self, local: bytes) -> getpw.Entry:
        """The account qmail-lspawn would deliver ``local`` as."""
        found = users.lookup(local, self.users_cdb)
        return found if found is not None else getpw.lookup(local, self.priv)

    @staticmethod
    def has_mailbox(who: getpw.Entry) -> bool:
        """Would qmail-local find something to do for this account/dash/ext?"""
        if not who.dash:
            return True
        try:
            st = os.stat(who.home)
        except OSError:
            return True
        if not stat.S_ISDIR(st.st_mode):
            return True
        for name, _ in dotqmail.candidates(who.dash, who.ext):
            try:
                st = os.stat(os.path.join(who.home, name))
            except OSError as e:
                if e.errno in _ABSENT:
                    continue
                return True
            if stat.S_ISREG(st.st_mode):
                return True
        return False
