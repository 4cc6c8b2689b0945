"""Bounce messages in qmail's QSBMF wording (docs/queue.md §8).

While a message is delivered, every permanent failure appends a block
``<recip>:\\n<report>\\n`` to bounce/<id> (``block``/``append``).  When every
recipient is finished, qmail-send turns the blocks into one bounce message
(``compose_head`` + the blocks + ``compose_middle`` + the original) and queues
it through qmail-queue (``inject``).  The wording is fixed: bounce parsers
match it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from qpy import addr, fdio, qmailq, received
from qpy.errors import TempFail

DOUBLE_BOUNCE_SENDER = b"#@[]"
VERP_TAIL = b"-@[]"
GIVING_UP = b"I'm not going to try again; this message has been in the queue too long.\n"
CHUNK = 65536


class InjectError(TempFail):
    """The bounce could not be queued now; qmail-send tries again later."""


class StartError(InjectError):
    """qmail-queue could not be started."""


@dataclass(frozen=True)
class Settings:
    """The controls a bounce needs: bouncefrom, bouncehost, doublebounceto@doublebouncehost."""

    bouncefrom: bytes = b"MAILER-DAEMON"
    bouncehost: bytes = b"bouncehost"
    doublebounceto: bytes = b"postmaster@doublebouncehost"
    maxbytes: int = 0       # bytes of the original message copied (whole lines); 0: all


def strip_vdom_prepend(recip: bytes, virtualdomains: dict[bytes, bytes]) -> bytes:
    """``pre-user@dom`` → ``user@dom`` when the virtualdomains entry for dom is ``pre``.

    Keys tried: the domain, each suffix starting at a ``.``, then the empty key;
    the first matching key decides (an empty ``pre`` stops the search).
    """
    at = recip.rfind(b"@")
    if at == -1:
        return recip
    for key in [*addr.domain_keys(recip[at + 1:].lower()), b""]:
        prepend = virtualdomains.get(key)
        if prepend is None:
            continue
        if prepend and recip.startswith(prepend + b"-"):
            return recip[len(prepend) + 1:]
        return recip
    return recip


def block(recip: bytes, report: bytes) -> bytes:
    """One bounce/<id> block: ``<recip>:\\n<report>\\n`` with inner blank lines turned into ``/``."""
    text = bytearray(b"<" + recip.replace(b"\n", b"_") + b">:\n" + report)
    if report and not report.endswith(b"\n"):
        text += b"\n"
    for pos in range(len(text) - 2, 0, -1):
        if text[pos] == 10 and text[pos - 1] == 10:
            text[pos] = 0x2F
    return bytes(text) + b"\n"


def append(path: str, data: bytes) -> None:
    """Append a block to bounce/<id> (created 0600); raises OSError."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fdio.write_all(fd, data)
    finally:
        os.close(fd)


def original_sender(info_sender: bytes) -> bytes:
    """The sender a bounce goes to: a VERP sender ``owner-@host-@[]`` becomes ``owner-@host``."""
    if info_sender.endswith(VERP_TAIL):
        return info_sender[:-len(VERP_TAIL)]
    return info_sender


def envelope(sender: bytes, settings: Settings) -> tuple[bytes, bytes] | None:
    """(envelope sender, recipient) of the bounce for a message from ``sender``.

    None for a triple bounce (the failed message was itself a double bounce).
    """
    if sender == DOUBLE_BOUNCE_SENDER:
        return None
    if not sender:
        return DOUBLE_BOUNCE_SENDER, settings.doublebounceto
    return b"", sender


def quote2(address: bytes) -> bytes:
    """qmail's quote2: quote the local part of an address if needed; empty stays empty."""
    return addr.quote(address) if address else b""


def compose_head(settings: Settings, recipient: bytes, double: bool, when: float | None = None) -> bytes:
    """Header and first paragraph, up to where the bounce/<id> blocks go."""
    head = (b"Date: " + received.date822(when) + b"\n"
            b"From: " + addr.quote_local(settings.bouncefrom) + b"@" + settings.bouncehost + b"\n"
            b"To: " + quote2(recipient) + b"\n"
            b"Subject: failure notice\n"
            b"\n"
            b"Hi. This is the qmail-send program at " + settings.bouncehost + b".\n")
    if double:
        return head + b"I tried to deliver a bounce message to this address, but the bounce bounced!\n\n"
    return head + (b"I'm afraid I wasn't able to deliver your message to the following addresses.\n"
                   b"This is a permanent error; I've given up. Sorry it didn't work out.\n\n")


def compose_middle(sender: bytes, double: bool) -> bytes:
    """The separator and the Return-Path line of the copy of the original."""
    sep = (b"--- Below this line is the original bounce.\n\n" if double
           else b"--- Below this line is a copy of the message.\n\n")
    return sep + b"Return-Path: <" + quote2(sender) + b">\n"


def _copy(job: qmailq.QueueJob, path: str, limit: int = 0) -> None:
    """Feed a file to the queue job, at most ``limit`` bytes of whole lines if ``limit``;
    OSError if it cannot be read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        left = limit or -1
        while left:
            chunk = os.read(fd, CHUNK if left < 0 else min(CHUNK, left))
            if not chunk:
                return
            if left > 0:
                left -= len(chunk)
                if not left and os.read(fd, 1):     # cut: end at the last whole line
                    chunk = chunk[:chunk.rfind(b"\n") + 1]
            job.put(chunk)
    finally:
        os.close(fd)


def inject(bounce_path: str, mess_path: str, info_sender: bytes, settings: Settings,
           when: float | None = None) -> int | None:
    """Queue the bounce for a message; return qmail-queue's pid, or None for a triple bounce.

    Raises InjectError (nothing queued) if a file cannot be read or qmail-queue fails.
    """
    sender = original_sender(info_sender)
    env = envelope(sender, settings)
    if env is None:
        return None
    bounce_sender, recipient = env
    double = not sender
    try:
        job = qmailq.start()
    except OSError as e:
        raise StartError("unable to start qmail-queue") from e
    try:
        job.put(compose_head(settings, recipient, double, when))
        _copy(job, bounce_path)
        job.put(compose_middle(sender, double))
        _copy(job, mess_path, settings.maxbytes)
    except OSError as e:
        job.abort()
        raise InjectError(f"unable to read {e.filename or 'a queue file'}") from e
    result = job.close(bounce_sender, [recipient])
    if result:
        raise InjectError(result)
    return job.pid

