"""DKIM signing and ARC sealing by the queue writer, checked by verifiers that are not ours.

Keys are made with ``qpy dkim keygen`` and published on the loopback DNS server; the
message goes into the queue through a real entry point (sendmail with LF-only input,
qmail-smtpd with and without RELAYCLIENT, forward), then out through qmail-remote to a
loopback sink, and the bytes the sink received are verified by Debian's Mail::DKIM
(RSA, and ARC) and OpenDKIM's opendkim-testmsg (Ed25519; it asks the system resolver,
so it runs in a mount namespace whose resolv.conf names the test server on port 53).
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from conftest import control, need_program, need_root, run
from dnsserver import DNSServer
from smtpsink import SMTPSink

# 8-bit text, leading dots, a line that is just a dot, a 990-byte line; LF only.
BODY = (b".starts with a dot\n..two dots\n.\n" + "caf\u00e9 \u2603\n".encode()
        + b"L" * 990 + b"\nlast line\n")
HEAD = (b"From: Alice <alice@example.org>\nTo: bob@example.net\nSubject: signed\n"
        b"MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
        b"Content-Transfer-Encoding: 8bit\n")

PERL_DKIM = textwrap.dedent(r"""
    use strict; use Mail::DKIM::Verifier; use Mail::DKIM::ARC::Verifier; use Net::DNS::Resolver;
    my ($port, $arc) = @ARGV;
    Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(nameservers => ['127.0.0.1'], port => $port,
                                                     recurse => 1, retry => 1, udp_timeout => 5));
    my $v = $arc ? Mail::DKIM::ARC::Verifier->new() : Mail::DKIM::Verifier->new();
    binmode STDIN;
    while (<STDIN>) { s/\r?\n\z/\015\012/; $v->PRINT($_); }
    $v->CLOSE;
    unless ($arc) {
        for my $s ($v->signatures) { print "sig ", $s->domain, " ", $s->selector, " ",
                                     $s->algorithm, " ", $s->result, "\n"; }
    }
    print "result ", $v->result, "\n";
""")


def need_perl_dkim() -> None:
    need_program("perl")
    if subprocess.run(["perl", "-MMail::DKIM::Verifier", "-e", "1"], capture_output=True).returncode:
        pytest.skip("Mail::DKIM (libmail-dkim-perl) is not installed")


def perl_verify(data: bytes, port: int, arc: bool = False) -> list[str]:
    need_perl_dkim()
    r = subprocess.run(["perl", "-e", PERL_DKIM, str(port), "1" if arc else ""], input=data,
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.decode().splitlines()


def opendkim_verify(data: bytes, zone: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    """opendkim-testmsg on ``data`` with the system resolver pointed at ``zone``."""
    need_root()
    need_program("opendkim-testmsg")
    need_program("unshare")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.53\noptions attempts:1 timeout:5\n")
    with DNSServer(zone, host="127.0.0.53", port=53):
        return subprocess.run(["unshare", "-m", "sh", "-c",
                               f"mount --bind {resolv} /etc/resolv.conf && "
                               f"exec opendkim-testmsg"], input=data, capture_output=True, timeout=60)


def txt(pub: Path) -> str:
    """The quoted strings of a .pub zone line, as the DNS server's TXT data."""
    line = pub.read_text()
    return line[line.index("(") + 1:line.rindex(")")].strip()


def keygen(home: Path, domain: str, selector: str, kind: str = "rsa") -> None:
    r = run(home, "qpy", ["dkim", "keygen", domain, "--selector", selector, "--type", kind])
    assert r.returncode == 0, r.stderr


@pytest.fixture
def signer(home):
    """example.org with an RSA (s1) and an Ed25519 (e1) key; the zone that publishes them."""
    keygen(home, "example.org", "s1")
    keygen(home, "example.org", "e1", "ed25519")
    keys = home / "control" / "domainkeys" / "example.org"
    zone = {"s1._domainkey.example.org": [("TXT", txt(keys / "s1.pub"))],
            "e1._domainkey.example.org": [("TXT", txt(keys / "e1.pub"))]}
    return zone


def queued(home: Path) -> list[bytes]:
    return [Path(p).read_bytes() for p in sorted(glob.glob(str(home / "queue" / "mess" / "*" / "*")))]


def relay(home: Path, mess: bytes) -> bytes:
    """The queued message through qmail-remote to a sink: the bytes a receiver sees."""
    with SMTPSink("127.0.0.1") as sink:
        control(home, "smtproutes", f"example.net:127.0.0.1:{sink.port}\n")
        r = run(home, "qmail-remote", ["example.net", "alice@example.org", "bob@example.net"],
                input=mess)
        assert r.returncode == 0 and b"K127.0.0.1 accepted message" in r.stdout, r.stdout
        sink.wait_idle()
        return sink.messages[0].data


def signatures(mess: bytes) -> list[bytes]:
    head = mess.split(b"\n\n", 1)[0]
    return [f for f in head.replace(b"\n ", b" ").split(b"\n") if f.startswith(b"DKIM-Signature:")]


def test_sendmail_lf_input_is_signed_twice_and_verifies_independently(home, signer, tmp_path):
    r = run(home, "sendmail", ["-t", "-f", "alice@example.org"], input=HEAD + b"\n" + BODY)
    assert r.returncode == 0, r.stderr
    (mess,) = queued(home)
    sigs = signatures(mess)
    assert len(sigs) == 2
    assert b"a=rsa-sha256" in sigs[0] and b"s=s1" in sigs[0] and b"d=example.org" in sigs[0]
    assert b"a=ed25519-sha256" in sigs[1] and b"s=e1" in sigs[1]
    for sig in sigs:
        assert b"c=relaxed/relaxed" in sig and b" l=" not in sig and b";l=" not in sig
        h = sig.split(b"h=")[1].split(b";")[0].replace(b" ", b"").split(b":")
        assert h.count(b"from") == 2        # oversigned
        assert {b"to", b"subject", b"mime-version", b"content-type",
                b"content-transfer-encoding", b"date", b"message-id"} <= set(h)
    assert mess.endswith(BODY)              # the body is stored as given
    wire = relay(home, mess)
    with DNSServer(signer) as dns:
        lines = perl_verify(wire, dns.port)
    assert "sig example.org s1 rsa-sha256 pass" in lines and lines[-1] == "result pass", lines
    # Ed25519: OpenDKIM, on the message with only that signature; a changed body fails.
    only_ed = strip_field(wire, b"a=rsa-sha256")
    assert b"a=ed25519-sha256" in only_ed and b"a=rsa-sha256" not in only_ed
    ok = opendkim_verify(only_ed, signer, tmp_path)
    assert ok.returncode == 0 and ok.stderr == b"", ok.stderr
    bad = opendkim_verify(only_ed.replace(b"last line", b"last lime"), signer, tmp_path)
    assert bad.returncode != 0, bad.stderr


def strip_field(wire: bytes, marker: bytes) -> bytes:
    """``wire`` without the (folded) header field that contains ``marker``."""
    head, _, body = wire.partition(b"\r\n\r\n")
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    return b"\r\n".join(f for f in fields if marker not in f) + b"\r\n\r\n" + body


def smtp(home: Path, message: bytes, env: dict[str, str]) -> bytes:
    dialogue = (b"HELO client.example\r\nMAIL FROM:<alice@example.org>\r\n"
                b"RCPT TO:<bob@example.net>\r\nDATA\r\n"
                + message.replace(b"\n", b"\r\n").replace(b"\r\n.", b"\r\n..") + b".\r\nQUIT\r\n")
    base = {"TCPREMOTEIP": "192.0.2.7", "TCPLOCALIP": "127.0.0.1", "TCPLOCALPORT": "25"}
    control(home, "rcpthosts", "example.net\n")
    r = run(home, "qmail-smtpd", input=dialogue, env={**base, **env})
    return r.stdout


def test_smtp_relay_client_is_signed_but_mail_from_outside_is_not(home, signer):
    out = smtp(home, HEAD + b"\n" + BODY, {"RELAYCLIENT": ""})
    assert b"\r\n250 ok " in out, out
    out = smtp(home, HEAD + b"\n" + BODY, {})       # claims example.org, comes from outside
    assert b"\r\n250 ok " in out, out
    first, second = sorted(queued(home), key=lambda m: len(signatures(m)))
    assert len(signatures(first)) == 0 and len(signatures(second)) == 2
    with DNSServer(signer) as dns:
        lines = perl_verify(relay(home, second), dns.port)
    assert lines[-1] == "result pass", lines


def test_subdomain_from_is_signed_by_the_parent_and_others_are_not(home, signer):
    for sender in (b"news.example.org", b"example.com"):
        r = run(home, "qmail-inject", ["bob@example.net"],
                input=b"From: x@" + sender + b"\nSubject: s\n\nbody\n")
        assert r.returncode == 0, r.stderr
    signed = {m.split(b"From: x@")[1].split(b"\n")[0]: signatures(m) for m in queued(home)}
    assert len(signed[b"news.example.org"]) == 2 and b"d=example.org" in signed[b"news.example.org"][0]
    assert signed[b"example.com"] == []


def test_a_broken_key_fails_temporarily_and_queues_nothing(home, signer):
    key = home / "control" / "domainkeys" / "example.org" / "s1"
    key.chmod(0o600)
    key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")
    r = run(home, "qmail-inject", ["bob@example.net"], input=HEAD + b"\n" + BODY)
    assert r.returncode == 111 and b"unable to read configuration" in r.stderr.lower(), r.stderr
    assert queued(home) == []


def test_a_forward_is_arc_sealed_and_never_dkim_signed(home, signer):
    # a message from outside, already signed by its author's domain (here: by us, for the
    # test's sake, then handed to forward as qmail-local would)
    r = run(home, "qmail-inject", ["bob@example.net"], input=HEAD + b"\n" + BODY)
    assert r.returncode == 0, r.stderr
    (original,) = queued(home)
    received = original.split(b"\n", 1)[1]          # without our queue's Received line
    with DNSServer(signer) as dns:     # the writer checks the signatures it seals
        r = run(home, "forward", ["carol@example.net"], input=received,
                env={"NEWSENDER": "alice@example.org", "DTLINE": "Delivered-To: fwd@example.org\n",
                     "QPY_NAMESERVERS": dns.spec})
    assert r.returncode == 0, r.stderr
    (mess,) = [m for m in queued(home) if m != original]
    head = mess.split(b"\n\n", 1)[0]
    assert len(signatures(mess)) == 2                # the author's two, none added
    assert head.count(b"\nARC-Seal: i=1;") == 1 and b"\nARC-Message-Signature: i=1;" in head
    assert b"\nARC-Authentication-Results: i=1; test.example;" in head
    assert b"dkim=pass header.d=example.org header.s=s1" in head, head
    with DNSServer(signer) as dns:
        arc = perl_verify(relay(home, mess), dns.port, arc=True)
        dkim = perl_verify(relay(home, mess), dns.port)
    assert arc[-1] == "result pass", arc
    assert dkim[-1] == "result pass", dkim


def test_privileged_keys_are_qmailq_only_and_the_flags_cross_to_qmail_queued(priv_home):
    """keygen as root: the key is qmailq's 0400; submissions from nobody through the service
    and through maildrop/ are signed by qmailq when they ask (DKIMSIGN), not otherwise."""
    import pwd
    import stat
    from localusers import start_service, stop, submit
    keygen(priv_home, "example.org", "s1")
    key = priv_home / "control" / "domainkeys" / "example.org" / "s1"
    st = key.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (pwd.getpwnam("qmailq").pw_uid, 0o400)
    assert stat.S_IMODE((key.parent / "s1.pub").stat().st_mode) == 0o644
    message = HEAD + b"\n" + BODY
    envelope = b"Falice@example.org\0Tbob@example.net\0\0"
    proc = start_service(priv_home)
    try:
        assert submit(priv_home, "nobody", message, envelope, env={"DKIMSIGN": ""})[0] == 0
        assert submit(priv_home, "nobody", message, envelope)[0] == 0
    finally:
        stop(proc)
    assert submit(priv_home, "nobody", message, envelope, env={"DKIMSIGN": ""})[0] == 0  # maildrop/
    r = run(priv_home, "qmail-pickup", ["once"])
    assert r.returncode == 0, r.stderr
    counts = sorted(len(signatures(m)) for m in queued(priv_home))
    assert counts == [0, 1, 1]


def test_qmail_sends_bounces_are_signed_as_bouncehost(home, signer, monkeypatch):
    from qpy import bounce
    control(home, "bouncehost", "mail.example.org\n")    # signed by its parent, example.org
    q = home / "queue"
    monkeypatch.chdir(q)
    (q / "mess" / "0").mkdir(exist_ok=True)
    (q / "mess" / "0" / "23").write_bytes(b"Received: x\nSubject: hi\n\nbody\n")
    (q / "bounce" / "23").write_bytes(bounce.block(b"bob@b.example", b"no such user"))
    settings = bounce.Settings(bouncehost=b"mail.example.org", doublebounceto=b"pm@example.org")
    assert bounce.inject("bounce/23", "mess/0/23", b"joe@a.example", settings) > 0
    (mess,) = [m for m in queued(home) if b"\nFrom: MAILER-DAEMON@mail.example.org\n" in m]
    assert len(signatures(mess)) == 2 and b"d=example.org" in signatures(mess)[0]
    with DNSServer(signer) as dns:
        lines = perl_verify(relay(home, mess), dns.port)
    assert "sig example.org s1 rsa-sha256 pass" in lines and lines[-1] == "result pass", lines


ACCEPT_ALICE = ("import os, sys\n"
                "user, password = os.read(3, 1024).split(b'\\0')[:2]\n"
                "sys.exit(0 if (user, password) == (b'alice', b'secret') else 1)\n")


def test_smtp_after_auth_is_signed(home, signer, tmp_path):
    import base64
    import sys
    script = tmp_path / "checkpassword"
    script.write_text(ACCEPT_ALICE)
    login = base64.b64encode(b"\0alice\0secret")
    message = (HEAD + b"\n" + BODY).replace(b"\n", b"\r\n").replace(b"\r\n.", b"\r\n..")
    dialogue = (b"EHLO client.example\r\nAUTH PLAIN " + login + b"\r\nMAIL FROM:<alice@example.org>\r\n"
                b"RCPT TO:<bob@example.net>\r\nDATA\r\n" + message + b".\r\nQUIT\r\n")
    r = run(home, "qmail-smtpd", input=dialogue,
            env={"TCPREMOTEIP": "127.0.0.1", "TCPLOCALIP": "127.0.0.1", "TCPLOCALPORT": "587",
                 "CHECKPASSWORD": f"{sys.executable} {script} /bin/true"})
    assert b"\r\n235 " in r.stdout and b"\r\n250 2.0.0 ok " in r.stdout, r.stdout
    (mess,) = queued(home)
    assert b"with ESMTPA" in mess and len(signatures(mess)) == 2
    with DNSServer(signer) as dns:
        assert perl_verify(relay(home, mess), dns.port)[-1] == "result pass"
