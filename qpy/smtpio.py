"""Server-side SMTP I/O: timed reads, command lines, the DATA state machine, replies.

``Connection`` is both directions of one SMTP session: fd 0 in and fd 1 out (as
under tcpserver or inetd), or one TLS socket after STARTTLS.  Input is buffered;
output is buffered and flushed before every read that has to wait for the
client (qmail's substdio rule), so replies to pipelined commands go out
together.  Every read and write has the per-read timeout; reads also stop at the
session's ``deadline`` and, while ``min_rate()`` is set (DATA), when the client
has fallen behind a minimum number of bytes a second (``Timeout.kind`` says which).

``read_data()`` is qmail-smtpd's blast(): it reads the DATA body, un-stuffs and
stores it with LF line ends, and counts hops, exactly as docs/smtpd.md says:

- only ``\\r\\n.\\r\\n`` (or ``.\\r\\n`` right after the 354) ends the data;
- ``\\r\\n`` → ``\\n``; a line starting with ``.`` loses the dot;
- any bare ``\\n`` (not after ``\\r``) raises ``StrayNewline``: the caller answers
  ``451 See https://cr.yp.to/docs/smtplf.html.`` and drops the connection;
- hops = header lines (until the first empty line) starting with ``received``
  or ``delivered``, any case.

BARE CR (our decision, beyond qmail).  qmail stores a ``\\r`` that is not
followed by ``\\n`` as is.  A stored line such as ``x\\r.`` is harmless to our
own qmail-remote (it dot-stuffs every line it creates by splitting at a CR),
but any later hop that reads a bare CR as a line end (some SMTP servers, some
programs fed by a .qmail) would see ``x`` and ``.`` — a smuggled end of data.
So a bare CR is never stored: ``read_data()`` reports it (``bare_cr``), stops
passing data to the sink, and keeps reading to the real end of the data, so
the session stays in step; qmail-smtpd then refuses the message with a
permanent ``554`` and queues nothing.  RFC 5321 §2.3.8 forbids bare CR in
SMTP, and sendmail 8.18 refuses it the same way.

The body is processed a block at a time (all complete lines in the buffer, or
a part of an overlong line), with bytes methods doing the per-byte work, so a
10 MB message costs a few milliseconds, not a Python loop per byte.
"""
from __future__ import annotations

import os
import select
import time
from typing import Any, Callable

from qpy.errors import PermFail, TempFail

READ_SIZE = 65536
BLOCK = 65536                # DATA: longest part of a line handled at once
LINE_MAX = 4096              # longest command line: RFC 5321's 512 octets, raised for the
                             # extensions (RFC 4954's AUTH initial response, MAIL parameters)
CLOSE_WAIT = 5.0             # after QUIT: how long the client's close_notify is waited for


class Dropped(TempFail):
    """The client went away: EOF, a read or write error, or a write timeout."""


class Timeout(TempFail):
    """The client was too slow: ``kind`` is "read" (nothing within the per-read timeout),
    "session" (the session's deadline passed) or "rate" (DATA slower than the minimum rate)."""

    def __init__(self, kind: str = "read") -> None:
        super().__init__(f"timeout ({kind})")
        self.kind = kind


class LineTooLong(PermFail):
    """A command line exceeded the limit; what was read of it is discarded.

    ``partial`` is True when the rest of the line is still to come (skip_line()).
    """

    def __init__(self, partial: bool) -> None:
        super().__init__("Command line too long. (#5.5.2)")
        self.partial = partial


class StrayNewline(TempFail):
    """A bare LF inside DATA."""


class Connection:
    """One SMTP session's byte streams with buffering and timeouts."""

    def __init__(self, rfd: int = 0, wfd: int = 1, timeout: float = 1200,
                 read_size: int = READ_SIZE) -> None:
        self.rfd, self.wfd = rfd, wfd
        self.timeout = timeout
        self.read_size = read_size
        self.sock: Any = None        # the TLS socket once start_tls() succeeded
        self.deadline: float | None = None   # time.monotonic() at which every read stops
        self.received = 0            # bytes read so far
        self._rate: tuple[float, int, int] | None = None   # min_rate(): since, received, bytes/s
        self._in = bytearray()
        self._pos = 0
        self._out: list[bytes] = []
        self._wpoll = select.poll()       # made once: a session polls before every I/O
        self._wpoll.register(wfd, select.POLLOUT)
        self._rpoll = select.poll()
        self._rpoll.register(rfd, select.POLLIN)

    # -- output ------------------------------------------------------------------

    def put(self, data: bytes) -> None:
        """Buffer output."""
        self._out.append(data)

    def flush(self) -> None:
        """Write all buffered output; raise Dropped if the client cannot take it in time."""
        if not self._out:
            return
        data = b"".join(self._out)
        self._out.clear()
        if self.sock is not None:
            try:
                self.sock.settimeout(self.timeout)
                self.sock.sendall(data)
            except OSError as e:
                raise Dropped(str(e)) from e
            return
        view = memoryview(data)
        poller = self._wpoll
        while view:
            try:
                if not poller.poll(self.timeout * 1000):
                    raise Dropped("write timeout")
                view = view[os.write(self.wfd, view):]
            except OSError as e:
                raise Dropped(str(e)) from e

    # -- input -------------------------------------------------------------------

    def min_rate(self, rate: int) -> None:
        """From now on reads must keep up with ``rate`` bytes a second (after a first
        timeout's grace, as Postfix's smtpd_min_data_rate); 0 ends it."""
        self._rate = (time.monotonic(), self.received, rate) if rate > 0 else None

    def _wait(self) -> tuple[float, str]:
        """How long the next read may wait, and which limit that is."""
        wait, kind = float(self.timeout), "read"
        now = time.monotonic()
        if self.deadline is not None and self.deadline - now < wait:
            wait, kind = self.deadline - now, "session"
        if self._rate is not None and self.received > self._rate[1]:   # silent: a read timeout
            since, base, rate = self._rate
            end = since + self.timeout + (self.received - base) / rate
            if end - now < wait:
                wait, kind = end - now, "rate"
        return max(wait, 0.0), kind

    def _fill(self) -> None:
        """Flush, then wait for more input and append it to the buffer."""
        self.flush()
        if self._pos:
            del self._in[:self._pos]
            self._pos = 0
        wait, kind = self._wait()
        if wait <= 0:
            raise Timeout(kind)
        if self.sock is not None:
            try:
                self.sock.settimeout(wait)
                chunk = self.sock.recv(self.read_size)
            except TimeoutError as e:
                raise Timeout(kind) from e
            except OSError as e:
                raise Dropped(str(e)) from e
        else:
            poller = self._rpoll
            try:
                if not poller.poll(wait * 1000):
                    raise Timeout(kind)
                chunk = os.read(self.rfd, self.read_size)
            except OSError as e:
                raise Dropped(str(e)) from e
        if not chunk:
            raise Dropped("end of input")
        self.received += len(chunk)
        self._in += chunk

    def line(self, limit: int = LINE_MAX) -> bytes:
        """Return the next line without its ``\\n`` (a ``\\r`` before it is kept).

        A line longer than ``limit`` bytes raises LineTooLong; if its end has not
        arrived yet (``partial``) the caller answers and then calls ``skip_line()``.
        """
        scanned = 0          # bytes after _pos already searched (survives compaction)
        while True:
            end = self._in.find(b"\n", self._pos + scanned)
            if end >= 0:
                start, self._pos = self._pos, end + 1
                if end - start > limit:
                    raise LineTooLong(partial=False)
                return bytes(self._in[start:end])
            scanned = len(self._in) - self._pos
            if scanned > limit:
                self._pos = len(self._in)
                raise LineTooLong(partial=True)
            self._fill()

    def skip_line(self) -> None:
        """Discard input up to and including the next ``\\n``."""
        while True:
            end = self._in.find(b"\n", self._pos)
            if end >= 0:
                self._pos = end + 1
                return
            self._pos = len(self._in)
            self._fill()

    def block(self, limit: int = BLOCK) -> bytes:
        """Return every complete buffered line, or a part of a line.

        The part is returned only when at least ``limit`` bytes without ``\\n`` are
        buffered; it never ends in a ``\\r`` that could be the start of ``\\r\\n``
        (that byte stays buffered), so a returned part holds only bare CRs.
        """
        while True:
            end = self._in.rfind(b"\n", self._pos)
            if end >= 0:
                data = bytes(self._in[self._pos:end + 1])
                self._pos = end + 1
                return data
            size = len(self._in) - self._pos
            if size >= limit:
                end = len(self._in) - (1 if self._in[-1] == 13 else 0)
                data = bytes(self._in[self._pos:end])
                self._pos = end
                return data
            self._fill()

    def unread(self, count: int) -> None:
        """Give back the last ``count`` bytes of what ``block()`` returned."""
        self._pos -= count

    def discard_input(self) -> None:
        """Forget buffered input (plaintext sent ahead of a TLS handshake)."""
        del self._in[:]
        self._pos = 0

    # -- TLS ---------------------------------------------------------------------

    def start_tls(self, context: Any) -> None:
        """Flush, forget buffered plaintext, and run the TLS handshake on fd 0's socket.

        Raises Dropped if the handshake fails or times out.
        """
        import socket
        self.flush()
        self.discard_input()
        try:
            raw = socket.socket(fileno=os.dup(self.rfd))
            raw.settimeout(self.timeout)
            self.sock = context.wrap_socket(raw, server_side=True)
        except (OSError, ValueError) as e:
            raise Dropped(f"TLS handshake failed: {e}") from e

    def tls_description(self) -> bytes:
        """``TLSv1.3 TLS_AES_256_GCM_SHA384`` under TLS, else b""."""
        if self.sock is None:
            return b""
        cipher = self.sock.cipher()
        return f"{self.sock.version()} {cipher[0] if cipher else ''}".encode()

    def end_tls(self) -> None:
        """Flush, then shut TLS down (RFC 8446 §6.1): our close_notify, and the client's
        waited for at most CLOSE_WAIT seconds, so a client that never answers costs no
        more.  Nothing without TLS; failures are ignored (the session is over)."""
        if self.sock is None:
            return
        self.flush()
        try:
            self.sock.settimeout(min(self.timeout, CLOSE_WAIT))
            self.sock.unwrap()
        except (OSError, ValueError):
            pass


class DataResult:
    """What read_data() learned about a message body."""

    def __init__(self) -> None:
        self.hops = 0           # Received:/Delivered- header lines
        self.size = 0           # bytes stored: after CRLF → LF and un-stuffing
        self.bare_cr = False    # a CR not followed by LF was seen
        self.overflow = False   # more than the byte limit

    def refusal(self, maxhops: int) -> bytes | None:
        """qmail-smtpd's reply for a message that must not be queued (its order: hops,
        bare CR, size); None if it may be."""
        if self.hops >= maxhops:
            return b"554 too many hops, this message is looping (#5.4.6)"
        if self.bare_cr:
            return b"554 sorry, bare CR in message data is not allowed (#5.6.0)"
        if self.overflow:
            return b"552 sorry, that message size exceeds my databytes limit (#5.3.4)"
        return None


def read_data(conn: Connection, sink: Callable[[bytes], None], limit: int = 0,
              block_size: int = BLOCK, rate: int = 0) -> DataResult:
    """Read DATA up to its end; pass the stored bytes to ``sink``; return what was seen.

    ``sink`` stops being called once the message is known to be unacceptable
    (a bare CR, or more than ``limit`` bytes when ``limit`` > 0), but the data is
    still read to its end.  ``block_size`` bounds the part of an overlong line
    held at once (at least 9: a hop line is recognised by its first 9 bytes).
    ``rate`` > 0: the client must keep up that many bytes a second (min_rate()).
    Raises StrayNewline, Dropped or Timeout.
    """
    conn.min_rate(rate)
    try:
        return _read_data(conn, sink, limit, block_size)
    finally:
        conn.min_rate(0)


def _read_data(conn: Connection, sink: Callable[[bytes], None], limit: int,
               block_size: int) -> DataResult:
    """read_data() without the rate."""
    result = DataResult()
    at_start = True          # the next byte begins a line
    in_header = True
    while True:
        block = conn.block(block_size)
        if at_start and block.startswith(b".\r\n"):
            conn.unread(len(block) - 3)
            return result
        end = block.find(b"\r\n.\r\n")
        if end >= 0:
            conn.unread(len(block) - end - 5)
            block = block[:end + 2]
        crlf = block.count(b"\r\n")
        if block.count(b"\n") != crlf:
            raise StrayNewline()
        if block.count(b"\r") != crlf:
            result.bare_cr = True
        if in_header:
            in_header = _count_hops(block, at_start, result)
        text = _unstuff(block, at_start).replace(b"\r\n", b"\n")
        result.size += len(text)
        if limit and result.size > limit:
            result.overflow = True
        if not (result.bare_cr or result.overflow):
            sink(text)
        if end >= 0:
            return result
        at_start = block.endswith(b"\n")


def _count_hops(block: bytes, at_start: bool, result: DataResult) -> bool:
    """Count hop lines in the header part of a block; return False once the header ended."""
    if at_start and block.startswith(b"\r\n"):
        return False
    blank = block.find(b"\n\r\n")
    head = (block if blank < 0 else block[:blank + 1]).lower()
    result.hops += head.count(b"\nreceived") + head.count(b"\ndelivered")
    if at_start:
        result.hops += head.startswith(b"received") + head.startswith(b"delivered")
    return blank < 0


def _unstuff(block: bytes, at_start: bool) -> bytes:
    """Remove the dot from lines starting with ``.``.

    (qmail keeps the dot of a line starting ``.\r``; such a line always holds a
    bare CR, and a block with a bare CR never reaches the sink.)
    """
    if at_start and block[:1] == b".":
        block = block[1:]
    return block.replace(b"\r\n.", b"\r\n")
