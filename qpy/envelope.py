"""text0 envelopes: the records qmail-queue reads on fd 1 and writes to intd/todo.

Input to qmail-queue: ``F<sender>\\0`` ``T<rcpt>\\0``... ``\\0``.  Queue files hold
``u<uid>\\0p<pid>\\0F<sender>\\0T<rcpt>\\0``... without the terminating empty record.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from qpy.errors import FormatError

MAX_ADDR = 1002  # bytes an address may hold before its NUL (qmail-queue)


class EnvelopeError(FormatError):
    """The envelope is not F…\\0 T…\\0 … \\0."""


class AddressTooLong(EnvelopeError):
    """An address is longer than MAX_ADDR bytes."""


class EnvelopeTruncated(EnvelopeError):
    """EOF before the terminating empty record."""


@dataclass
class Envelope:
    """A sender and its recipients."""

    sender: bytes
    recipients: list[bytes] = field(default_factory=list)

    def encode(self) -> bytes:
        """Return the qmail-queue input form, with the terminating NUL."""
        return encode(self.sender, self.recipients)


def encode(sender: bytes, recipients: list[bytes]) -> bytes:
    """Build ``F<sender>\\0T<r>\\0…\\0``."""
    parts = [b"F" + sender + b"\0"]
    parts.extend(b"T" + r + b"\0" for r in recipients)
    parts.append(b"\0")
    return b"".join(parts)


def decode(data: bytes) -> Envelope:
    """Parse qmail-queue's input.  Checks in qmail-queue's order of reading."""
    pos = 0
    sender: bytes | None = None
    recipients: list[bytes] = []
    while True:
        end = data.find(b"\0", pos)
        record = data[pos:] if end == -1 else data[pos:end]
        if sender is None:
            if not record:
                if end == -1:
                    raise EnvelopeTruncated("envelope ended early")
                raise EnvelopeError("envelope has no sender")
            if record[:1] != b"F":
                raise EnvelopeError("envelope does not start with F")
        elif record and record[:1] != b"T":
            raise EnvelopeError("recipient record does not start with T")
        if len(record) - 1 > MAX_ADDR:
            raise AddressTooLong("address too long")
        if end == -1:
            raise EnvelopeTruncated("envelope ended early")
        if sender is None:
            sender = record[1:]
        elif not record:
            return Envelope(sender, recipients)
        else:
            recipients.append(record[1:])
        pos = end + 1


def records(data: bytes) -> list[bytes]:
    """Split a text0 buffer into its records (the part after the last NUL is dropped)."""
    parts = data.split(b"\0")
    return parts[:-1]
