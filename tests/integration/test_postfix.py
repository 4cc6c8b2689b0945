"""Postfix from Debian as the peer MTA, in both directions.

qpy → Postfix: qmail-remote (alone, and under qmail-start/qmail-rspawn) delivers to a
private Postfix instance whose virtual agent writes a Maildir; the message is read back
with mailbox.Maildir and must end with exactly the bytes qpy sent.
Postfix → qpy: Postfix relays (relayhost = [127.0.0.1]:port) to qpy's tcpserver +
qmail-smtpd; qmail-send delivers to a local user's Maildir.
"""
from __future__ import annotations

import mailbox
import os
import re
import signal
import smtplib
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import control, need_program, need_root, run
from postfix import Postfix, free_port
from smtpsink import make_cert
from qpy import qmailq, queuedir

# 8-bit text, dots at line starts, a 990-byte line, a line that is just a dot.
BODY = (b"Return-Path is not here.\n" + b".starts with a dot\n" + b"..two dots\n" + b".\n"
        + "caf\u00e9 \u00fcber na\u00efve \u2603\n".encode() + bytes(range(0xA0, 0x100)) + b"\n"
        + b"L" * 990 + b"\n" + b"last line\n")
MSG = (b"From: sender@qpy.test\nTo: user@pf.test\nSubject: interop\n"
       b"Date: Tue, 1 Jul 2025 12:00:00 +0000\nMessage-ID: <interop.1@qpy.test>\n"
       b"MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n"
       b"\n" + BODY)


def need_postfix() -> None:
    need_root()
    need_program("postfix")


@pytest.fixture(scope="module")
def shared_postfix():
    """One plain Postfix for the qpy → Postfix tests (starting one takes seconds)."""
    need_postfix()
    pf = Postfix().start()
    yield pf
    pf.cleanup()


@pytest.fixture
def pf(shared_postfix):
    """The shared Postfix with an empty Maildir."""
    box = shared_postfix.mail / shared_postfix.user
    if box.exists():
        mailbox.Maildir(str(box), factory=None, create=False).clear()
    return shared_postfix


@pytest.fixture
def postfix():
    need_postfix()
    started: list[Postfix] = []

    def start(**kw) -> Postfix:
        pf = Postfix(**kw)
        started.append(pf)
        return pf.start()
    yield start
    for pf in started:
        pf.cleanup()


def route_to(home: Path, pf: Postfix) -> None:
    control(home, "smtproutes", f"{pf.domain}:127.0.0.1:{pf.port}\n")


def remote(home: Path, rcpts: list[str], message: bytes = MSG) -> list[bytes]:
    r = run(home, "qmail-remote", ["pf.test", "sender@qpy.test", *rcpts], input=message)
    assert r.returncode == 0 and r.stderr == b""
    return r.stdout[:-1].split(b"\0")


def trace_headers(delivered: bytes, sent: bytes) -> bytes:
    """What Postfix put in front of the message; the rest must be the message itself."""
    assert delivered.endswith(sent), delivered
    return delivered[:-len(sent)]


# -- qpy → Postfix ---------------------------------------------------------------------------

def test_qmail_remote_delivers_byte_identical(home, pf):
    route_to(home, pf)
    recs = remote(home, ["user@pf.test"])
    assert recs[0] == b"r"
    assert re.fullmatch(rb"K127\.0\.0\.1 accepted message\.\nRemote host said: 250 2\.0\.0 Ok: "
                        rb"queued as \w+\n", recs[1]), recs
    (delivered,) = pf.wait_for_messages(1)
    head = trace_headers(delivered, MSG)
    assert head.startswith(b"Return-Path: <sender@qpy.test>\n")
    assert b"Delivered-To: user@pf.test\n" in head
    assert b"\tby postfix.test (Postfix) with ESMTP id " in head
    assert b"from test.example (localhost [127.0.0.1])" in head     # our EHLO name
    box = pf.maildir()
    (key,) = box.keys()
    assert box.get_bytes(key) == delivered


def test_unknown_postfix_user_is_a_permanent_recipient_failure(home, pf):
    route_to(home, pf)
    recs = remote(home, ["nobody-here@pf.test", "user@pf.test"])
    assert re.fullmatch(rb"h127\.0\.0\.1 does not like recipient\.\nRemote host said: 550 5\.1\.1 "
                        rb"<nobody-here@pf\.test>: Recipient address rejected: .*\n", recs[0]), recs
    assert recs[1] == b"r" and recs[2].startswith(b"K127.0.0.1 accepted message.")
    assert len(pf.wait_for_messages(1)) == 1


def test_starttls_with_postfix(home, postfix, tmp_path):
    cert, key = make_cert(tmp_path)
    os.chmod(tmp_path, 0o755)
    pf = postfix(tls=(cert, key))
    route_to(home, pf)
    assert remote(home, ["user@pf.test"])[1].startswith(b"K127.0.0.1 accepted")
    (delivered,) = pf.wait_for_messages(1)
    head = trace_headers(delivered, MSG)
    assert b"with ESMTPS id " in head and b"(using TLS" in head


def test_qmail_send_rspawn_remote_to_postfix(home, pf, tmp_path):
    """The whole outbound chain: qmail-queue → qmail-send → qmail-rspawn → qmail-remote → Postfix."""
    route_to(home, pf)
    with Daemons(home, tmp_path) as d:
        assert qmailq.queue_message(MSG, b"sender@qpy.test", [b"user@pf.test"]) == ""
        d.wait_log(r"^delivery \d+: success: 127\.0\.0\.1_accepted_message\./Remote_host_said:_250_")
        d.wait_log(r"^end msg ")
    (delivered,) = pf.wait_for_messages(1)
    head = trace_headers(delivered, MSG)
    assert head.startswith(b"Return-Path: <sender@qpy.test>\n")
    assert head.endswith(b"\nReceived: (qmail %d invoked by uid %d); " % (0, os.getuid())) or \
        re.search(rb"\nReceived: \(qmail \d+ invoked by uid \d+\); [^\n]+\n$", head), head


# -- Postfix → qpy ------------------------------------------------------------------------

class Daemons:
    """qmail-start (send, lspawn, rspawn, clean) with its log in a file."""

    def __init__(self, home: Path, work: Path) -> None:
        self.logpath = work / "send.log"
        self.logf = open(self.logpath, "ab")
        self.proc = subprocess.Popen(
            [str(home / "bin" / "qmail-start"), "./Maildir/"], stdin=subprocess.DEVNULL,
            stdout=self.logf, stderr=subprocess.DEVNULL, start_new_session=True,
            env=dict(os.environ, QMAILHOME=str(home)))

    def log(self) -> list[str]:
        return self.logpath.read_bytes().decode("latin-1").splitlines()

    def wait_log(self, pattern: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(re.search(pattern, line) for line in self.log()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"no {pattern!r} in the log:\n" + "\n".join(self.log()))
            time.sleep(0.05)

    def __enter__(self) -> "Daemons":
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.logf.close()


class SMTPServer:
    """qpy's tcpserver running qmail-smtpd on 127.0.0.1:port."""

    def __init__(self, home: Path, port: int) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            [str(home / "bin" / "tcpserver"), "-HR", "127.0.0.1", str(port),
             str(home / "bin" / "qmail-smtpd")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, env=dict(os.environ, QMAILHOME=str(home)))
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                return
            except OSError:
                assert time.monotonic() < deadline and self.proc.poll() is None, "tcpserver did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


def add_user(home: Path, name: str) -> Path:
    """A users/assign entry for ``name`` whose home holds Maildir/."""
    user_home = home.parent / "homes" / name
    for d in ("Maildir/tmp", "Maildir/new", "Maildir/cur"):
        (user_home / d).mkdir(parents=True, exist_ok=True)
    (home / "users" / "assign").write_text(
        f"={name}:{name}:{os.getuid()}:{os.getgid()}:{user_home}:::\n.\n")
    assert run(home, "qmail-newu").returncode == 0
    return user_home


def test_postfix_relays_to_qpy(home, postfix, tmp_path):
    joe = add_user(home, "joe")
    port = free_port()
    smtpd = SMTPServer(home, port)
    try:
        pf = postfix(relayhost=("127.0.0.1", port))
        message = MSG.replace(b"To: user@pf.test", b"To: joe@test.example")
        with Daemons(home, tmp_path) as d:
            with smtplib.SMTP("127.0.0.1", pf.port, timeout=30) as client:
                client.sendmail("sender@qpy.test", ["joe@test.example"], message.replace(b"\n", b"\r\n"))
            d.wait_log(r"^delivery \d+: success: did_1\+0\+0/")
    finally:
        smtpd.stop()
    box = mailbox.Maildir(str(joe / "Maildir"), factory=None, create=False)
    (key,) = box.keys()
    delivered = box.get_bytes(key)
    assert delivered.startswith(b"Return-Path: <sender@qpy.test>\nDelivered-To: joe@test.example\n")
    assert b"\tby postfix.test (Postfix) with ESMTP id " in delivered   # Postfix's own Received line
    assert delivered.endswith(BODY)
    # Postfix adds nothing to a message with Date and Message-ID: the original header follows its trace
    assert message.split(b"\n\n", 1)[0] in delivered
    assert queuedir.scan_split(str(home / "queue"), "mess") == []
