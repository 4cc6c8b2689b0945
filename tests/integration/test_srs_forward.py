"""SRS end to end: a forward through a running qpy to Postfix, the bounces, the refusals.

carol@outside.test (an outside sender) writes to alice-fwdN@localhost of a running ``qpy
run``; alice's ``.qmail-fwdN`` files forward (``&address``) to a private Postfix on
loopback, which also holds carol's own mailbox (outside.test) and relays everything else
back to qpy.  The forward leaves with carol's address turned into an SRS0 address at
srs.test (control/srs_domain), and:

- to user@pf.test it is delivered with that SRS0 address as its Return-Path;
- to nobody-here@pf.test Postfix refuses the RCPT, qmail-remote gets the 550, qmail-send
  bounces to the SRS address and the queue writer turns it back into carol's address;
- to gone@pf.test Postfix accepts, then bounces itself (an ``error:`` transport), and its
  bounce comes back by SMTP to the SRS address, which qmail-smtpd accepts (srs.test is in
  no rcpthosts) and the writer again turns into carol's address.

Both bounces end up in carol's Maildir at Postfix.  Then forged, expired, replayed and
malformed SRS addresses are refused at RCPT by the same running qpy.
"""
from __future__ import annotations

import mailbox
import os
import pwd
import re
import smtplib
import time

import pytest

from conftest import need_program, need_root
from postfix import Postfix
from test_qpy_run import QpyRun

SRS_DOMAIN = "srs.test"


class PeerPostfix(Postfix):
    """pf.test (user, and gone, whose mail Postfix bounces) and outside.test (carol)."""

    def main_cf(self) -> str:
        text = super().main_cf()
        text = text.replace(f"virtual_mailbox_domains = {self.domain}\n",
                            f"virtual_mailbox_domains = {self.domain} outside.test\n")
        return text + f"transport_maps = texthash:{self.config / 'transport'}\n"

    def write_config(self) -> None:
        super().write_config()
        (self.config / "vmailbox").write_text(
            f"user@{self.domain} user/\ngone@{self.domain} gone/\ncarol@outside.test carol/\n")
        (self.config / "transport").write_text(f"gone@{self.domain} error:5.1.1 mailbox gone\n")

    def box(self, name: str, count: int, timeout: float = 90) -> list[bytes]:
        """The raw messages of ``name``'s Maildir once it holds ``count``."""
        deadline = time.monotonic() + timeout
        while True:
            path = self.mail / name
            if (path / "new").is_dir():
                box = mailbox.Maildir(str(path), factory=None, create=False)
                got = [box.get_bytes(k) for k in sorted(box.keys())]
                if len(got) >= count:
                    return got
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} message(s) not in {name}'s Maildir\n{self.log_text()}")
            time.sleep(0.2)


@pytest.fixture
def qpy_and_postfix(tmp_path, monkeypatch):
    """A running qpy (as the test account, under root) and the Postfix next to it."""
    need_root()
    need_program("postfix")
    home = tmp_path / "qpy-home"
    run = QpyRun(home)
    pf = None
    try:
        pf = PeerPostfix(relayhost=("127.0.0.1", run.port)).start()
        owner = home.stat().st_uid
        control = home / "control"
        (control / "srs_domain").write_text(SRS_DOMAIN + "\n")
        (control / "smtproutes").write_text(f"pf.test:127.0.0.1:{pf.port}\n"
                                            f"outside.test:127.0.0.1:{pf.port}\n")
        alice = home / "users" / "alice"
        for ext, target in (("fwd1", "user"), ("fwd2", "nobody-here"), ("fwd3", "gone")):
            dot = alice / f".qmail-{ext}"
            dot.write_text(f"&{target}@pf.test\n")
            os.chown(dot, owner, -1)
        monkeypatch.setenv("QMAILHOME", str(home))      # qpy.srs here reads the instance's secret
        yield home, run, pf
    finally:
        code = run.stop()
        if pf is not None:
            pf.cleanup()
    assert code == 0, run.output.decode(errors="replace")


def send(port: int, rcpt: str, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.sendmail("carol@outside.test", [rcpt],
                   f"From: carol@outside.test\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\n"
                   f"hello from outside\r\n".encode())


def test_forwarded_sender_is_srs_and_both_kinds_of_bounce_reach_the_original_sender(qpy_and_postfix):
    from qpy import srs
    home, run, pf = qpy_and_postfix
    send(run.port, "alice-fwd1@localhost", "delivered")
    [delivered] = pf.box("user", 1)
    m = re.match(rb"Return-Path: <(SRS0=[^>]+)>\n", delivered)
    assert m, delivered[:300]
    address = m.group(1)
    assert re.fullmatch(rb"SRS0=[A-Za-z0-9+/]{4}=[A-Z2-7]{2}=outside\.test=carol@srs\.test", address)
    assert srs.reverse_recipient(address) == b"carol@outside.test"
    assert b"\nSubject: delivered\n" in delivered

    send(run.port, "alice-fwd2@localhost", "refused at rcpt")
    send(run.port, "alice-fwd3@localhost", "bounced by postfix")
    bounces = pf.box("carol", 2)
    assert len(bounces) == 2
    for bounce in bounces:
        assert bounce.startswith(b"Return-Path: <>\n"), bounce[:200]
        assert b"Delivered-To: carol@outside.test\n" in bounce
    ours = next(b for b in bounces if b"Subject: refused at rcpt" in b)
    theirs = next(b for b in bounces if b"Subject: bounced by postfix" in b)
    assert b"nobody-here@pf.test" in ours and b"does not like recipient" in ours
    assert b"gone@pf.test" in theirs and b"mailbox gone" in theirs
    assert b"(Postfix)" in theirs.split(b"\n\n", 1)[0]      # Postfix wrote it and relayed it to qpy
    log = (home / "log" / "current").read_bytes()
    assert re.search(rb"to remote carol@outside\.test", log), log[-2000:]
    assert not re.search(rb"to (local|remote) [^\n]*SRS0", log)     # never delivered as is


def test_forged_expired_replayed_and_malformed_srs_addresses_are_refused(qpy_and_postfix):
    from qpy import srs
    home, run, pf = qpy_and_postfix
    valid = srs.forward_sender(b"carol@outside.test")
    old = srs.forward_sender(b"carol@outside.test", time.time() - 30 * 86400)
    today = srs.stamp(time.time())
    h, stamp, rest = old[5:].split(b"=", 2)
    cases = {
        valid: (250, b"2.1.5 ok"),
        valid.lower(): (250, b"2.1.5 ok"),
        valid.replace(b"=carol@", b"=mallory@"): (550, b"5.7.1 forged SRS address (#5.7.1)"),
        old: (550, b"5.7.1 expired SRS address (#5.7.1)"),                    # replayed late
        b"SRS0=%s=%s=%s" % (h, today, rest): (550, b"5.7.1 forged SRS address (#5.7.1)"),
        b"SRS0=abcd@srs.test": (550, b"5.1.1 malformed SRS address (#5.1.1)"),
    }
    with smtplib.SMTP("127.0.0.1", run.port, timeout=30) as s:
        s.ehlo("client.test")
        assert s.mail("someone@example.test")[0] == 250
        got = {address: s.rcpt(address.decode()) for address in cases}
        s.rset()
    assert got == cases


def test_the_secret_belongs_to_the_instances_owner_alone(qpy_and_postfix):
    home, run, pf = qpy_and_postfix
    st = (home / "control" / "srs_secrets").stat()
    assert st.st_mode & 0o777 == 0o400
    assert pwd.getpwuid(st.st_uid).pw_name == pwd.getpwuid(home.stat().st_uid).pw_name
