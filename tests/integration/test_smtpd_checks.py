"""qmail-smtpd's checks of a client against a loopback DNS server: SPF at every spfbehavior
level, HELO checks, sender-domain checks (qpy.clientcheck, qpy.spfcheck).

Each session is bin/qmail-smtpd on pipes with a tcpserver environment; the DNS server
answers, answers NXDOMAIN, fails (SERVFAIL) or drops the question (``slow.example``:
a timeout, which is 4xx, never 5xx).  control/timeoutdns is 1 so a drop costs a second.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import control
from dnsserver import DNSServer
from smtpdkit import CHECKPASSWORD, CLEARED, queued

ENV = {"TCPREMOTEIP": "192.0.2.7", "TCPREMOTEHOST": "client.example", "TCPLOCALIP": "192.0.2.1",
       "TCPLOCALHOST": "mx.test.example"}
ZONE = {
    "pass.example": [("TXT", '"v=spf1 ip4:192.0.2.7 -all"'), ("MX", "10 mx.pass.example.")],
    "fail.example": [("TXT", '"v=spf1 -all"'), ("A", "192.0.2.99")],
    "exp.example": [("TXT", '"v=spf1 -all exp=why.exp.example"'), ("A", "192.0.2.99")],
    "why.exp.example": [("TXT", '"%{i} may not send mail for %{d}\\013\\010550 injected"')],
    "softfail.example": [("TXT", '"v=spf1 ~all"'), ("AAAA", "2001:db8::99")],
    "neutral.example": [("TXT", '"v=spf1 ?all"'), ("A", "192.0.2.99")],
    "none.example": [("A", "192.0.2.99")],
    "permerror.example": [("TXT", '"v=spf1 moo -all"'), ("A", "192.0.2.99")],
    "helo.example": [("TXT", '"v=spf1 -all"'), ("A", "192.0.2.99")],
    "txtonly.example": [("TXT", '"hello"')],
    "nullmx.example": [("MX", "0 .")],
    "aaaa.example": [("AAAA", "2001:db8::99")],
}
SENDERS = {"pass": "a@pass.example", "fail": "a@fail.example", "softfail": "a@softfail.example",
           "neutral": "a@neutral.example", "none": "a@none.example",
           "permerror": "a@permerror.example", "temperror": "a@slow.example"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in CLEARED + ("SPFBEHAVIOR",):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def dns():
    with DNSServer(ZONE, servfail={"broken.example"}, drop={"slow.example"}) as server:
        yield server


@pytest.fixture
def inst(home, dns):
    control(home, "timeoutdns", "1\n")
    return home


def smtp(home: Path, dns: DNSServer, commands: list[str], env: dict | None = None,
         data: bool = True) -> list[bytes]:
    """One session: HELO line(s) and MAIL/RCPT as given, DATA if ``data``; the reply lines
    (an EHLO's 250- lines dropped)."""
    full = dict(os.environ, QMAILHOME=str(home), QPY_NAMESERVERS=dns.spec, **ENV)
    full.update(env or {})
    text = "".join(c + "\r\n" for c in commands)
    if data:
        text += "DATA\r\nSubject: checks\r\n\r\nhello\r\n.\r\n"
    r = subprocess.run([str(home / "bin" / "qmail-smtpd")], input=(text + "QUIT\r\n").encode(),
                       capture_output=True, env=full, timeout=60)
    assert all(line.startswith(b"qmail-smtpd: auth ok ") for line in r.stderr.splitlines()), \
        r.stderr
    return [line for line in r.stdout.split(b"\r\n")[1:-2] if not line.startswith(b"250-")]


def txn(sender: str, helo: str = "HELO client.pass.example") -> list[str]:
    return [helo, f"MAIL FROM:<{sender}>", "RCPT TO:<postmaster@test.example>"]


def message(home: Path, reply: bytes) -> bytes:
    """The queued message that the ``250 ok … qp <pid>`` reply acknowledged."""
    pid = re.fullmatch(rb"250 (?:2\.0\.0 )?ok \d+ qp (\d+)", reply)
    assert pid, reply
    return queued(home)[pid[1]][0]


# -- SPF -----------------------------------------------------------------------------------

REFUSED_AT = {"fail": 3, "softfail": 4, "neutral": 5, "none": 6, "permerror": 6}


@pytest.mark.parametrize("level", range(7))
def test_each_spfbehavior_level_refuses_what_the_spf_patch_does(inst, dns, level):
    """0 nothing; 1 header only; 2 temperror 451 at MAIL; 3 fail, 4 softfail, 5 neutral,
    6 none and permerror refused with 550 at RCPT (cumulative)."""
    control(inst, "spfbehavior", f"{level}\n")
    for result, sender in SENDERS.items():
        helo, mail, rcpt, data, *end = smtp(inst, dns, txn(sender))
        assert helo == b"250 test.example"
        if result == "temperror" and level >= 2:
            assert mail == b"451 SPF temperror for slow.example: DNS trouble, try again later" \
                           b" (#4.7.24)"
            assert rcpt == b"503 MAIL first (#5.5.1)"
        elif result in REFUSED_AT and level >= REFUSED_AT[result]:
            assert mail == b"250 ok"
            code = {"fail": b"5.7.23", "permerror": b"5.7.24"}.get(result, b"5.7.1")
            assert rcpt.startswith(b"550 SPF %s for %s.example: " % (result.encode(),
                                                                      result.encode()))
            assert rcpt.endswith(b" (#%s)" % code) and data == b"503 RCPT first (#5.5.1)"
        else:
            assert (mail, rcpt, data) == (b"250 ok", b"250 ok", b"354 go ahead"), result
            mess = message(inst, end[0])
            if level == 0:
                assert b"Received-SPF" not in mess
            else:
                assert re.search(rb"\nReceived-SPF: %s \(test\.example: " % result.encode(), mess)


def test_received_spf_sits_above_our_received_line(inst, dns):
    control(inst, "spfbehavior", "1\n")
    replies = smtp(inst, dns, txn("a@pass.example", "EHLO client.pass.example"))
    lines = message(inst, replies[4]).split(b"\n")
    assert lines[1] == b"Authentication-Results: test.example;"     # qpy.inbound's, on top
    assert lines[2] == b"\tspf=pass smtp.mailfrom=pass.example;"
    lines = lines[lines.index(b"\tarc=none"):]
    assert lines[1] == (b"Received-SPF: pass (test.example: domain of a@pass.example designates"
                        b" 192.0.2.7 as permitted sender)")
    assert lines[2:7] == [b"\tclient-ip=192.0.2.7;", b'\tenvelope-from="a@pass.example";',
                          b"\thelo=client.pass.example;", b"\treceiver=test.example;",
                          b"\tidentity=mailfrom"]
    assert lines[7].startswith(b"Received: from client.example (HELO client.pass.example)")


def test_null_sender_is_checked_as_postmaster_at_the_helo(inst, dns):
    control(inst, "spfbehavior", "3\n")
    replies = smtp(inst, dns, txn("", "EHLO helo.example"))
    assert replies[1:3] == [b"250 2.1.0 ok", b"550 5.7.23 SPF fail for helo.example: 192.0.2.7 "
                            b"is not one of helo.example's designated mail servers (#5.7.23)"]
    replies = smtp(inst, dns, txn("", "HELO client.pass.example"))
    mess = message(inst, replies[4])
    assert b'Received-SPF: none (test.example: none for client.pass.example)' in mess
    assert b'envelope-from="postmaster@client.pass.example";' in mess
    assert b"identity=helo" in mess


def test_spfexp_and_the_domains_own_explanation(inst, dns):
    control(inst, "spfbehavior", "3\n")
    control(inst, "spfexp", "go away %{i}, %{d} says no; mail %{l}@%{o} another way\n")
    assert smtp(inst, dns, txn("bob@fail.example"))[2] == (
        b"550 SPF fail for fail.example: go away 192.0.2.7, fail.example says no; mail"
        b" bob@fail.example another way (#5.7.23)")
    # exp= wins over spfexp; its CR LF cannot start a reply line of its own
    assert smtp(inst, dns, txn("bob@exp.example"))[2] == (
        b"550 SPF fail for exp.example: 192.0.2.7 may not send mail for exp.example??550"
        b" injected (#5.7.23)")
    control(inst, "spfbehavior", "4\n")     # softfail: spfexp, never a domain's text
    assert smtp(inst, dns, txn("bob@softfail.example"))[2] == (
        b"550 SPF softfail for softfail.example: go away 192.0.2.7, softfail.example says no;"
        b" mail bob@softfail.example another way (#5.7.1)")


def test_spfbehavior_environment_overrides_the_control_file(inst, dns):
    control(inst, "spfbehavior", "1\n")
    assert smtp(inst, dns, txn("a@fail.example"), {"SPFBEHAVIOR": "3"})[2].startswith(b"550 SPF")
    control(inst, "spfbehavior", "6\n")
    replies = smtp(inst, dns, txn("a@fail.example"), {"SPFBEHAVIOR": "0"})
    assert replies[2:4] == [b"250 ok", b"354 go ahead"]
    assert b"Received-SPF" not in message(inst, replies[4])


def test_relayclient_and_authenticated_clients_are_not_checked(inst, dns, tmp_path):
    for name, value in (("spfbehavior", "6"), ("helocheck", "3"), ("senderdomaincheck", "1")):
        control(inst, name, value + "\n")
    asked = len(dns.queries)
    replies = smtp(inst, dns, txn("a@fail.example", "HELO x"), {"RELAYCLIENT": ""})
    assert replies[1:4] == [b"250 ok", b"250 ok", b"354 go ahead"]
    assert b"Received-SPF" not in message(inst, replies[4])
    script = tmp_path / "checkpassword"
    script.write_text(CHECKPASSWORD)
    auth = {"TCPREMOTEIP": "127.0.0.1", "CHECKPASSWORD": f"{sys.executable} {script} /bin/true"}
    replies = smtp(inst, dns, ["EHLO x", "AUTH PLAIN AGFsaWNlAHNlY3JldA==",
                               "MAIL FROM:<a@nxdomain.example>", "RCPT TO:<a@elsewhere.example>"],
                   auth)
    assert replies[1:5] == [b"235 2.7.0 ok, go ahead (#2.7.0)", b"250 2.1.0 ok", b"250 2.1.5 ok",
                            b"354 go ahead"]
    assert len(dns.queries) == asked        # not one lookup


def test_dns_trouble_is_never_a_5xx(inst, dns):
    """A server that drops the question, a spent budget: temperror, 451 even at level 6."""
    control(inst, "spfbehavior", "6\n")
    control(inst, "dnsbudget", "1\n")
    control(inst, "timeoutdns", "5\n")      # the budget, not the timeout, ends it
    assert smtp(inst, dns, txn("a@slow.example"))[1].startswith(b"451 SPF temperror")
    control(inst, "spfbehavior", "1\n")
    replies = smtp(inst, dns, txn("a@slow.example"))
    assert b"Received-SPF: temperror (test.example: temperror for slow.example)" in \
        message(inst, replies[4])


# -- HELO ----------------------------------------------------------------------------------

BAD_HELO = (b"550 sorry, your HELO name is neither a fully qualified domain name nor an address"
            b" literal (#5.5.2)")
OUR_HELO = b"550 sorry, your HELO name claims to be this host (#5.7.1)"


@pytest.mark.parametrize("helo, ok", [
    ("client.pass.example", True), ("client.pass.example.", True), ("Mail-1.EXAMPLE.org", True),
    ("under_score.example", True), ("[192.0.2.7]", True), ("[IPv6:2001:db8::7]", True),
    ("[ipv6:::1]", True), ("x", False), ("localhost", False), ("192.0.2.7", False),
    ("-bad.example", False), ("bad-.example", False), ("a..example", False),
    ("client.example bar", False), ("[192.0.2.300]", False), ("[2001:db8::7]", False),
    ("[IPv6:2001:db8::7", False), ("host.123", False), ("exa$mple.com", False),
    ("a" * 64 + ".example", False), ("client.example.", True), ("", False),
])
def test_helocheck_syntax(inst, dns, helo, ok):
    control(inst, "helocheck", "1\n")
    replies = smtp(inst, dns, txn("", f"HELO {helo}"), data=False)
    assert replies[1] == (b"250 ok" if ok else BAD_HELO)


def test_helocheck_refuses_each_mail_until_a_good_helo(inst, dns):
    control(inst, "helocheck", "1\n")
    mail, rcpt = "MAIL FROM:<a@pass.example>", "RCPT TO:<postmaster@test.example>"
    replies = smtp(inst, dns, ["EHLO x", mail, rcpt, mail, "EHLO ok.example", mail, rcpt])
    refused = b"550 5.5.2" + BAD_HELO[3:]
    assert replies[:8] == [b"250 SMTPUTF8", refused, b"503 5.5.1 MAIL first (#5.5.1)", refused,
                           b"250 SMTPUTF8", b"250 2.1.0 ok", b"250 2.1.5 ok", b"354 go ahead"]
    assert replies[8].startswith(b"250 2.0.0 ok ")
    assert smtp(inst, dns, txn("a@pass.example", "NOOP"))[1:3] == [b"250 ok", b"250 ok"]  # no HELO


@pytest.mark.parametrize("helo, env, refused", [
    ("test.example", {}, True),                     # control/me
    ("TEST.example.", {}, True),
    ("mx.test.example", {}, True),                  # $TCPLOCALHOST
    ("[192.0.2.1]", {}, True),                      # $TCPLOCALIP
    ("192.0.2.1", {}, True),
    ("local.example", {}, True),                    # control/locals
    ("hosted.example", {}, True),                   # rcpthosts
    ("sub.hosted.example", {}, False),              # .hosted.example: not a name of ours
    ("client.pass.example", {}, False),
    ("[192.0.2.7]", {}, False),
    ("test.example", {"TCPREMOTEIP": "127.0.0.1"}, False),
    ("test.example", {"TCPREMOTEIP": "::1"}, False),
    ("[192.0.2.1]", {"TCPREMOTEIP": "192.0.2.1"}, False),
    ("x", {}, False),                               # bit 1 is off
])
def test_helocheck_our_name(inst, dns, helo, env, refused):
    control(inst, "helocheck", "2\n")
    control(inst, "locals", "test.example\nlocal.example\n")
    control(inst, "rcpthosts", "test.example\nlocal.example\nhosted.example\n.hosted.example\n")
    replies = smtp(inst, dns, txn("", f"HELO {helo}"), env, data=False)
    assert replies[1] == (OUR_HELO if refused else b"250 ok")


def test_helo_checks_are_off_without_the_file(inst, dns):
    (inst / "control" / "helocheck").unlink(missing_ok=True)
    assert smtp(inst, dns, txn("", "HELO test.example"), data=False)[1] == b"250 ok"
    assert smtp(inst, dns, txn("", "HELO x"), data=False)[1] == b"250 ok"


# -- sender domain ------------------------------------------------------------------------

@pytest.mark.parametrize("sender, reply", [
    ("a@pass.example", b"250 ok"),                  # MX
    ("a@fail.example", b"250 ok"),                  # A
    ("a@aaaa.example", b"250 ok"),                  # AAAA
    ("", b"250 ok"),
    ("a@[192.0.2.9]", b"250 ok"),
    ("a@nxdomain.example", b"550 sorry, your envelope sender domain has no MX, A or AAAA record"
                           b" (#5.1.8)"),
    ("a@txtonly.example", b"550 sorry, your envelope sender domain has no MX, A or AAAA record"
                          b" (#5.1.8)"),
    ("a@nullmx.example", b"550 sorry, your envelope sender domain accepts no mail (null MX)"
                         b" (#5.7.27)"),
    ("a@slow.example", b"450 sorry, I cannot look up your envelope sender domain now, try again"
                       b" later (#4.1.8)"),
    ("a@broken.example", b"450 sorry, I cannot look up your envelope sender domain now, try"
                         b" again later (#4.1.8)"),
])
def test_senderdomaincheck(inst, dns, sender, reply):
    control(inst, "senderdomaincheck", "1\n")
    assert smtp(inst, dns, txn(sender), data=False)[1] == reply


def test_senderdomaincheck_spent_budget_is_450_and_off_without_the_file(inst, dns):
    control(inst, "senderdomaincheck", "1\n")
    control(inst, "dnsbudget", "0\n")
    assert smtp(inst, dns, txn("a@nxdomain.example"), data=False)[1].startswith(b"450 ")
    (inst / "control" / "senderdomaincheck").unlink()
    assert smtp(inst, dns, txn("a@nxdomain.example"), data=False)[1] == b"250 ok"
