"""qmail-smtpd over real TCP on loopback.

Debian's ucspi-tcp tcpserver execs bin/qmail-smtpd (the exec path); qpy's
tcpserver runs it warm.  Clients: Python's smtplib (incl. STARTTLS and AUTH)
and Debian's swaks.  Every accepted message is read back from the queue.
"""
from __future__ import annotations

import base64
import re
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import control, need_program
from qpy import smtpio
from tcpserve import TCPServer, connect, debian, ipv6_loopback, read_all, talk
from smtpdkit import CHECKPASSWORD, CLEARED, leftovers, qmail_behaviour, queued

OPTS = ["-R", "-H", "-l", "mx.test.example"]
MESSAGE = b"Subject: over tcp\r\nX-8bit: \xc3\xa9\r\n\r\n.leading dot\r\nbody\r\n"
STORED = b"Subject: over tcp\nX-8bit: \xc3\xa9\n\n.leading dot\nbody\n"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, request):
    for name in CLEARED:
        monkeypatch.delenv(name, raising=False)
    if "home" in request.fixturenames:      # qmail's dialogue, not a new instance's limits
        qmail_behaviour(request.getfixturevalue("home"))


def server(home: Path, binary: str | None = None, env: dict | None = None,
           host: str = "127.0.0.1") -> TCPServer:
    """tcpserver running bin/qmail-smtpd: Debian's (``binary``) or ours (default)."""
    return TCPServer(home, OPTS, [str(home / "bin" / "qmail-smtpd")], host=host, env=env,
                     binary=binary)


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def only_message(home: Path) -> bytes:
    """The one queued message without qmail-queue's own first line."""
    (mess, _), = queued(home).values()
    return mess.split(b"\n", 1)[1]


def envelopes(home: Path) -> list[bytes]:
    return sorted(env.split(b"\0", 2)[2] for _, env in queued(home).values())


def test_smtplib_through_debian_tcpserver(home):
    with server(home, debian("tcpserver")) as srv:
        with smtplib.SMTP(srv.host, srv.port, local_hostname="client.example", timeout=30) as c:
            c.ehlo()
            for ext in ("pipelining", "8bitmime", "enhancedstatuscodes", "smtputf8"):
                assert c.has_extn(ext), ext
            assert not c.has_extn("starttls") and not c.has_extn("size")
            assert c.sendmail("s@x.example", ["a@test.example", "b@test.example"], MESSAGE) == {}
            with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
                c.sendmail("s@x.example", ["x@elsewhere.example"], MESSAGE)
            assert e.value.recipients["x@elsewhere.example"] == (
                553, b"5.7.1 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)")
    assert "Traceback" not in srv.log
    stored = only_message(home)
    assert re.fullmatch(rb"Authentication-Results: test\.example;\n\tdkim=none;\n"
                        rb"\tdmarc=none \(no From: domain\);\n\tarc=none\n"
                        rb"Received: from unknown \(HELO client\.example\) \(127\.0\.0\.1\)\n"
                        rb"  by mx\.test\.example with SMTP; [^\n]+ -0000\n", stored[:-len(STORED)])
    assert stored.endswith(STORED)
    assert envelopes(home) == [b"Fs@x.example\0Ta@test.example\0Tb@test.example\0"]


def test_pipelined_session_gets_every_reply_in_order(home):
    control(home, "databytes", "100000\n")
    session = (b"EHLO c\r\nMAIL FROM:<s@x.example> SIZE=200000\r\nMAIL FROM:<s@x.example> SIZE=10\r\n"
               b"RCPT TO:<a@test.example>\r\nRCPT TO:<b@nowhere.example>\r\nRCPT TO:<c@test.example>\r\n"
               b"DATA\r\nx: y\r\n\r\nhi\r\n.\r\nRSET\r\nQUIT\r\n")
    with server(home, debian("tcpserver")) as srv:
        out = talk(srv.host, srv.port, session)
    codes = [line[:9] for line in out.split(b"\r\n") if line[3:4] == b" "]
    assert codes == [b"220 test.", b"250 SMTPU", b"552 5.3.4", b"250 2.1.0", b"250 2.1.5",
                     b"553 5.7.1", b"250 2.1.5", b"354 go ah", b"250 2.0.0", b"250 2.0.0",
                     b"221 2.0.0"]
    assert envelopes(home) == [b"Fs@x.example\0Ta@test.example\0Tc@test.example\0"]


def test_starttls_then_auth_then_relay(home, tmp_path, certificate):
    control(home, "servercert.pem", certificate)
    script = tmp_path / "checkpassword"
    script.write_text(CHECKPASSWORD)
    env = {"CHECKPASSWORD": f"{sys.executable} {script} /bin/true"}
    with server(home, debian("tcpserver"), env) as srv:
        with smtplib.SMTP(srv.host, srv.port, local_hostname="client.example", timeout=30) as c:
            c.ehlo()
            assert c.has_extn("starttls")
            assert c.starttls(context=client_context())[0] == 220
            assert c.sock.version() in ("TLSv1.2", "TLSv1.3")
            c.ehlo()                                  # the session starts over
            assert not c.has_extn("starttls") and "PLAIN" in c.esmtp_features["auth"]
            with pytest.raises(smtplib.SMTPAuthenticationError):
                c.login("alice", "wrong")
            c.login("alice", "secret")
            assert c.sendmail("alice@x.example", ["far@elsewhere.example"], MESSAGE) == {}
    assert "Traceback" not in srv.log
    assert b"\n  by mx.test.example with ESMTPSA (TLSv1." in only_message(home)
    assert envelopes(home) == [b"Falice@x.example\0Tfar@elsewhere.example\0"]


def test_auth_is_not_offered_in_plaintext_to_remote_clients(home, tmp_path, certificate):
    """A non-loopback client (TCPREMOTEIP set by a rule) gets AUTH only under TLS."""
    control(home, "servercert.pem", certificate)
    rules = str(tmp_path / "rules.cdb")
    subprocess.run([debian("tcprules"), rules, rules + ".tmp"],
                   input=b':allow,TCPREMOTEIP="192.0.2.7"\n', check=True, timeout=30)
    env = {"CHECKPASSWORD": f"{sys.executable} {tmp_path / 'none'} /bin/true"}
    with TCPServer(home, [*OPTS, "-x", rules], [str(home / "bin" / "qmail-smtpd")],
                   env=env, binary=debian("tcpserver")) as srv:
        with smtplib.SMTP(srv.host, srv.port, timeout=30) as c:
            c.ehlo()
            assert not c.has_extn("auth")
            assert c.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0a\0b").decode())[0] == 538
            c.starttls(context=client_context())
            c.ehlo()
            assert c.has_extn("auth")


def test_starttls_throws_away_plaintext_sent_ahead(home, certificate):
    """CVE-2011-0411: commands pipelined after STARTTLS must not run inside TLS."""
    control(home, "servercert.pem", certificate)
    with server(home, debian("tcpserver")) as srv:
        with connect(srv.host, srv.port) as s:
            f = s.makefile("rb")
            assert f.readline().startswith(b"220 ")
            s.sendall(b"EHLO c\r\n")
            while not f.readline().startswith(b"250 "):
                pass
            s.sendall(b"STARTTLS\r\nMAIL FROM:<injected@x.example>\r\n")
            assert f.readline() == b"220 2.0.0 ready for tls\r\n"
            t = client_context().wrap_socket(s, server_hostname="mx.test.example")
            t.sendall(b"RCPT TO:<a@test.example>\r\nQUIT\r\n")
            out = read_all(t)
    assert out == b"503 MAIL first (#5.5.1)\r\n221 test.example\r\n"


def test_tls_handshake_failure_is_a_quiet_exit(home, certificate):
    control(home, "servercert.pem", certificate)
    with server(home, debian("tcpserver")) as srv:
        out = talk(srv.host, srv.port, b"EHLO c\r\nSTARTTLS\r\nthis is no TLS client hello\r\n")
        srv.wait_log("qmail-smtpd: TLS handshake failed")
    assert b"220 2.0.0 ready for tls\r\n" in out
    assert "Traceback" not in srv.log


def test_swaks_through_debian_tcpserver_with_and_without_tls(home, certificate):
    swaks = need_program("swaks")
    control(home, "servercert.pem", certificate)
    with server(home, debian("tcpserver")) as srv:
        for extra in ([], ["--tls"]):
            r = subprocess.run([swaks, "--server", srv.host, "--port", str(srv.port),
                                "--helo", "swaks.example", "--from", "s@x.example",
                                "--to", "a@test.example", "--header", "Subject: swaks",
                                "--body", "hello from swaks", *extra],
                               capture_output=True, timeout=60)
            assert r.returncode == 0, r.stdout.decode(errors="replace")
    messages = sorted(mess for mess, _ in queued(home).values())
    assert len(messages) == 2
    assert [b"with ESMTPS (TLSv1." in m for m in messages].count(True) == 1
    assert all(b"(HELO swaks.example) (127.0.0.1)" in m and b"\nhello from swaks\n" in m
               for m in messages)
    assert "Traceback" not in srv.log


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_client_and_ipv6_literal(home):
    """Over ::1, RCPT to [IPv6:::1] is this host: it becomes the localiphost."""
    control(home, "localiphost", "lip.example\n")
    control(home, "rcpthosts", "test.example\nlip.example\n")
    with server(home, host="::1") as srv:
        with smtplib.SMTP("::1", srv.port, timeout=30) as c:
            assert c.sendmail("s@x.example", ["box@[IPv6:::1]"], MESSAGE) == {}
    assert b"(::1)\n  by mx.test.example" in only_message(home)
    assert envelopes(home) == [b"Fs@x.example\0Tbox@lip.example\0"]


PARITY_SESSION = (
    b"EHLO parity.example\r\nMAIL FROM:<s@x.example>\r\nRCPT TO:<a@test.example>\r\n"
    b"RCPT TO:<b@elsewhere.example>\r\nDATA\r\nSubject: one\r\n\r\n..dot\r\n.\r\n"
    b"HELO again\r\nMAIL FROM:<>\r\nRCPT TO:<c@test.example>\r\nDATA\r\nSubject: two\r\n\r\n"
    b"bare\rcr\r\n.\r\nVRFY x\r\nBDAT 1\r\nMAIL FROM:<t@x.example>\r\nRCPT TO:<d@test.example>\r\n"
    b"DATA\r\nSubject: three\r\n\r\n.\r\nQUIT\r\n")


def normalise(out: bytes) -> bytes:
    return re.sub(rb"ok \d+ qp \d+", b"ok TIME qp PID", out)


def queue_contents(home: Path) -> list[tuple[bytes, bytes]]:
    date = re.compile(rb"\d{1,2} [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d -0000")
    return sorted((date.sub(b"DATE", mess.split(b"\n", 1)[1]), env.split(b"\0", 2)[2])
                  for mess, env in queued(home).values())


def test_qpy_tcpserver_warm_and_debian_tcpserver_exec_give_the_same_results(tmp_path, monkeypatch):
    from conftest import make_instance
    results = []
    for name, binary in (("qpy", None), ("debian", debian("tcpserver"))):
        home = qmail_behaviour(make_instance(tmp_path / name))
        monkeypatch.setenv("QMAILHOME", str(home))
        with server(home, binary) as srv:
            out = talk(srv.host, srv.port, PARITY_SESSION)
        assert "Traceback" not in srv.log and leftovers(home) == []
        results.append((normalise(out), queue_contents(home)))
    (qpy_out, qpy_queue), (deb_out, deb_queue) = results
    assert qpy_out == deb_out
    assert qpy_queue == deb_queue
    assert len(qpy_queue) == 2 and b"554 sorry, bare CR" in qpy_out


def test_client_vanishing_mid_data_leaves_nothing(home):
    with TCPServer(home, [*OPTS, "-v"], [str(home / "bin" / "qmail-smtpd")],
                   binary=debian("tcpserver")) as srv:
        with connect(srv.host, srv.port) as s:
            s.sendall(b"HELO x\r\nMAIL FROM:<s@x.example>\r\nRCPT TO:<a@test.example>\r\nDATA\r\n"
                      b"Subject: cut\r\n\r\n" + b"half a message\r\n" * 1000)
            f = s.makefile("rb")
            while (line := f.readline()) != b"354 go ahead\r\n":
                assert line, "the server closed before DATA's 354"     # never loop on EOF
            f.close()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # RST
        srv.wait_log("tcpserver: end ")
    assert "Traceback" not in srv.log
    assert queued(home) == {} and leftovers(home) == []


def tls_session(srv: TCPServer) -> ssl.SSLSocket:
    """Connect, EHLO, STARTTLS; the client's TLS socket."""
    sock = socket.create_connection((srv.host, srv.port), timeout=30)
    f = sock.makefile("rb")
    assert f.readline().startswith(b"220 ")
    sock.sendall(b"EHLO client.example\r\n")
    while not f.readline().startswith(b"250 "):
        pass
    sock.sendall(b"STARTTLS\r\n")
    assert f.readline().startswith(b"220 ")
    f.close()
    return client_context().wrap_socket(sock, server_hostname="mx.test.example")


@pytest.mark.parametrize("which", ["qpy", "debian"])
def test_quit_under_tls_ends_with_close_notify(home, certificate, which):
    """After QUIT the server shuts TLS down (Exim logs every ragged close as an error)."""
    control(home, "servercert.pem", certificate)
    with server(home, debian("tcpserver") if which == "debian" else None) as srv:
        tls = tls_session(srv)
        tls.sendall(b"QUIT\r\n")
        assert tls.recv(512).startswith(b"221 ")
        assert tls.recv(512) == b""     # a close_notify, not EOF in violation of protocol
        tls.unwrap().close()
    assert "Traceback" not in srv.log


def test_quit_under_tls_does_not_wait_long_for_a_silent_client(home, certificate):
    """A client that never answers the close_notify holds the server a few seconds at most."""
    control(home, "servercert.pem", certificate)
    with TCPServer(home, [*OPTS, "-v"], [str(home / "bin" / "qmail-smtpd")]) as srv:
        tls = tls_session(srv)
        tls.sendall(b"QUIT\r\n")
        assert tls.recv(512).startswith(b"221 ")
        start = time.monotonic()
        srv.wait_log("tcpserver: end ")           # while we hold the connection, silent
        assert time.monotonic() - start < smtpio.CLOSE_WAIT + 3
        tls.close()
    assert "Traceback" not in srv.log


def test_received_line_records_the_tls_version_and_cipher(home, certificate):
    control(home, "servercert.pem", certificate)
    with server(home) as srv:
        with smtplib.SMTP(srv.host, srv.port, local_hostname="client.example", timeout=30) as c:
            c.starttls(context=client_context())
            version, cipher = c.sock.version(), c.sock.cipher()[0]
            assert c.sendmail("a@x.example", ["b@test.example"], MESSAGE) == {}
    received = only_message(home).split(b"\n  by ", 1)[1].split(b";")[0]
    assert received == b"mx.test.example with ESMTPS (%s %s)" % (version.encode(), cipher.encode())
