"""qpy.netstring: whole-buffer encode/decode and the budgeted fd Stream of the QMQP/QMTP servers."""
from __future__ import annotations

import os
import threading

import pytest

from qpy import netstring


def stream_of(data: bytes, budget: int | None = None) -> netstring.Stream:
    r, w = os.pipe()
    def feed() -> None:
        os.write(w, data)
        os.close(w)
    threading.Thread(target=feed).start()
    return netstring.Stream(r, budget)


def test_encode_and_decode_round_trip():
    assert netstring.encode(b"") == b"0:,"
    assert netstring.encode(b"hello, world") == b"12:hello, world,"
    assert netstring.decode(b"5:a\0b:c,rest") == (b"a\0b:c", b"rest")
    assert netstring.decode_all(b"1:a,0:,3:xyz,") == [b"a", b"", b"xyz"]
    with pytest.raises(netstring.ProtocolError):
        netstring.decode(b"")


@pytest.mark.parametrize("bad", [b":x,", b"3:ab", b"3:abc;", b"x:a,", b"-1:,", b"2:abc,"])
def test_decode_rejects_malformed(bad):
    with pytest.raises(netstring.ProtocolError):
        netstring.decode_all(bad)


def test_stream_reads_lengths_bytes_and_commas():
    s = stream_of(b"3:abc,10:0123456789,")
    assert s.length() == 3
    assert s.read(3) == b"abc"
    s.comma()
    assert s.length() == 10
    assert b"".join(s.chunks(10)) == b"0123456789"
    s.comma()
    with pytest.raises(netstring.Closed):
        s.byte()


def test_stream_errors():
    with pytest.raises(netstring.ProtocolError):
        stream_of(b"1x:").length()
    with pytest.raises(netstring.ProtocolError):
        s = stream_of(b"1:a;")
        s.length(), s.read(1), s.comma()
    with pytest.raises(netstring.TooLong):
        stream_of(b"9999999999:").length()
    assert stream_of(b"200000000:").length() == 200000000


def test_stream_budget_stops_reads_past_the_outer_netstring():
    s = stream_of(b"2:ab,", budget=4)
    assert s.length() == 2 and s.read(2) == b"ab"
    with pytest.raises(netstring.ProtocolError):
        s.comma()
    s = stream_of(b"5:abcde,", budget=100)
    s.budget = 0
    with pytest.raises(netstring.ProtocolError):
        s.byte()
