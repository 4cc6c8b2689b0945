"""qpy.smtpclient: reply parsing as smtpcode(), EHLO keywords, smuggling-proof DATA encoding."""
from __future__ import annotations

import socket
import threading

import pytest

from qpy import smtpclient
from qpy.smtpclient import Connection, DataEncoder, Dropped, PartialLine


def conn_with(server_bytes: bytes, close: bool = True, timeout: float = 5) -> Connection:
    """A Connection whose peer has sent ``server_bytes`` (then hung up if ``close``)."""
    a, b = socket.socketpair()
    b.sendall(server_bytes)
    if close:
        b.close()
    else:
        conn_with.keep = b   # keep the peer open
    return Connection(a, timeout)


def test_single_line_reply():
    r = conn_with(b"250 ok\r\n").read_reply()
    assert r == (250, b"250 ok\n")


def test_multi_line_reply_keeps_every_line_without_cr():
    c = conn_with(b"250-first\r\n250-second\r\n250 last\r\n220 next\r\n")
    assert c.read_reply() == (250, b"250-first\n250-second\n250 last\n")
    assert c.read_reply() == (220, b"220 next\n")


def test_nul_becomes_question_mark_and_bare_lf_ends_a_line():
    assert conn_with(b"550 a\0b\n").read_reply() == (550, b"550 a?b\n")


def test_text_is_cut_at_5000_bytes_but_the_reply_is_read_whole():
    long = b"550-" + b"x" * 6000 + b"\r\n550 end\r\n250 after\r\n"
    c = conn_with(long)
    r = c.read_reply()
    assert r.code == 550 and len(r.text) == 5000 and r.text.startswith(b"550-xxx")
    assert c.read_reply() == (250, b"250 after\n")


def test_garbage_reply_counts_as_temporary():
    assert conn_with(b"hello there\r\n").read_reply().code == 400


def test_eof_and_timeout_are_dropped():
    with pytest.raises(Dropped):
        conn_with(b"250-partial\r\n").read_reply()
    with pytest.raises(Dropped):
        conn_with(b"", close=False, timeout=0.2).read_reply()


def test_ehlo_keywords():
    reply = smtpclient.Reply(250, b"250-mx.test hi\n250-PIPELINING\n250-size 1000\n250 STARTTLS\n")
    assert smtpclient.ehlo_keywords(reply) == {b"PIPELINING": b"", b"SIZE": b"1000", b"STARTTLS": b""}


def test_command_is_sent_with_crlf():
    a, b = socket.socketpair()
    c = Connection(a, 5)
    b.sendall(b"250 fine\r\n")
    assert c.command(b"NOOP").code == 250
    assert b.recv(100) == b"NOOP\r\n"


# -- DATA encoding ------------------------------------------------------------------------

CASES = [
    (b"", b".\r\n"),
    (b"a\nb\n", b"a\r\nb\r\n.\r\n"),
    (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
    (b".\n", b"..\r\n.\r\n"),
    (b"..x\n.\n", b"...x\r\n..\r\n.\r\n"),
    (b"x\r.\n", b"x\r\n..\r\n.\r\n"),                  # the blast() caveat: CR split, then stuff
    (b"x\r.\r\n", b"x\r\n..\r\n.\r\n"),
    (b"a\r\r\nb\n", b"a\r\n\r\nb\r\n.\r\n"),            # lone CR then CRLF: two line ends
    (b"\r.\r\nMAIL FROM:<x>\n", b"\r\n..\r\nMAIL FROM:<x>\r\n.\r\n"),
    (b"a\n.\r\n.\n", b"a\r\n..\r\n..\r\n.\r\n"),
]


@pytest.mark.parametrize("message,wire", CASES)
def test_encoding(message, wire):
    assert smtpclient.encode(message) == wire


@pytest.mark.parametrize("message,wire", CASES)
def test_encoding_is_the_same_byte_by_byte(message, wire):
    enc = DataEncoder()
    out = b"".join(enc.feed(message[i:i + 1]) for i in range(len(message)))
    assert out + enc.finish() == wire


def test_no_stored_sequence_can_end_data_early():
    """Every short mix of CR, LF, '.' and 'x' ending in LF: exactly one terminator, at the end."""
    alphabet = [b"\r", b"\n", b".", b"x"]
    messages = [b""]
    for _ in range(6):
        messages = [m + a for m in messages for a in alphabet]
        for m in messages:
            if not m.endswith(b"\n"):
                continue
            wire = smtpclient.encode(m)
            assert (b"\r\n" + wire).find(b"\r\n.\r\n") == len(wire) - 3, m
            joined = wire[:-3].replace(b"\r\n", b"")
            assert b"\r" not in joined and b"\n" not in joined


@pytest.mark.parametrize("message", [b"abc", b"a\nb", b"a\n\r", b"x\r"])
def test_partial_final_line(message):
    enc = DataEncoder()
    enc.feed(message)
    with pytest.raises(PartialLine):
        enc.finish()


def test_connect_refused_and_ok():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    s = smtpclient.connect("127.0.0.1", port, 5)
    s.close()
    srv.close()
    with pytest.raises(OSError):
        smtpclient.connect("127.0.0.1", port, 5)


def test_starttls_discards_plaintext_sent_after_the_220(tmp_path):
    from smtpsink import make_cert
    import ssl
    cert, key = make_cert(tmp_path)
    a, b = socket.socketpair()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)

    def server():
        b.sendall(b"220 go\r\n250 injected\r\n")
        s = ctx.wrap_socket(b, server_side=True)
        s.sendall(b"251 real\r\n")
        s.recv(10)

    t = threading.Thread(target=server, daemon=True)
    t.start()
    c = Connection(a, 5)
    assert c.read_reply().code == 220
    c.starttls(smtpclient.tls_context())
    assert c.read_reply() == (251, b"251 real\n")
    c.close()
    t.join(5)
