"""Netstrings (``<decimal length>:<bytes>,``) for QMQP and QMTP (docs/protocols.md §7).

``encode``/``decode`` work on whole buffers (the client side).  ``Stream`` reads
a netstring stream from a file descriptor byte-budgeted the way qmail-qmqpd and
qmail-qmtpd do: a length cut short or bad is a ``ProtocolError`` (exit 100), a
length over the limit is ``TooLong`` (exit 111), and the peer closing is ``Closed``.
"""
from __future__ import annotations

import os

from qpy.errors import PermFail, TempFail

MAX_LENGTH = 200000000   # qmail's getlen(): a longer length is a resource failure
CHUNK = 65536


class ProtocolError(PermFail):
    """The peer broke the netstring format."""


class TooLong(TempFail):
    """A netstring length beyond what we accept."""


class Closed(TempFail):
    """The peer closed the connection (or a read failed)."""


def encode(data: bytes) -> bytes:
    """``data`` as a netstring."""
    return b"%d:%s," % (len(data), data)


def decode(buf: bytes) -> tuple[bytes, bytes]:
    """Split the first netstring off ``buf``: (its contents, the rest).

    Raises ProtocolError if ``buf`` does not start with a complete netstring.
    """
    colon = buf.find(b":")
    digits = buf[:colon]
    if colon <= 0 or not digits.isdigit() or len(digits) > 10:
        raise ProtocolError("bad netstring length")
    n = int(digits)
    end = colon + 1 + n
    if len(buf) < end + 1 or buf[end:end + 1] != b",":
        raise ProtocolError("netstring cut short")
    return buf[colon + 1:end], buf[end + 1:]


def decode_all(buf: bytes) -> list[bytes]:
    """Every netstring of a buffer made only of netstrings."""
    out = []
    while buf:
        item, buf = decode(buf)
        out.append(item)
    return out


class Stream:
    """Buffered reads from an fd, with an optional budget of bytes still allowed.

    ``budget`` None means unlimited; reading past a budget is a ProtocolError
    (qmail-qmqpd's ``bytesleft``).  ``before_read`` runs before each blocking
    read (qmail-qmtpd flushes its replies there).
    """

    def __init__(self, fd: int, budget: int | None = None, before_read=None) -> None:
        self.fd = fd
        self.budget = budget
        self.before_read = before_read
        self._buf = b""
        self._pos = 0

    def _fill(self) -> None:
        if self.before_read is not None:
            self.before_read()
        try:
            data = os.read(self.fd, CHUNK)
        except OSError:
            raise Closed()
        if not data:
            raise Closed()
        self._buf, self._pos = data, 0

    def _spend(self, n: int) -> None:
        if self.budget is not None:
            if n > self.budget:
                raise ProtocolError("read beyond the netstring")
            self.budget -= n

    def byte(self) -> int:
        """One byte."""
        self._spend(1)
        if self._pos >= len(self._buf):
            self._fill()
        ch = self._buf[self._pos]
        self._pos += 1
        return ch

    def chunks(self, n: int):
        """Yield the next ``n`` bytes in pieces, as they arrive."""
        self._spend(n)
        while n > 0:
            if self._pos >= len(self._buf):
                self._fill()
            piece = self._buf[self._pos:self._pos + n]
            self._pos += len(piece)
            n -= len(piece)
            yield piece

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes."""
        return b"".join(self.chunks(n))

    def length(self) -> int:
        """A netstring length up to its ``:``; non-digits are a ProtocolError."""
        n = 0
        digits = 0
        while True:
            ch = self.byte()
            if ch == 0x3A and digits:
                return n
            if not 0x30 <= ch <= 0x39:
                raise ProtocolError("bad netstring length")
            if n > MAX_LENGTH:
                raise TooLong("netstring too long")
            n = n * 10 + ch - 0x30
            digits += 1

    def comma(self) -> None:
        """The ``,`` that ends a netstring."""
        if self.byte() != 0x2C:
            raise ProtocolError("netstring without its comma")
