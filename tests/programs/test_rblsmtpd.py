"""rblsmtpd against the real loopback DNS server: listed, not listed, anti-listed, SERVFAIL, $RBLSMTPD."""
from __future__ import annotations

import os
import re
import subprocess

import pytest

from conftest import run
from dnsserver import DNSServer
from tcpserve import TCPServer, connect, read_all

ZONE = {
    "2.0.0.127.bl.test": [("TXT", '"listed: see http://bl.test/?127.0.0.2"')],
    "3.0.0.127.bl.test": [("TXT", '"two " "strings"'), ("A", "127.0.0.2")],
    "5.0.0.127.bl.test": [("TXT", '"bad\\010bytes\\255 " "' + "x" * 250 + '"')],
    "2.0.0.127.al.test": [("A", "127.0.0.2")],
    "6.0.0.127.bl.test": [("TXT", '"also listed"')],
    "6.0.0.127.al.test": [("A", "127.0.0.2")],
}
SERVFAIL = {"4.0.0.127.bl.test", "4.0.0.127.al.test"}
PASS = ["sh", "-c", "echo passed; exit 7"]


@pytest.fixture(scope="module")
def dns():
    with DNSServer(ZONE, servfail=SERVFAIL) as server:
        yield server


def rbl(home, dns, ip: str, args: list[str], input: bytes = b"", **env: str):
    full = {"TCPREMOTEIP": ip, "QPY_NAMESERVERS": dns.spec}
    full.update(env)
    base = {k: v for k, v in os.environ.items() if k != "RBLSMTPD"}
    return subprocess.run([str(home / "bin" / "rblsmtpd"), *args], input=input, capture_output=True,
                          env=dict(base, QMAILHOME=str(home), **full), timeout=60)


def test_not_listed_runs_the_program(home, dns):
    r = rbl(home, dns, "127.0.0.1", ["-r", "bl.test", *PASS])
    assert (r.returncode, r.stdout, r.stderr) == (7, b"passed\n", b"")


def test_listed_answers_451_with_the_txt_text_and_logs(home, dns):
    r = rbl(home, dns, "127.0.0.2", ["-t", "0", "-r", "bl.test", *PASS])
    message = b"451 listed: see http://bl.test/?127.0.0.2"
    assert (r.returncode, r.stdout) == (0, message + b"\r\n")
    assert re.fullmatch(rb"rblsmtpd: 127\.0\.0\.2 pid \d+: " + re.escape(message) + rb"\n", r.stderr)


def test_b_makes_it_553_and_txt_strings_are_joined(home, dns):
    r = rbl(home, dns, "127.0.0.3", ["-b", "-t", "0", "-r", "bl.test", *PASS])
    assert r.stdout == b"553 two strings\r\n"


def test_message_is_cut_at_200_and_made_printable(home, dns):
    r = rbl(home, dns, "127.0.0.5", ["-t", "0", "-r", "bl.test", *PASS])
    line = r.stdout[:-2]
    assert line == b"451 bad?bytes? " + b"x" * 189
    assert len(line) == 4 + 200


def test_blocked_session_dialogue(home, dns):
    commands = (b"HELO client\r\nehlo client\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n"
                b"rset\r\nNOOP\r\nVRFY x\nQUIT\r\nHELO after quit\r\n")
    r = rbl(home, dns, "127.0.0.2", ["-r", "bl.test", *PASS], input=commands)
    block = b"451 listed: see http://bl.test/?127.0.0.2\r\n"
    ok = b"250 rblsmtpd.local\r\n"
    assert r.returncode == 0
    assert r.stdout == (b"220 rblsmtpd.local\r\n" + ok + ok + ok + block + block + ok + ok + block
                        + b"221 rblsmtpd.local\r\n")


def test_blocked_session_ends_quietly_at_eof(home, dns):
    r = rbl(home, dns, "127.0.0.2", ["-b", "-r", "bl.test", *PASS], input=b"HELO x\r\nRCPT TO:<a>\r\n")
    assert r.returncode == 0
    assert r.stdout == (b"220 rblsmtpd.local\r\n250 rblsmtpd.local\r\n"
                        b"553 listed: see http://bl.test/?127.0.0.2\r\n")


def test_anti_rbl_accepts_only_when_it_comes_first(home, dns):
    r = rbl(home, dns, "127.0.0.2", ["-a", "al.test", "-r", "bl.test", *PASS])
    assert r.stdout == b"passed\n"
    r = rbl(home, dns, "127.0.0.6", ["-t", "0", "-r", "bl.test", "-a", "al.test", *PASS])
    assert r.stdout == b"451 also listed\r\n"


def test_servfail_fail_open_by_default_and_closed_with_c(home, dns):
    r = rbl(home, dns, "127.0.0.4", ["-r", "bl.test", *PASS])
    assert r.stdout == b"passed\n"
    r = rbl(home, dns, "127.0.0.4", ["-b", "-c", "-t", "0", "-r", "bl.test", *PASS])
    assert r.stdout == b"451 temporary RBL lookup error\r\n"
    r = rbl(home, dns, "127.0.0.4", ["-c", "-C", "-r", "bl.test", *PASS])
    assert r.stdout == b"passed\n"


def test_servfail_on_anti_rbl(home, dns):
    # -C: a failed -a lookup counts as listed, so the client is accepted.
    r = rbl(home, dns, "127.0.0.4", ["-a", "al.test", "-r", "bl.test", *PASS])
    assert r.stdout == b"passed\n"
    # -c: it is ignored; a temporary failure also forbids 553 for a later -r hit.
    zone_hit = {"4.0.0.127.bl2.test": [("TXT", '"listed too"')]}
    with DNSServer(zone_hit, servfail={"4.0.0.127.al.test"}) as dns2:
        r = rbl(home, dns2, "127.0.0.4", ["-c", "-b", "-t", "0", "-a", "al.test", "-r", "bl2.test",
                                          *PASS])
    assert r.stdout == b"451 listed too\r\n"


def test_rblsmtpd_variable_decides_first(home, dns):
    nowhere = {"QPY_NAMESERVERS": "127.0.0.1:9"}   # proves no lookup is made
    r = rbl(home, dns, "127.0.0.2", ["-r", "bl.test", *PASS], RBLSMTPD="", **nowhere)
    assert r.stdout == b"passed\n"
    r = rbl(home, dns, "127.0.0.1", ["-t", "0", "-r", "bl.test", *PASS], RBLSMTPD="-go away",
            **nowhere)
    assert r.stdout == b"553 go away\r\n"
    r = rbl(home, dns, "127.0.0.1", ["-b", "-t", "0", "-r", "bl.test", *PASS], RBLSMTPD="later",
            **nowhere)
    assert r.stdout == b"451 later\r\n"


def test_ipv6_client_is_looked_up_by_reversed_nibbles(home):
    name = "2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test"
    with DNSServer({name: [("TXT", '"v6 listed"')]}) as dns:
        r = rbl(home, dns, "2001:db8::2", ["-t", "0", "-r", "bl.test", *PASS])
        assert r.stdout == b"451 v6 listed\r\n"
        assert (name, "TXT") in dns.queries
        r = rbl(home, dns, "2001:db8::3", ["-r", "bl.test", *PASS])
        assert r.stdout == b"passed\n"


def test_usage_requires_an_rbl_zone_and_a_program(home):
    for args in ([*PASS], ["-a", "al.test", *PASS], ["-r", "bl.test"], ["-x", "-r", "bl.test", *PASS]):
        r = run(home, "rblsmtpd", args)
        assert r.returncode == 100, args
        assert r.stderr.startswith(b"rblsmtpd: usage: rblsmtpd ")


def test_program_that_cannot_run(home, dns):
    r = rbl(home, dns, "127.0.0.1", ["-r", "bl.test", "/nonexistent/smtpd"])
    assert r.returncode == 111
    assert r.stderr == b"rblsmtpd: fatal: unable to run /nonexistent/smtpd: file does not exist\n"


def test_under_tcpserver_in_front_of_qmail_smtpd(home, dns):
    """The qmail chain, warm all the way: a listed client meets rblsmtpd, others qmail-smtpd."""
    cdb = str(home / "rules.cdb")
    prog = ["rblsmtpd", "-r", "bl.test", "qmail-smtpd"]
    for rules, banner in ((":allow\n", b"220 test.example ESMTP"),
                          (':allow,RBLSMTPD="-blocked by rule"\n', b"220 rblsmtpd.local")):
        subprocess.run([str(home / "bin" / "tcprules"), cdb, cdb + ".tmp"], input=rules.encode(),
                       check=True, timeout=30)
        with TCPServer(home, ["-R", "-H", "-l", "lh", "-x", cdb], prog,
                       env={"QPY_NAMESERVERS": dns.spec}) as srv:
            with connect(srv.host, srv.port) as s:
                s.sendall(b"RCPT TO:<x@test.example>\r\nQUIT\r\n")
                out = read_all(s)
        assert out.startswith(banner + b"\r\n"), out
        assert out.endswith(b"221 " + banner.split()[1] + b"\r\n"), out
    assert b"553 blocked by rule\r\n" in out
    assert re.search(r"rblsmtpd: 127\.0\.0\.1 pid \d+: 553 blocked by rule", srv.log)


def test_blocked_session_ends_silently_after_the_timeout(home, dns):
    env = dict(os.environ, QMAILHOME=str(home), TCPREMOTEIP="127.0.0.2", QPY_NAMESERVERS=dns.spec)
    env.pop("RBLSMTPD", None)
    proc = subprocess.Popen([str(home / "bin" / "rblsmtpd"), "-t", "1", "-r", "bl.test", *PASS],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdin.write(b"HELO x\r\n")
    proc.stdin.flush()          # and keep stdin open: only the alarm can end the session
    out = proc.stdout.read()
    assert proc.wait(30) == 0
    proc.stdin.close()
    proc.stderr.close()
    assert out == b"220 rblsmtpd.local\r\n250 rblsmtpd.local\r\n"
