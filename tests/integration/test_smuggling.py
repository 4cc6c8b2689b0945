"""SMTP smuggling and hostile input against qmail-smtpd over a real socket.

Each fake end-of-data sequence is sent inside a message, followed by a
complete second transaction with a forged sender, a real end of data and QUIT
(the SEC Consult 2023 attack).  Only ``\\r\\n.\\r\\n`` ends DATA, so the second
transaction must always stay message text: never a second message, never the
forged sender in the queue.  Sequences with a bare LF are refused with qmail's
451 and the connection is dropped; sequences with a bare CR are refused with
554 after the real end of data; the rest are accepted as one message whose
stored text holds no CR at all.

The server is Debian's ucspi-tcp tcpserver exec'ing bin/qmail-smtpd (with -v,
so each session's end and pid are in its log).
"""
from __future__ import annotations

import random
import re
import socket
from pathlib import Path

import pytest

from conftest import make_instance
from smtpdkit import CLEARED, leftovers, qmail_behaviour, queued
from tcpserve import TCPServer, connect, debian, read_all, talk

FAKE_ENDS = {   # sequence → expected final reply to the (single) DATA
    "lf.lf": (b"\n.\n", b"451 See"),
    "lf.crlf": (b"\n.\r\n", b"451 See"),
    "crlf.lf": (b"\r\n.\n", b"451 See"),
    "lf.cr": (b"\n.\r", b"451 See"),
    "lflf.lflf": (b"\n\n.\n\n", b"451 See"),
    "crlf.lfcrlf": (b"\r\n.\n\r\n", b"451 See"),
    "cr.cr": (b"\r.\r", b"554 sorry, bare CR"),
    "cr.crlf": (b"\r.\r\n", b"554 sorry, bare CR"),
    "cr.lf": (b"\r.\n", b"451 See"),
    "crlf.cr": (b"\r\n.\r", b"554 sorry, bare CR"),
    "crlf.crcrlf": (b"\r\n.\r\r\n", b"554 sorry, bare CR"),
    "crcrlf.crcrlf": (b"\r\r\n.\r\r\n", b"554 sorry, bare CR"),
    "crlfcr.crlf": (b"\r\n\r.\r\n", b"554 sorry, bare CR"),
    "crlf nul.crlf": (b"\r\n\x00.\r\n", b"250 ok"),
    "crlf.nul crlf": (b"\r\n.\x00\r\n", b"250 ok"),
    "crlf space.crlf": (b"\r\n .\r\n", b"250 ok"),
    "crlf..crlf": (b"\r\n..\r\n", b"250 ok"),
    "crlf.space crlf": (b"\r\n. \r\n", b"250 ok"),
    "crlf.tab crlf": (b"\r\n.\t\r\n", b"250 ok"),
    "nul.nul": (b"\x00.\x00", b"250 ok"),
    "crlf=2Ecrlf": (b"\r\n=2E\r\n", b"250 ok"),
}


@pytest.fixture(scope="module")
def smtpd(tmp_path_factory):
    """One instance and one Debian tcpserver running its qmail-smtpd, for the whole module."""
    home = qmail_behaviour(make_instance(Path(tmp_path_factory.mktemp("smuggle")) / "qmail"))
    mp = pytest.MonkeyPatch()
    for name in CLEARED:
        mp.delenv(name, raising=False)
    mp.setenv("QMAILHOME", str(home))
    with TCPServer(home, ["-v", "-R", "-H", "-l", "mx.test.example"],
                   [str(home / "bin" / "qmail-smtpd")], binary=debian("tcpserver")) as srv:
        yield home, srv
    mp.undo()
    assert "Traceback" not in srv.log


def by_sender(home: Path, tag: bytes) -> list[tuple[bytes, bytes]]:
    """Queued (mess, envelope) pairs whose envelope mentions ``tag``."""
    return [m for m in queued(home).values() if tag in m[1]]


@pytest.mark.parametrize("name", sorted(FAKE_ENDS))
def test_fake_end_of_data_never_starts_a_second_transaction(smtpd, name):
    home, srv = smtpd
    fake, expected = FAKE_ENDS[name]
    tag = b"%d" % sorted(FAKE_ENDS).index(name)
    smuggled = (b"MAIL FROM:<evil-" + tag + b"@x.example>\r\nRCPT TO:<victim-" + tag
                + b"@test.example>\r\nDATA\r\nFrom: <ceo@test.example>\r\n\r\nsmuggled\r\n")
    session = (b"EHLO attacker.example\r\nMAIL FROM:<legit-" + tag + b"@x.example>\r\n"
               b"RCPT TO:<rcpt-" + tag + b"@test.example>\r\nDATA\r\n"
               b"Subject: smuggle\r\n\r\nbody" + fake + smuggled + b"\r\n.\r\nQUIT\r\n")
    out = talk(srv.host, srv.port, session)
    replies = out.split(b"\r\n")
    data_at = replies.index(b"354 go ahead")
    after = [r for r in replies[data_at + 1:] if r]
    assert after[0].startswith(expected[:4]) and expected[4:] in after[0], out
    assert after[1:] in ([], [b"221 2.0.0 test.example"]), out     # nothing answered in between
    assert not any(r.startswith(b"354") for r in after)     # no second DATA was opened
    assert by_sender(home, b"evil-" + tag) == [] and by_sender(home, b"victim-" + tag) == []
    mine = by_sender(home, b"legit-" + tag)
    if expected.startswith(b"250"):
        (mess, envelope), = mine
        assert envelope.split(b"\0")[2:] == [b"Flegit-" + tag + b"@x.example",
                                             b"Trcpt-" + tag + b"@test.example", b""]
        assert b"\r" not in mess
        assert b"MAIL FROM:<evil-" + tag in mess        # the attack is message text
    else:
        assert mine == []
    assert leftovers(home) == []


def pid_of_session(srv: TCPServer, count: int) -> int:
    """The pid of the count-th session (tcpserver -v logs ``ok <pid> …``)."""
    log = srv.wait_log("tcpserver: ok ", count)
    return int(re.findall(r"tcpserver: ok (\d+) ", log)[count - 1])


def peak_memory_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))


def test_fifty_megabytes_without_a_newline_keep_memory_bounded(smtpd):
    home, srv = smtpd
    sessions = srv.log.count("tcpserver: ok ")
    with connect(srv.host, srv.port) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220 ")
        chunk = b"A" * (1 << 20)
        s.sendall(b"HELO x\r\nMAIL FROM:<")
        for _ in range(50):
            s.sendall(chunk)
        assert f.readline() == b"250 test.example\r\n"
        assert f.readline() == b"500 sorry, line too long (#5.5.2)\r\n"
        pid = pid_of_session(srv, sessions + 1)
        s.sendall(b"A\r\nNOOP\r\n")
        assert f.readline() == b"250 ok\r\n"
        peak = peak_memory_kb(pid)          # the session is still open
        s.sendall(b"QUIT\r\n")
        assert f.readline() == b"221 test.example\r\n"
        f.close()
    assert peak < 60 * 1024, f"qmail-smtpd peaked at {peak} kB for a 50 MB line"


def test_binary_garbage_gets_replies_not_tracebacks(smtpd):
    home, srv = smtpd
    rng = random.Random(2023)
    garbage = bytes(rng.randrange(256) for _ in range(200_000))
    before = len(queued(home))
    (home / "control" / "maxerrors").write_bytes(b"0\n")       # every line answered
    try:
        out = talk(srv.host, srv.port, b"HELO x\r\n" + garbage + b"\r\nQUIT\r\n")
    finally:
        (home / "control" / "maxerrors").unlink()
    lines = [line for line in out.split(b"\r\n") if line]
    assert lines[0].startswith(b"220 ") and lines[-1] == b"221 test.example"
    assert all(re.fullmatch(rb"\d\d\d[ -].*", line) for line in lines), lines[:20]
    # with the default limit the 20th error ends the session (its 421 may be lost to the
    # reset the unread garbage causes)
    lines = [line for line in exchange(srv, b"HELO x\r\n" + garbage).split(b"\r\n") if line]
    assert all(re.fullmatch(rb"\d\d\d[ -].*", line) for line in lines), lines[:20]
    assert len(lines) <= 2 + 20 + 1 and lines[-1][:3] in (b"421", b"500", b"502", b"250")
    assert len(queued(home)) == before and leftovers(home) == []


def exchange(srv: TCPServer, data: bytes) -> bytes:
    """Send ``data`` and read until the server closes; a reset ends the read too.

    A server that drops the connection (bare LF) while input is unread makes
    the kernel send a reset, which may swallow its last reply: that is TCP.
    """
    out = b""
    with connect(srv.host, srv.port) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(65536):
                out += chunk
        except (BrokenPipeError, ConnectionResetError):
            pass
    return out


@pytest.mark.parametrize("seed", range(6))
def test_garbage_inside_data_is_refused_whole(smtpd, seed):
    home, srv = smtpd
    rng = random.Random(seed)
    pieces = [b"\r\n", b"\r\n.", b".", b"\x00", b"a", b"\xff", b"\r"] + [b"\n"] * (seed % 2)
    body = b"x" + b"".join(rng.choice(pieces) for _ in range(50_000))
    while b"\r\n.\r\n" in body:     # only fake ends: a real one would end the data early
        body = body.replace(b"\r\n.\r\n", b"\r\n..\r\n")
    tag = b"garbage-%d@" % seed
    sessions = srv.log.count("tcpserver: ok ")
    out = exchange(srv, b"HELO x\r\nMAIL FROM:<" + tag + b"x.example>\r\n"
                   b"RCPT TO:<a@test.example>\r\nDATA\r\n" + body + b"\r\n.\r\nQUIT\r\n")
    srv.wait_log("tcpserver: end ", sessions + 1)
    after = out.split(b"354 go ahead\r\n", 1)[1]
    if seed % 2:        # bare LFs: 451 and drop (the reply may be lost to the reset)
        assert after in (b"", b"451 See https://cr.yp.to/docs/smtplf.html.\r\n")
    else:               # bare CRs: refused after the real end of data
        assert after == (b"554 sorry, bare CR in message data is not allowed (#5.6.0)\r\n"
                         b"221 test.example\r\n")
    assert by_sender(home, tag) == [] and leftovers(home) == []


def test_client_vanishing_at_every_stage_leaves_no_trace(smtpd):
    home, srv = smtpd
    before = len(queued(home))
    stages = [b"HELO x\r\n", b"MAIL FROM:<s@x.example>\r\n", b"RCPT TO:<a@test.example>\r\n",
              b"DATA\r\n", b"Subject: half\r\n\r\nhalf", b"\r\n", b"\r\n."]
    sent = b""
    for stage in stages:
        sent += stage
        with connect(srv.host, srv.port) as s:
            s.sendall(sent)
            s.shutdown(socket.SHUT_WR)
            out = read_all(s)
        assert out.endswith(b"\r\n")
        assert all(re.fullmatch(rb"\d\d\d[ -].*", line) for line in out.split(b"\r\n")[:-1])
    srv.wait_log("tcpserver: end ", srv.log.count("tcpserver: ok "))
    assert len(queued(home)) == before and leftovers(home) == []
    assert "Traceback" not in srv.log
