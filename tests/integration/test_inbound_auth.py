"""Mail from outside through the real qmail-smtpd: DKIM, DMARC and ARC verdicts in one
Authentication-Results field, dmarcenforce's 550 and quarantine field, forged verdicts removed
(issue 17 items 2 and 3).

Messages are signed by signers that are not ours (tests/authkit.py): Mail::DKIM::Signer for
RSA, Mail::DKIM::ARC::Signer for ARC sets; Ed25519 by dkimpy (no Debian tool signs it), with
OpenDKIM's opendkim-testmsg confirming those signatures (as a signer it makes rsa-sha1 only,
which RFC 8301 rules out: tested as such).  Keys and policies are served by the
loopback DNS server ($QPY_NAMESERVERS); sessions run bin/qmail-smtpd on pipes with a tcpserver
environment from outside (192.0.2.7, no RELAYCLIENT).  The forged-verdict test runs a whole
``qpy run`` and reads the Maildir with ``mailbox``.
"""
from __future__ import annotations

import mailbox
import os
import re
import smtplib
import subprocess
import time
from pathlib import Path

import pytest

from authkit import Keys, arc_seal, dkim_sign, ed25519_key, ed25519_sign, need_perl_dkim, txt
from conftest import control, run
from dnsserver import DNSServer
from smtpdkit import CLEARED, leftovers, queued

ENV = {"TCPREMOTEIP": "192.0.2.7", "TCPREMOTEHOST": "client.example", "TCPLOCALIP": "192.0.2.1",
       "TCPLOCALHOST": "mx.test.example"}
DOMAINS = ("example.org", "reject.example", "quarantine.example", "sub.example", "relay.example",
           "slow.example", "test.example")
SPF = '"v=spf1 ip4:192.0.2.7 -all"'


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in CLEARED + ("SPFBEHAVIOR",):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    need_perl_dkim()
    return Keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def ed():
    return ed25519_key()


def make_zone(keys: Keys, ed: tuple[bytes, str]) -> dict:
    zone: dict[str, list[tuple[str, str]]] = {
        f"s1._domainkey.{d}": [("TXT", txt(keys.record("a")))] for d in DOMAINS}
    zone.update({
        "e1._domainkey.example.org": [("TXT", txt(ed[1]))],
        "_dmarc.example.org": [("TXT", txt("v=DMARC1; p=reject"))],
        "_dmarc.reject.example": [("TXT", txt("v=DMARC1; p=reject"))],
        "_dmarc.quarantine.example": [("TXT", txt("v=DMARC1; p=quarantine"))],
        "_dmarc.sub.example": [("TXT", txt("v=DMARC1; p=none; sp=reject"))],
        "pass.example": [("TXT", SPF)], "reject.example": [("TXT", '"v=spf1 -all"')],
        "quarantine.example": [("TXT", '"v=spf1 -all"')],
        "news.sub.example": [("TXT", '"v=spf1 -all"')], "example.org": [("TXT", SPF)]})
    return zone


@pytest.fixture(scope="module")
def dns(keys, ed):
    with DNSServer(make_zone(keys, ed), drop={"s1._domainkey.slow.example",
                                              "_dmarc.slow.example", "slow.example"}) as server:
        yield server


@pytest.fixture
def inst(home, dns):
    control(home, "timeoutdns", "1\n")
    control(home, "dnsbudget", "4\n")
    return home


def message(frm: str = "alice@example.org", subject: str = "hello") -> bytes:
    return (f"From: Alice <{frm}>\r\nTo: bob@test.example\r\nSubject: {subject}\r\n"
            f"Date: Fri, 4 Dec 2026 12:00:00 +0000\r\n\r\n.leading dot\r\nbody\r\n").encode()


def smtp(home: Path, dns: DNSServer, data: bytes, sender: str = "bounce@pass.example",
         env: dict | None = None) -> list[bytes]:
    """One EHLO session sending ``data`` (CRLF, unstuffed) from outside; the reply lines
    after EHLO's."""
    full = dict(os.environ, QMAILHOME=str(home), QPY_NAMESERVERS=dns.spec, **ENV)
    full.update(env or {})
    stuffed = re.sub(rb"(?m)^\.", b"..", data)
    dialogue = (b"EHLO client.pass.example\r\nMAIL FROM:<" + sender.encode() + b">\r\n"
                b"RCPT TO:<postmaster@test.example>\r\nDATA\r\n" + stuffed + b".\r\nQUIT\r\n")
    r = subprocess.run([str(home / "bin" / "qmail-smtpd")], input=dialogue, capture_output=True,
                       env=full, timeout=60)
    assert r.stderr == b"", r.stderr
    return [line for line in r.stdout.split(b"\r\n")[1:-1] if not line.startswith(b"250-")]


def accepted(home: Path, replies: list[bytes]) -> bytes:
    """The queued message the session's 250 after DATA acknowledged."""
    assert replies[3] == b"354 go ahead", replies
    m = re.fullmatch(rb"250 2\.0\.0 ok \d+ qp (\d+)", replies[4])
    assert m, replies
    return queued(home)[m[1]][0]


def auth_results(mess: bytes) -> list[bytes]:
    """Our Authentication-Results field (the one below qmail-queue's Received line), by line."""
    lines = mess.split(b"\n")
    assert lines[1] == b"Authentication-Results: test.example;", mess[:400]
    out = [lines[1]]
    for line in lines[2:]:
        if not line.startswith(b"\t"):
            break
        out.append(line)
    return out


def test_signed_mail_from_outside_gets_one_field_on_top(inst, dns, keys):
    control(inst, "spfbehavior", "1\n")
    signed = dkim_sign(message(), keys.pem("a"), "example.org", "s1")
    mess = accepted(inst, smtp(inst, dns, signed))
    b = re.sub(rb"\s", b"", re.search(rb"; b=([^;]+)", signed.split(b"\r\n\r\n")[0])[1])
    ar = auth_results(mess)
    assert ar == [b"Authentication-Results: test.example;",
                  b"\tspf=pass smtp.mailfrom=pass.example;",
                  b"\tdkim=pass header.d=example.org header.s=s1 header.a=rsa-sha256 header.b="
                  + (b[:8] if re.fullmatch(rb"[A-Za-z0-9+]{8}", b[:8]) else b'"' + b[:8] + b'"')
                  + b";",
                  b"\tdmarc=pass (p=reject dis=none) header.from=example.org;", b"\tarc=none"]
    rest = mess.split(b"\n", len(ar) + 1)[-1]
    assert rest.startswith(b"Received-SPF: pass (test.example: domain of bounce@pass.example")
    received = rest.index(b"\nReceived: from client.example (HELO client.pass.example)")
    after = rest[received + 1:].split(b"\n", 2)[2]       # the message as the client sent it
    assert after == signed.replace(b"\r\n", b"\n")


def test_relay_clients_are_streamed_as_before(inst, dns, keys):
    forged = b"Authentication-Results: test.example; dkim=pass\r\n" + message()
    mess = accepted(inst, smtp(inst, dns, forged, env={"RELAYCLIENT": ""}))
    assert mess.split(b"\n")[1].startswith(b"Received: from client.example")
    assert mess.count(b"Authentication-Results") == 1     # ours to sign, not to judge


@pytest.mark.parametrize("case, clause", [
    ("intact", b"dkim=pass"),
    ("body", b"dkim=fail (body hash did not verify)"),
    ("signed header", b"dkim=fail (signature did not verify)"),
    ("expired", b"dkim=permerror (signature expired)"),
    ("revoked", b"dkim=permerror (key revoked)"),
])
def test_tampered_signatures_are_annotated_never_refused(inst, dns, keys, case, clause):
    now = int(time.time())
    stamps = (now - 20 * 86400, now - 10 * 86400) if case == "expired" else (None, None)
    selector = "old" if case == "revoked" else "s1"
    signed = dkim_sign(message(), keys.pem("a"), "example.org", selector, *stamps)
    if case == "body":
        signed = signed.replace(b"\r\nbody\r\n", b"\r\nbodY\r\n")
    elif case == "signed header":
        signed = signed.replace(b"Subject: hello", b"Subject: Hello")
    zone = make_zone(keys, ed25519_key())
    zone["old._domainkey.example.org"] = [("TXT", txt("v=DKIM1; k=rsa; p="))]
    with DNSServer(zone) as own:
        ar = auth_results(accepted(inst, smtp(inst, own, signed)))
    assert ar[1].startswith(b"\t" + clause + b" header.d=example.org header.s=" + selector.encode())
    want = b"\tdmarc=pass" if case == "intact" else b"\tdmarc=fail (p=reject dis=none)"
    assert ar[2].startswith(want)


def test_ed25519_signed_by_dkimpy_passes_opendkim_and_us(inst, dns, ed, tmp_path):
    signed = ed25519_sign(message(), ed[0], "example.org", "e1")
    ar = auth_results(accepted(inst, smtp(inst, dns, signed)))
    assert ar[1].startswith(b"\tdkim=pass header.d=example.org header.s=e1 header.a=ed25519-sha256")
    bad = signed.replace(b"To: bob@", b"To: eve@")
    ar = auth_results(accepted(inst, smtp(inst, dns, bad)))
    assert ar[1].startswith(b"\tdkim=fail (signature did not verify) header.d=example.org")
    from test_dkim import opendkim_verify
    zone = make_zone(Keys(tmp_path), ed)
    assert opendkim_verify(signed, zone, tmp_path).returncode == 0
    assert opendkim_verify(bad, zone, tmp_path).returncode != 0


def test_opendkim_testmsg_signs_rsa_sha1_which_is_not_acceptable(inst, dns, keys):
    """OpenDKIM's signer (Debian 12: opendkim-testmsg 2.11.0~beta2) signs rsa-sha1 whatever
    the key, and prints the last piece of b= twice; RFC 8301 makes rsa-sha1 unacceptable."""
    from conftest import need_program
    lf = message().replace(b"\r\n", b"\n")
    r = subprocess.run([need_program("opendkim-testmsg"), "-d", "example.org", "-s", "s1",
                        "-k", str(keys.pem("a"))], input=lf, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    algorithm = re.search(rb"a=([\w-]+);", r.stdout)[1]
    ar = auth_results(accepted(inst, smtp(inst, dns, r.stdout.replace(b"\n", b"\r\n"))))
    if algorithm == b"rsa-sha1":
        assert ar[1].startswith(b"\tdkim=policy (rsa-sha1 is not acceptable, RFC 8301)"
                                b" header.d=example.org header.s=s1 header.a=rsa-sha1")
        assert ar[2].startswith(b"\tdmarc=fail (p=reject dis=none)")
    else:                       # a fixed OpenDKIM
        assert ar[1].startswith(b"\tdkim=pass header.d=example.org")


@pytest.mark.parametrize("enforce", [0, 1])
def test_dmarc_reject_550_only_under_dmarcenforce_1(inst, dns, keys, enforce):
    control(inst, "spfbehavior", "1\n")
    control(inst, "dmarcenforce", f"{enforce}\n")
    forged = dkim_sign(message("ceo@reject.example"), keys.pem("a"), "relay.example", "s1")
    replies = smtp(inst, dns, forged, sender="ceo@reject.example")
    if enforce:
        assert replies[3:5] == [b"354 go ahead", b"550 5.7.1 sorry, the DMARC policy of"
                                b" reject.example rejects this message (#5.7.1)"]
        assert queued(inst) == {} and leftovers(inst) == []
    else:
        ar = auth_results(accepted(inst, replies))
        assert ar[1] == b"\tspf=fail smtp.mailfrom=reject.example;"
        assert ar[3] == b"\tdmarc=fail (p=reject dis=none) header.from=reject.example;"


def test_the_session_goes_on_after_a_dmarc_refusal(inst, dns, keys):
    control(inst, "spfbehavior", "1\n")
    control(inst, "dmarcenforce", "1\n")
    full = dict(os.environ, QMAILHOME=str(inst), QPY_NAMESERVERS=dns.spec, **ENV)
    txn = b"MAIL FROM:<ceo@reject.example>\r\nRCPT TO:<postmaster@test.example>\r\nDATA\r\n%s.\r\n"
    signed = dkim_sign(message("alice@example.org"), keys.pem("a"), "example.org", "s1")
    dialogue = (b"EHLO c.example\r\n" + txn % message("ceo@reject.example").replace(b"\n.", b"\n..")
                + txn % signed.replace(b"\n.", b"\n..") + b"QUIT\r\n")
    r = subprocess.run([str(inst / "bin" / "qmail-smtpd")], input=dialogue, capture_output=True,
                       env=full, timeout=60)
    replies = [x for x in r.stdout.split(b"\r\n")[1:] if not x.startswith(b"250-")]
    assert replies[4].startswith(b"550 5.7.1 sorry, the DMARC policy of reject.example")
    assert replies[8].startswith(b"250 2.0.0 ok ") and len(queued(inst)) == 1


def test_quarantine_and_subdomain_policies(inst, dns, keys):
    control(inst, "spfbehavior", "1\n")
    control(inst, "dmarcenforce", "1\n")
    mess = accepted(inst, smtp(inst, dns, message("a@quarantine.example"),
                               sender="a@quarantine.example"))
    assert mess.split(b"\n")[1] == b"X-Qpy-Quarantine: dmarc quarantine.example"
    assert mess.split(b"\n")[2] == b"Authentication-Results: test.example;"
    replies = smtp(inst, dns, message("a@news.sub.example"), sender="a@news.sub.example")
    assert replies[4] == (b"550 5.7.1 sorry, the DMARC policy of news.sub.example rejects this"
                          b" message (#5.7.1)")
    signed = dkim_sign(message("a@news.sub.example"), keys.pem("a"), "sub.example", "s1")
    ar = auth_results(accepted(inst, smtp(inst, dns, signed, sender="a@news.sub.example")))
    assert ar[3] == b"\tdmarc=pass (p=none sp=reject dis=none) header.from=news.sub.example;"


JUNK = """|condredirect alice-junk@test.example sh -c 'sed "/^$/q" | grep -q "^X-Qpy-Quarantine:"'
./Maildir/
"""


def test_a_dot_qmail_moves_quarantined_mail_aside(inst, dns, keys, tmp_path):
    """docs/smtpd.md's .qmail lines, through qmail-local: the quarantined message is forwarded
    to alice-junk, the one that passed DMARC lands in the Maildir."""
    control(inst, "spfbehavior", "1\n")
    control(inst, "dmarcenforce", "1\n")
    bad = accepted(inst, smtp(inst, dns, message("a@quarantine.example", "junk"),
                              sender="a@quarantine.example"))
    signed = dkim_sign(message("alice@example.org", "fine"), keys.pem("a"), "example.org", "s1")
    good = accepted(inst, smtp(inst, dns, signed))
    user = tmp_path / "alice"
    for sub in ("tmp", "new", "cur"):
        (user / "Maildir" / sub).mkdir(parents=True)
    (user / ".qmail").write_text(JUNK)
    env = dict(os.environ, QMAILHOME=str(inst), PATH=f"{inst / 'bin'}:{os.environ['PATH']}")
    for mess in (bad, good):
        (tmp_path / "mess").write_bytes(mess)
        with open(tmp_path / "mess", "rb") as f:
            r = subprocess.run([str(inst / "bin" / "qmail-local"), "--", "alice", str(user),
                                "alice", "", "", "test.example", "a@quarantine.example",
                                "./Maildir/"], stdin=f, capture_output=True, env=env, timeout=60)
        assert r.returncode == 0, r.stderr
    forwards = [(m, e) for m, e in queued(inst).values() if m not in (bad, good)]
    assert len(forwards) == 1 and forwards[0][1].endswith(b"\0Talice-junk@test.example\0")
    assert b"\nX-Qpy-Quarantine: dmarc quarantine.example\n" in forwards[0][0]
    (delivered,) = mailbox.Maildir(str(user / "Maildir"), factory=None, create=False)
    assert delivered["Subject"] == "fine" and "X-Qpy-Quarantine" not in delivered


def test_arc_chains_intact_and_broken(inst, dns, keys):
    relayed = (b"Authentication-Results: relay.example; dkim=none; spf=pass"
               b" smtp.mailfrom=example.org\r\n" + message())
    sealed = arc_seal(relayed, keys.pem("a"), "relay.example", "s1", "relay.example", "none")
    assert auth_results(accepted(inst, smtp(inst, dns, sealed)))[-1] == b"\tarc=pass"
    broken = sealed.replace(b"\r\nbody\r\n", b"\r\nbody, changed by a list\r\n")
    ar = auth_results(accepted(inst, smtp(inst, dns, broken)))
    assert ar[-1].startswith(b"\tarc=fail (")


def test_silent_dns_is_temperror_and_250_never_5xx(inst, dns, keys):
    control(inst, "dmarcenforce", "1\n")
    signed = dkim_sign(message("a@slow.example"), keys.pem("a"), "slow.example", "s1")
    start = time.monotonic()
    replies = smtp(inst, dns, signed, sender="a@slow.example")
    assert time.monotonic() - start < 15
    ar = auth_results(accepted(inst, replies))
    assert ar[1].startswith(b"\tdkim=temperror (key lookup failed) header.d=slow.example")
    assert ar[2] == b"\tdmarc=temperror (DNS trouble) header.from=slow.example;"


def test_a_forward_of_checked_mail_is_sealed_and_verifies(inst, dns, keys):
    """The writer seals a forward of a message that carries our Authentication-Results:
    a fresh chain (cv=none), which Mail::DKIM's ARC verifier passes."""
    from test_dkim import keygen, perl_verify, relay, txt as pub_txt
    keygen(inst, "test.example", "s1")
    zone = make_zone(keys, ed25519_key())
    zone["s1._domainkey.test.example"] = [
        ("TXT", pub_txt(inst / "control" / "domainkeys" / "test.example" / "s1.pub"))]
    signed = dkim_sign(message(), keys.pem("a"), "example.org", "s1")
    with DNSServer(zone) as own:
        original = accepted(inst, smtp(inst, own, signed))
        r = run(inst, "forward", ["carol@example.net"], input=original.split(b"\n", 1)[1],
                env={"NEWSENDER": "alice@example.org", "QPY_NAMESERVERS": own.spec,
                     "DTLINE": "Delivered-To: bob@test.example\n"})
        assert r.returncode == 0, r.stderr
        (fwd,) = [m for m, _ in queued(inst).values() if m != original]
        assert b"\nARC-Seal: i=1; cv=none;" in fwd.replace(b"\n\t", b" ").replace(b"\n ", b" ")
        assert perl_verify(relay(inst, fwd), own.port, arc=True)[-1] == "result pass"


FORGED = (b"Authentication-Results: test.example; dkim=pass header.d=bank.example;\r\n"
          b"\tdmarc=pass header.from=bank.example\r\n"
          b"authentication-results: (trust me) TEST.EXAMPLE; spf=pass smtp.mailfrom=bank.example\r\n"
          b"Authentication-Results: elsewhere.example; dkim=fail\r\n")


def test_a_forged_verdict_never_reaches_a_maildir(tmp_path, dns, monkeypatch):
    """qpy run, SMTP from outside: the Maildir copy has our field and the other ADMD's, not
    the two forged ones (exact case and upper case, one folded, one behind a comment)."""
    from test_qpy_run import QpyRun, wait_subjects
    monkeypatch.setenv("QPY_NAMESERVERS", dns.spec)
    home = tmp_path / "qpy-home"
    server = QpyRun(home)
    try:
        me = (home / "control" / "me").read_bytes().strip()
        forged = FORGED.replace(b"test.example", me).replace(b"TEST.EXAMPLE", me.upper())
        data = forged + b"From: ceo@bank.example\r\nSubject: forged\r\n\r\npay now\r\n"
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as s:
            s.sendmail("ceo@bank.example", ["alice@localhost"], data)
        assert wait_subjects(home, 1) == ["forged"]
    finally:
        assert server.stop() == 0
    (msg,) = mailbox.Maildir(str(home / "users" / "alice" / "Maildir"), factory=None,
                             create=False)
    results = msg.get_all("Authentication-Results")
    assert len(results) == 2, results
    ours, theirs = (" ".join(r.split()) for r in results)
    assert ours == (f"{me.decode()}; dkim=none; dmarc=none header.from=bank.example; arc=none")
    assert theirs == "elsewhere.example; dkim=fail"
    assert b"dkim=pass" not in msg.as_bytes() and b"trust me" not in msg.as_bytes()
