"""qpy.smtpio on real pipes: command lines, flush rules, timeouts, and the DATA machine.

The DATA machine is checked against ``blast()``, a byte-at-a-time transcription
of qmail-smtpd.c's blast() (docs/smtpd.md, DATA), on hand-picked and on
generated inputs, with tiny read and block sizes so that every boundary case
(a CRLF split between reads, a line longer than a block) happens.
"""
from __future__ import annotations

import os
import random
import threading
import time

import pytest

from qpy import smtpio
from qpy.smtpio import Connection, Dropped, LineTooLong, StrayNewline, Timeout


def blast(data: bytes) -> tuple[str, bytes, int, bytes]:
    """qmail's blast(): (outcome, stored bytes, hops, unread input).

    outcome is "end", "straynewline" or "eof".
    """
    out = bytearray()
    hops, state, in_header, pos = 0, 1, True, 0
    maybe_x = maybe_y = maybe_z = True
    for i, ch in enumerate(data):
        c = bytes([ch])
        if in_header:
            if pos < 9:
                if c not in (b"delivered"[pos:pos + 1], b"DELIVERED"[pos:pos + 1]):
                    maybe_z = False
                if maybe_z and pos == 8:
                    hops += 1
                if pos < 8 and c not in (b"received"[pos:pos + 1], b"RECEIVED"[pos:pos + 1]):
                    maybe_x = False
                if maybe_x and pos == 7:
                    hops += 1
                if pos < 2 and c != b"\r\n"[pos:pos + 1]:
                    maybe_y = False
                if maybe_y and pos == 1:
                    in_header = False
                pos += 1
            if c == b"\n":
                pos, maybe_x, maybe_y, maybe_z = 0, True, True, True
        if state == 0:
            if c == b"\n":
                return "straynewline", bytes(out), hops, data[i + 1:]
            if c == b"\r":
                state = 4
                continue
        elif state == 1:
            if c == b"\n":
                return "straynewline", bytes(out), hops, data[i + 1:]
            if c == b".":
                state = 2
                continue
            if c == b"\r":
                state = 4
                continue
            state = 0
        elif state == 2:
            if c == b"\n":
                return "straynewline", bytes(out), hops, data[i + 1:]
            if c == b"\r":
                state = 3
                continue
            state = 0
        elif state == 3:
            if c == b"\n":
                return "end", bytes(out), hops, data[i + 1:]
            out += b".\r"
            if c == b"\r":
                state = 4
                continue
            state = 0
        elif state == 4:
            if c == b"\n":
                state = 1
            elif c != b"\r":
                out += b"\r"
                state = 0
        out += c
    return "eof", bytes(out), hops, b""


def feed(data: bytes) -> tuple[int, int]:
    """A pipe whose read end holds ``data`` (written by a thread) and then EOF."""
    r, w = os.pipe()

    def writer() -> None:
        try:
            os.write(w, data) if len(data) < 60000 else _write_all(w, data)
        finally:
            os.close(w)
    threading.Thread(target=writer, daemon=True).start()
    return r, w


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def run_data(data: bytes, read_size: int = 65536, block_size: int = smtpio.BLOCK,
             limit: int = 0):
    """Run read_data on ``data``: (outcome, stored, result, rest of input)."""
    r, _ = feed(data)
    out_r, out_w = os.pipe()
    conn = Connection(r, out_w, timeout=30, read_size=read_size)
    stored = bytearray()
    try:
        result = smtpio.read_data(conn, stored.extend, limit, block_size)
        outcome = "end"
    except StrayNewline:
        result, outcome = None, "straynewline"
    except Dropped:
        result, outcome = None, "eof"
    rest = b""
    if outcome == "end":
        try:
            while True:
                rest += conn.line() + b"\n"
        except Dropped:
            pass
    os.close(r)
    os.close(out_r)
    os.close(out_w)
    return outcome, bytes(stored), result, rest


def check_against_blast(data: bytes, read_size: int, block_size: int) -> None:
    want, stored, hops, rest = blast(data)
    outcome, got, result, got_rest = run_data(data, read_size, block_size)
    assert outcome == want, data
    if want != "end":
        return
    assert result.hops == hops, data
    assert result.bare_cr == (b"\r" in stored), data
    if not result.bare_cr:      # with a bare CR nothing more is passed on
        assert got == stored, data
    assert got_rest == rest[:rest.rfind(b"\n") + 1], data     # whole lines after the end


CASES = [
    b".\r\n",
    b"a\r\n.\r\n",
    b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n",
    b"..x\r\n...\r\n.\r\n",
    b"a\r.\r\nb\r\n.\r\n",
    b".\rx\r\n.\r\n",
    b".\r\r\n.\r\n",
    b"a\r\r\nb\r\n.\r\n",
    b"a\r\n.\r\r\n.\r\n",
    b"a\n.\r\n",
    b"a\r\n.\n",
    b"a\r\n\n.\r\n",
    b"a\r\n.\r\n\n",
    b"\n",
    b"a\r\n",
    b"Received: a\r\nreceived: b\r\nDELIVERED-To: c\r\nX: y\r\n\r\nReceived: no\r\n.\r\n",
    b"Deliver: no\r\nreceivedx\r\n.received\r\n \r\n\r\n.\r\n",
    b"\r\nReceived: body\r\n.\r\n",
    b"a\0b\xff\r\n.\r\n",
    b"x" * 100 + b"\r" + b"y" * 50 + b"\r\n.\r\n",
    b"x" * 100 + b"\r\n.\r\n",
    b"\r" * 40 + b"\r\n.\r\n",
    b".x" * 30 + b"\r\n..\r\n.\r\n",
]


@pytest.mark.parametrize("data", CASES)
@pytest.mark.parametrize("read_size,block_size", [(65536, smtpio.BLOCK), (1, 9), (3, 10), (7, 16)])
def test_read_data_matches_qmail_blast(data, read_size, block_size):
    check_against_blast(data, read_size, block_size)


def test_read_data_matches_qmail_blast_on_generated_input():
    rng = random.Random(4711)
    tokens = [b"\r", b"\n", b".", b"a", b"\r\n", b"\r\n.", b".\r", b"\r\n\r\n", b"Received: x",
              b"delivered", b"\0", b"\xc3\xa9", b"zzzzzzzzzzzz"]
    for _ in range(1500):
        body = b"".join(rng.choice(tokens) for _ in range(rng.randrange(0, 30)))
        tail = rng.choice([b"\r\n.\r\n", b".\r\n", b"\r\n.\r\nNEXT\r\n", b""])
        read_size, block_size = rng.choice([(1, 9), (2, 9), (5, 11), (4096, smtpio.BLOCK)])
        check_against_blast(body + tail, read_size, block_size)


def test_stored_message_has_lf_line_ends_and_unstuffed_dots():
    outcome, stored, result, rest = run_data(
        b"Received: a\r\nSubject: t\r\n\r\n..leading\r\nx.\r\n.\r\nMAIL FROM:<x>\r\n")
    assert outcome == "end"
    assert stored == b"Received: a\nSubject: t\n\n.leading\nx.\n"
    assert (result.hops, result.size, result.bare_cr, result.overflow) == (1, len(stored), False, False)
    assert rest == b"MAIL FROM:<x>\r\n"


def test_bare_cr_stops_the_sink_but_the_data_is_read_to_its_end():
    outcome, stored, result, rest = run_data(b"a\r\nb\rc\r\n" + b"d\r\n" * 10 + b".\r\nNOOP\r\n",
                                             read_size=4, block_size=9)
    assert outcome == "end" and result.bare_cr
    assert b"\r" not in stored and b"d" not in stored
    assert rest == b"NOOP\r\n"


def test_limit_counts_stored_bytes_and_overflow_stops_the_sink():
    body = b"..12345678\r\n"            # stores 10 bytes: ".12345678\n"
    outcome, stored, result, _ = run_data(body + b".\r\n", limit=10)
    assert (outcome, result.overflow, stored) == ("end", False, b".12345678\n")
    outcome, stored, result, _ = run_data(body + b"x\r\n.\r\n", limit=10)
    assert outcome == "end" and result.overflow and result.size == 12
    assert len(stored) <= 10


def test_ten_megabytes_without_a_newline_are_passed_on_in_bounded_pieces():
    pieces = []
    r, _ = feed(b"x" * 10_000_000 + b"\r\n.\r\n")
    out_r, out_w = os.pipe()
    conn = Connection(r, out_w, timeout=30)
    result = smtpio.read_data(conn, lambda b: pieces.append(len(b)))
    assert sum(pieces) == result.size == 10_000_001
    assert max(pieces) <= smtpio.BLOCK + smtpio.READ_SIZE
    for fd in (r, out_r, out_w):
        os.close(fd)


def test_lines_bare_lf_accepted_cr_kept_for_the_caller():
    r, _ = feed(b"HELO a\r\nNOOP\nx\r\r\n")
    conn = Connection(r, 1, timeout=30)
    assert [conn.line(), conn.line(), conn.line()] == [b"HELO a\r", b"NOOP", b"x\r\r"]
    with pytest.raises(Dropped):
        conn.line()
    os.close(r)


def test_overlong_line_raises_then_skip_line_resynchronises():
    r, _ = feed(b"A" * 5000 + b"\r\nNOOP\r\n")
    conn = Connection(r, 1, timeout=30, read_size=512)
    with pytest.raises(LineTooLong) as e:
        conn.line(limit=1000)
    assert e.value.partial
    conn.skip_line()
    assert conn.line() == b"NOOP\r"
    os.close(r)


def test_overlong_complete_line_is_consumed_whole():
    r, _ = feed(b"A" * 1001 + b"\nB" + b"x" * 999 + b"\n")
    conn = Connection(r, 1, timeout=30)
    with pytest.raises(LineTooLong) as e:
        conn.line(limit=1000)
    assert not e.value.partial
    assert conn.line(limit=1000) == b"B" + b"x" * 999
    os.close(r)


def test_output_waits_for_a_read_that_has_to_wait():
    """Replies to pipelined commands go out together (qmail's flush-before-read)."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    os.write(in_w, b"MAIL\r\nRCPT\r\n")
    conn = Connection(in_r, out_w, timeout=30)
    assert conn.line() == b"MAIL\r"
    conn.put(b"250 ok\r\n")
    assert conn.line() == b"RCPT\r"          # buffered: no read, no flush
    conn.put(b"250 ok\r\n")
    os.set_blocking(out_r, False)
    with pytest.raises(BlockingIOError):
        os.read(out_r, 100)
    os.close(in_w)
    with pytest.raises(Dropped):
        conn.line()                          # has to read: flushes first
    assert os.read(out_r, 100) == b"250 ok\r\n250 ok\r\n"
    for fd in (in_r, out_r, out_w):
        os.close(fd)


def test_silent_client_times_out():
    in_r, in_w = os.pipe()
    conn = Connection(in_r, 1, timeout=0.2)
    with pytest.raises(Timeout) as e:
        conn.line()
    assert e.value.kind == "read"
    os.close(in_r)
    os.close(in_w)


def trickle(fd: int, stop: threading.Event, interval: float = 0.05) -> None:
    """Write one byte every ``interval`` seconds until ``stop``."""
    def run() -> None:
        while not stop.is_set():
            try:
                os.write(fd, b"x")
            except OSError:
                return
            time.sleep(interval)
    threading.Thread(target=run, daemon=True).start()


def test_the_session_deadline_stops_a_trickle_the_read_timeout_never_would():
    in_r, in_w = os.pipe()
    conn = Connection(in_r, 1, timeout=5)
    conn.deadline = time.monotonic() + 0.5
    stop = threading.Event()
    trickle(in_w, stop)
    started = time.monotonic()
    with pytest.raises(Timeout) as e:
        conn.line()
    stop.set()
    assert e.value.kind == "session" and time.monotonic() - started >= 0.4
    assert conn.received > 0
    os.close(in_r)
    os.close(in_w)


def test_min_rate_stops_a_slow_data_phase_and_lets_a_fast_one_finish():
    in_r, in_w = os.pipe()
    conn = Connection(in_r, 1, timeout=0.5)
    stop = threading.Event()
    trickle(in_w, stop)                     # about 20 bytes a second
    with pytest.raises(Timeout) as e:
        smtpio.read_data(conn, lambda b: None, rate=1000)
    stop.set()
    assert e.value.kind == "rate" and conn._rate is None      # reset on the way out
    os.close(in_r)
    os.close(in_w)
    r, w = feed(b"x" * 100000 + b"\r\n.\r\n")
    conn = Connection(r, 1, timeout=5)
    assert smtpio.read_data(conn, lambda b: None, rate=1000).size == 100001
    os.close(r)


def test_command_lines_are_capped_at_4096_bytes():
    r, w = feed(b"x" * 4095 + b"\r\n" + b"y" * 4096 + b"\r\n" + b"z\n")
    conn = Connection(r, 1, timeout=5)
    assert conn.line() == b"x" * 4095 + b"\r"
    with pytest.raises(LineTooLong):
        conn.line()
    assert conn.line() == b"z"
    os.close(r)


def test_write_to_a_vanished_client_is_dropped():
    out_r, out_w = os.pipe()
    os.close(out_r)
    conn = Connection(0, out_w, timeout=5)
    conn.put(b"220 x\r\n")
    with pytest.raises(Dropped):
        conn.flush()
    os.close(out_w)
