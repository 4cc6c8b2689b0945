"""qmail-qmtpd under tcpserver, with a QMTP client written here: several messages per connection."""
from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path

import pytest

from conftest import control
from qpy.auto import SPLIT
from tcpserve import TCPServer, connect, read_all

DATE = rb"[1-9]\d? (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d -0000"
OK = re.compile(rb"Kok \d+ qp (\d+)")
NOT_RCPTHOST = b"Dsorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)"
BAD_RCPT = b"Dsorry, I can't handle that recipient (#5.1.3)"


def ns(data: bytes) -> bytes:
    return b"%d:%s," % (len(data), data)


def qmtp(text: bytes, sender: bytes, rcpts: list[bytes], crlf: bool = False) -> bytes:
    return ns((b"\r" if crlf else b"\n") + text) + ns(sender) + ns(b"".join(ns(r) for r in rcpts))


def replies(s: socket.socket, n: int) -> list[bytes]:
    """Read exactly ``n`` reply netstrings."""
    out = []
    buf = b""
    while len(out) < n:
        m = re.match(rb"(\d+):", buf)
        if m and len(buf) >= m.end() + int(m.group(1)) + 1:
            end = m.end() + int(m.group(1))
            assert buf[end:end + 1] == b","
            out.append(buf[m.end():end])
            buf = buf[end + 1:]
            continue
        chunk = s.recv(4096)
        assert chunk, (out, buf)
        buf += chunk
    assert buf == b""
    return out


def queued(home: Path) -> dict[int, tuple[bytes, bytes]]:
    """qp → (message after the two Received lines, envelope records after u/p)."""
    out = {}
    for todo in (home / "queue" / "todo").iterdir():
        mess = (home / "queue" / "mess" / str(int(todo.name) % SPLIT) / todo.name).read_bytes()
        env = todo.read_bytes()
        qp = int(re.match(rb"u\d+\0p(\d+)\0", env).group(1))
        head = re.match(rb"Received: \(qmail %d invoked by uid \d+\); " % qp + DATE + rb"\n"
                        rb"Received: from unknown \(127\.0\.0\.1\)\n  by lh with QMTP; " + DATE + rb"\n",
                        mess)
        assert head, mess
        out[qp] = (mess[head.end():], env.split(b"\0", 2)[2])
    return out


@pytest.fixture
def server(home):
    control(home, "rcpthosts", "test.example\n.sub.example\n")
    with TCPServer(home, ["-v", "-R", "-H", "-l", "lh"], ["qmail-qmtpd"]) as srv:
        yield srv


def test_several_messages_on_one_connection_with_per_recipient_replies(home, server):
    with connect(server.host, server.port) as s:
        s.sendall(qmtp(b"Subject: one\n\nbody\n", b"s@x.test",
                       [b"a@test.example", b"b@other.example", b"c@www.sub.example", b"n\0@test.example"]))
        first = replies(s, 4)
        s.sendall(qmtp(b"Subject: two\r\n\r\nline\r\nlone\rcr\r\r\nend\r", b"", [b"d@TEST.EXAMPLE"],
                       crlf=True))
        second = replies(s, 1)
        s.sendall(qmtp(b"third\n", b"x" * 1000, [b"e@test.example", b"f@nowhere.example"]))
        third = replies(s, 2)
        s.shutdown(socket.SHUT_WR)
        assert read_all(s) == b""
    log = server.wait_log(" end ")
    assert re.search(r"end \d+ status 0\n", log)
    assert OK.fullmatch(first[0]) and first[2] == first[0]
    assert first[1] == NOT_RCPTHOST and first[3] == BAD_RCPT
    assert OK.fullmatch(second[0])
    assert third == [b"Dunacceptable sender (#5.1.7)", NOT_RCPTHOST]
    q = queued(home)
    assert len(q) == 2
    assert q[int(OK.fullmatch(first[0]).group(1))] == (
        b"Subject: one\n\nbody\n", b"Fs@x.test\0Ta@test.example\0Tc@www.sub.example\0")
    assert q[int(OK.fullmatch(second[0]).group(1))] == (
        b"Subject: two\n\nline\nlone\rcr\r\nend\r", b"F\0Td@TEST.EXAMPLE\0")


def test_relayclient_from_the_rules_skips_rcpthosts_and_is_appended(home):
    control(home, "rcpthosts", "test.example\n")
    cdb = str(home / "rules.cdb")
    subprocess.run([str(home / "bin" / "tcprules"), cdb, cdb + ".tmp"],
                   input=b'127.0.0.1:allow,RELAYCLIENT="@relay.example"\n', check=True, timeout=30)
    with TCPServer(home, ["-R", "-H", "-l", "lh", "-x", cdb], ["qmail-qmtpd"]) as srv:
        with connect(srv.host, srv.port) as s:
            s.sendall(qmtp(b"x\n", b"s@x", [b"a@other.example", b"y" * 986]))
            got = replies(s, 2)
    assert OK.fullmatch(got[0]) and got[1] == BAD_RCPT
    [(text, env)] = queued(home).values()
    assert env == b"Fs@x\0Ta@other.example@relay.example\0"


@pytest.mark.parametrize("crlf", [False, True])
def test_databytes_limit(home, crlf):
    control(home, "databytes", "10\n")
    with TCPServer(home, ["-R", "-H", "-l", "lh"], ["qmail-qmtpd"]) as srv:
        with connect(srv.host, srv.port) as s:
            s.sendall(qmtp(b"0123456789", b"s@x", [b"a@test.example"], crlf))
            fits = replies(s, 1)
            s.sendall(qmtp(b"0123456789\r\n" if crlf else b"0123456789A", b"s@x", [b"a@test.example"],
                           crlf))
            over = replies(s, 1)
    assert OK.fullmatch(fits[0])
    assert over == [b"Dsorry, that message size exceeds my databytes limit (#5.3.4)"]
    assert len(queued(home)) == 1


@pytest.mark.parametrize("data", [b"0:,", b"2:xy,", b"2:\nx;", b"a:", b"2:\nx,1:s;",
                                  b"2:\nx,0:,5:9:abc,,"])
def test_protocol_errors_close_with_exit_100(home, server, data):
    with connect(server.host, server.port) as s:
        s.sendall(data)
        assert read_all(s) == b""
    assert re.search(r"end \d+ status 25600", server.wait_log(" end "))
    assert queued(home) == {}


TOO_MANY = b"Zsorry, too many recipients (#4.5.3)"


def test_recipient_1001_is_refused_for_now_and_the_message_keeps_1000(home, server):
    """A new instance's control/maxrcpt, 1000: past it QMTP's temporary Z (SMTP's 452 4.5.3)."""
    rcpts = [b"r%d@test.example" % i for i in range(1001)]
    with connect(server.host, server.port) as s:
        s.sendall(qmtp(b"x\n", b"s@x", rcpts))
        got = replies(s, 1001)
    assert all(OK.fullmatch(r) for r in got[:1000]) and got[1000] == TOO_MANY
    [(text, env)] = queued(home).values()
    assert env.count(b"\0T") == 1000 and b"\0Tr1000@" not in env


def test_recipient_flood_is_refused_in_order_and_not_stored(home, server):
    control(home, "maxrcpt", "2\n")
    with connect(server.host, server.port) as s:
        s.sendall(qmtp(b"x\n", b"s@x", [b"a@test.example", b"b@other.example", b"c@test.example",
                                        b"d@test.example", b"e@other.example", b"f@test.example"]))
        got = replies(s, 6)
        s.sendall(qmtp(b"y\n", b"s@x", [b"g%d@test.example" % i for i in range(200000)]))
        flood = replies(s, 200000)
    assert [OK.fullmatch(r) is not None for r in got] == [True, False, True, False, False, False]
    assert got[1] == got[4] == NOT_RCPTHOST and got[3] == got[5] == TOO_MANY
    assert all(OK.fullmatch(r) for r in flood[:2]) and flood[2:] == [TOO_MANY] * 199998
    envelopes = sorted(env for _, env in queued(home).values())
    assert envelopes == [b"Fs@x\0Ta@test.example\0Tc@test.example\0",
                         b"Fs@x\0Tg0@test.example\0Tg1@test.example\0"]


def test_srs_recipients_refused_unless_they_verify(home, server):
    """srs.test.example is not in rcpthosts: a valid SRS address there is accepted anyway;
    forged, expired and malformed ones get D with qpy.srs's reason."""
    import time
    from qpy import srs
    control(home, "srs_domain", "srs.test.example\n")
    control(home, "srs_secrets", "first secret\n")
    valid = srs.forward_sender(b"alice@orig.example")
    expired = srs.forward_sender(b"alice@orig.example", time.time() - 30 * 86400)
    rcpts = [valid, valid.replace(b"=alice@", b"=mallory@"), expired,
             b"SRS0=abcd@srs.test.example", b"SRS0=abcd@srs.other.example"]
    with connect(server.host, server.port) as s:
        s.sendall(qmtp(b"x\n", b"s@x", rcpts))
        got = replies(s, 5)
    assert OK.fullmatch(got[0])
    assert got[1:] == [b"Dforged SRS address (#5.7.1)", b"Dexpired SRS address (#5.7.1)",
                       b"Dmalformed SRS address (#5.1.1)", NOT_RCPTHOST]
    [(_, env)] = queued(home).values()
    assert env.count(b"\0T") == 1           # the queue writer may already have turned it back
