"""Bounce messages in qmail's QSBMF wording (docs/queue.md §8).

While a message is delivered, every permanent failure appends a block
``<recip>:\\n<report>\\n`` to bounce/<id> (``block``/``append``).  When every
recipient is finished, qmail-send turns the blocks into one bounce message and
queues it through qmail-queue (``inject``): with control/bounceformat ``qsbmf``
qmail's plain text (``compose_head`` + the blocks + ``compose_middle`` + the
original), by default the RFC 3464 report of ``qpy.dsn`` whose first part is the
same text up to the separator (``compose_dsn``).  The wording is fixed: bounce
parsers match it.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from qpy import addr, dsn, fdio, qmailq, received, submit
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
    """The controls a bounce needs: bouncefrom, bouncehost, doublebounceto@doublebouncehost,
    bouncemaxbytes, bounceformat."""

    bouncefrom: bytes = b"MAILER-DAEMON"
    bouncehost: bytes = b"bouncehost"
    doublebounceto: bytes = b"postmaster@doublebouncehost"
    maxbytes: int = 0       # bytes of the original message copied (whole lines); 0: all
    dsn: bool = True        # RFC 3464 multipart/report (qpy.dsn); False: qmail's plain text


def dsn_format(value: bytes | None) -> bool:
    """control/bounceformat: ``qsbmf`` (any case) is qmail's plain text, anything else DSN."""
    return (value or b"").strip().lower() != b"qsbmf"


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


def header(settings: Settings, recipient: bytes, when: float | None = None) -> bytes:
    """The bounce's Date, From, To and Subject lines."""
    return (b"Date: " + received.date822(when) + b"\n"
            b"From: " + addr.quote_local(settings.bouncefrom) + b"@" + settings.bouncehost + b"\n"
            b"To: " + quote2(recipient) + b"\n"
            b"Subject: failure notice\n")


def intro(settings: Settings, double: bool) -> bytes:
    """The first paragraph, up to where the bounce/<id> blocks go."""
    head = b"Hi. This is the qmail-send program at " + settings.bouncehost + b".\n"
    if double:
        return head + b"I tried to deliver a bounce message to this address, but the bounce bounced!\n\n"
    return head + (b"I'm afraid I wasn't able to deliver your message to the following addresses.\n"
                   b"This is a permanent error; I've given up. Sorry it didn't work out.\n\n")


def separator(double: bool) -> bytes:
    """The line that ends the recipient paragraphs (QSBMF's break paragraph)."""
    return (b"--- Below this line is the original bounce.\n" if double
            else b"--- Below this line is a copy of the message.\n")


def return_path(sender: bytes) -> bytes:
    """The Return-Path line the copy of the original starts with."""
    return b"Return-Path: <" + quote2(sender) + b">\n"


def compose_head(settings: Settings, recipient: bytes, double: bool, when: float | None = None) -> bytes:
    """Header and first paragraph of the QSBMF bounce, up to where the blocks go."""
    return header(settings, recipient, when) + b"\n" + intro(settings, double)


def compose_middle(sender: bytes, double: bool) -> bytes:
    """The separator and the Return-Path line of the copy of the original."""
    return separator(double) + b"\n" + return_path(sender)


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


def _copy_start(job: qmailq.QueueJob, path: str, length: int) -> None:
    """Feed the first ``length`` bytes of a file to the queue job; OSError if unreadable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        while length > 0:
            chunk = os.read(fd, min(CHUNK, length))
            if not chunk:
                return
            length -= len(chunk)
            job.put(chunk)
    finally:
        os.close(fd)


def compose_dsn(bounce_path: str, mess_path: str, sender: bytes, recipient: bytes,
                settings: Settings, when: float, arrival: float | None = None) -> dsn.Bounce:
    """The RFC 3464 bounce around qmail's text (qpy.dsn); OSError if a file is unreadable.

    Arrival-Date is ``arrival`` (the message's birth), else mess/<id>'s mtime;
    Last-Attempt-Date is bounce/<id>'s mtime, when its last block was appended.
    """
    double = not sender
    blocks, last = fdio.read_file(bounce_path, with_mtime=True)
    if arrival is None:
        arrival = os.stat(mess_path).st_mtime
    expired = GIVING_UP.rstrip(b"\n")
    failures = [dsn.failure(recip, report, expired in report)
                for recip, report in dsn.blocks(blocks)]
    status = dsn.delivery_status(settings.bouncehost, arrival, last, failures)
    text = intro(settings, double) + blocks + separator(double)
    return dsn.compose(header(settings, recipient, when), text, status,
                       dsn.is_global(failures), return_path(sender), mess_path,
                       settings.maxbytes, settings.bouncehost, when)


def inject(bounce_path: str, mess_path: str, info_sender: bytes, settings: Settings,
           when: float | None = None, arrival: float | None = None) -> int | None:
    """Queue the bounce for a message; return qmail-queue's pid, or None for a triple bounce.

    ``arrival`` is the message's birth (info/<id>'s mtime) for the DSN's Arrival-Date.
    Raises InjectError (nothing queued) if a file cannot be read or qmail-queue fails.
    """
    sender = original_sender(info_sender)
    env = envelope(sender, settings)
    if env is None:
        return None
    bounce_sender, recipient = env
    double = not sender
    when = time.time() if when is None else when
    report = None
    if settings.dsn:
        try:
            report = compose_dsn(bounce_path, mess_path, sender, recipient, settings, when,
                                 arrival)
        except OSError as e:
            raise InjectError(f"unable to read {e.filename or 'a queue file'}") from e
    try:
        job = qmailq.start(submit.SIGN)     # our own mail: DKIM-signed as bouncehost's domain
    except OSError as e:
        raise StartError("unable to start qmail-queue") from e
    try:
        if report is not None:
            job.put(report.head)
            _copy_start(job, mess_path, report.length)
            job.put(report.tail)
        else:
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

