"""qmail-qmqpc as a drop-in qmail-queue: QMQP to tcpserver + qmail-qmqpd, exit codes, failover."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import control
from qpy.auto import SPLIT
from tcpserve import TCPServer, ipv6_loopback

MESSAGE = b"From: a@example.test\nSubject: via qmqp\n\nbody\n\x00\xff\r\n.\n"
DATE = rb"[1-9]\d? (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d -0000"


def qmqpc(home: Path, message: bytes, envelope: bytes, env: dict[str, str] | None = None):
    """Run bin/qmail-qmqpc with the message on fd 0 and the envelope readable on fd 1."""
    r, w = os.pipe()
    os.write(w, envelope)
    os.close(w)
    try:
        full = dict(os.environ, QMAILHOME=str(home), **(env or {}))
        return subprocess.run([str(home / "bin" / "qmail-qmqpc")], input=message, stdout=r,
                              stderr=subprocess.PIPE, env=full, timeout=60)
    finally:
        os.close(r)


def queued(home: Path) -> list[tuple[bytes, bytes]]:
    out = []
    for todo in sorted((home / "queue" / "todo").iterdir()):
        mess = home / "queue" / "mess" / str(int(todo.name) % SPLIT) / todo.name
        out.append((mess.read_bytes(), todo.read_bytes()))
    return out


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_queued(home: Path, host: bytes) -> None:
    [(mess, todo)] = queued(home)
    head = re.match(rb"Received: \(qmail \d+ invoked by uid \d+\); " + DATE + rb"\n"
                    rb"Received: from unknown \(" + re.escape(host) + rb"\)\n  by lh with QMQP; " + DATE
                    + rb"\n", mess)
    assert head, mess
    assert mess[head.end():] == MESSAGE
    assert todo.split(b"\0", 2)[2] == b"Fs@example.test\0Ta@x.test\0Tb@y.test\0"


def test_round_trip_through_tcpserver_and_qmqpd(home):
    with TCPServer(home, ["-R", "-H", "-l", "lh"], ["qmail-qmqpd"]) as srv:
        control(home, "qmqpservers", f"127.0.0.1:{srv.port}\n")
        r = qmqpc(home, MESSAGE, b"Fs@example.test\0Ta@x.test\0Tb@y.test\0\0")
    assert (r.returncode, r.stderr) == (0, b"")
    check_queued(home, b"127.0.0.1")


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6_server_after_a_refused_one(home):
    with TCPServer(home, ["-R", "-H", "-l", "lh"], ["qmail-qmqpd"], host="::1") as srv:
        control(home, "qmqpservers", f"not-an-ip\n127.0.0.1:{closed_port()}\n[::1]:{srv.port}\n")
        r = qmqpc(home, MESSAGE, b"Fs@example.test\0Ta@x.test\0Tb@y.test\0\0")
    assert r.returncode == 0
    check_queued(home, b"::1")


def _complete(data: bytes) -> bool:
    """True once ``data`` holds a whole netstring."""
    m = re.match(rb"(\d+):", data)
    return m is not None and len(data) >= m.end() + int(m.group(1)) + 1


def fake_server(reply: bytes | None) -> tuple[socket.socket, list[bytes]]:
    """A one-connection QMQP server: records the request, answers ``reply`` (None: just closes)."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = lsock.accept()
        with conn:
            conn.settimeout(30)
            data = b""
            while not _complete(data):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            got.append(data)
            if reply is not None:
                conn.sendall(reply)
        lsock.close()
    threading.Thread(target=serve, daemon=True).start()
    return lsock, got


@pytest.mark.parametrize("reply,code", [(b"8:Kok 1 qp,", 0), (b"4:Zno!,", 71), (b"5:Dnope,", 31),
                                        (None, 74)])
def test_server_reply_decides_the_exit_code_and_request_is_exact(home, reply, code):
    lsock, got = fake_server(reply)
    control(home, "qmqpservers", f"127.0.0.1:{lsock.getsockname()[1]}\n")
    r = qmqpc(home, b"hi\n", b"Fs\0Tr1\0Tr2\0\0")
    assert r.returncode == code
    assert got == [b"20:3:hi\n,1:s,2:r1,2:r2,,"]


def test_configuration_and_connection_failures(home):
    envelope = b"Fs\0Tr\0\0"
    assert qmqpc(home, b"x", envelope).returncode == 55          # no control/qmqpservers
    control(home, "qmqpservers", "")
    assert qmqpc(home, b"x", envelope).returncode == 55
    control(home, "qmqpservers", f"127.0.0.1:{closed_port()}\n127.0.0.1:{closed_port()}\n")
    assert qmqpc(home, b"x", envelope).returncode == 73


@pytest.mark.parametrize("envelope", [b"Xs\0Tr\0\0", b"Fs\0Xr\0\0", b"Fs\0Tr\0", b"", b"\0"])
def test_envelope_format_errors_exit_91(home, envelope):
    control(home, "qmqpservers", f"127.0.0.1:{closed_port()}\n")
    assert qmqpc(home, b"x", envelope).returncode == 91


def test_as_QMAILQUEUE_for_our_queue_client(home, monkeypatch):
    """qpy.qmailq execs $QMAILQUEUE: mail queued by a program lands on the QMQP server's queue."""
    from qpy import qmailq
    with TCPServer(home, ["-R", "-H", "-l", "lh"], ["qmail-qmqpd"]) as srv:
        control(home, "qmqpservers", f"127.0.0.1:{srv.port}\n")
        monkeypatch.setenv("QMAILQUEUE", str(home / "bin" / "qmail-qmqpc"))
        assert qmailq.queue_message(MESSAGE, b"s@example.test", [b"a@x.test", b"b@y.test"]) == ""
        control(home, "qmqpservers", f"127.0.0.1:{closed_port()}\n")
        assert qmailq.queue_message(MESSAGE, b"s@example.test", [b"a@x.test"]) == (
            "Zconnection to mail server rejected (#4.4.1)")
    check_queued(home, b"127.0.0.1")
