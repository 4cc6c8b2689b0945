"""Bounces as RFC 3464 delivery status notifications (docs/queue.md §8, its qpy: note).

A DSN bounce is ``multipart/report; report-type=delivery-status`` (RFC 6522) with
three parts: qmail's QSBMF text up to and including its ``--- Below this line``
line, byte for byte, so QSBMF parsers still find the recipient paragraphs and the
break paragraph that ends them; ``message/delivery-status`` (RFC 3464), one
per-recipient group for each bounce/<id> block, its fields read from the block's
report text (``failure``); and the original message after qmail's ``Return-Path:``
line: ``message/rfc822`` when all of it fits in bouncemaxbytes (0: no limit), else
its header lines that fit, as ``text/rfc822-headers`` (``survey``).  Where a part's
content is not ASCII, RFC 6533's ``message/global-delivery-status``,
``message/global`` and ``message/global-headers`` replace them.

The boundary is random and checked against every byte the bounce carries, the
original included, so it cannot occur in the message it delimits.  Lines end in LF
(queue files); nothing here writes the queue: ``qpy.bounce.inject`` does.
"""
from __future__ import annotations

import ipaddress
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from qpy.received import date822

CHUNK = 65536
CANDIDATES = 4              # boundaries tried per look at the original
MAX_DIAGNOSTIC = 2000       # bytes of report text in a Diagnostic-Code field
MAX_WORD = 900              # bytes of one unbreakable word there (a line stays under 998)
FOLD = 78
UNKNOWN_STATUS = b"5.0.0"
EXPIRED_STATUS = b"5.4.7"   # RFC 3463 "delivery time expired"

_SAID = b"Remote host said: "
_REPLY_LINE = re.compile(rb"\d{3}[ -]")
_REPLY_STATUS = re.compile(rb"^\d{3}[ -](5\.\d{1,3}\.\d{1,3})(?!\.?\d)")
_HASH_STATUS = re.compile(rb"#(5\.\d{1,3}\.\d{1,3})(?!\.?\d)")
# qmail-remote's report lines that name the server's address (qpy/programs/qmail_remote.py)
_REMOTE = re.compile(rb"^(?:Connected to (\S+) but "
                     rb"|(\S+) (?:does not like recipient|failed on DATA command"
                     rb"|failed after I sent the message)\."
                     rb"|Giving up on (\S+)\.$)", re.M)


@dataclass(frozen=True)
class Failure:
    """One per-recipient group: what a bounce/<id> block says about its recipient."""

    recipient: bytes
    status: bytes = UNKNOWN_STATUS
    remote_mta: bytes | None = None             # the server's address, from the report
    diagnostic: tuple[bytes, bytes] = (b"x-unix", b"")    # (type, text)


def blocks(text: bytes) -> list[tuple[bytes, bytes]]:
    """bounce/<id> as (recipient, report) pairs; text that starts no block joins the last."""
    out: list[tuple[bytes, bytes]] = []
    for chunk in text.split(b"\n\n"):
        chunk = chunk.lstrip(b"\n")
        if not chunk:
            continue
        first, _, report = chunk.partition(b"\n")
        if first.startswith(b"<") and first.endswith(b">:"):
            out.append((first[1:-2], report))
        elif out:
            out[-1] = (out[-1][0], out[-1][1] + b"\n/" + chunk)
    return out


def remote_reply(report: bytes) -> list[bytes]:
    """The lines of the SMTP reply after ``Remote host said:``; [] if there is none."""
    at = report.find(_SAID)
    if at == -1:
        return []
    first, *rest = report[at + len(_SAID):].split(b"\n")
    lines = [first] if first.strip() else []
    for line in rest:
        if not (lines and _REPLY_LINE.match(line)):
            break
        lines.append(line)
    return lines


def remote_host(report: bytes) -> bytes | None:
    """The address qmail-remote's report names as the server's, if it names one."""
    for m in _REMOTE.finditer(report):
        host = next(g for g in m.groups() if g is not None)
        try:
            ipaddress.ip_address(host.decode("ascii"))
        except ValueError:
            continue
        return host
    return None


def status(report: bytes, reply: list[bytes], expired: bool) -> bytes:
    """The RFC 3463 code: the server's 5.x.y, else the first ``#5.x.y``, else 5.4.7 for a
    message given up for age, else 5.0.0."""
    for line in reply:
        m = _REPLY_STATUS.match(line)
        if m:
            return m.group(1)
    m = _HASH_STATUS.search(report)
    if m:
        return m.group(1)
    return EXPIRED_STATUS if expired else UNKNOWN_STATUS


def failure(recipient: bytes, report: bytes, expired: bool = False) -> Failure:
    """The group for one block: an SMTP server's reply is ``smtp;`` text, anything else
    (qmail-local, a program, qmail-remote's own words) the report as ``x-unix;`` text."""
    reply = remote_reply(report)
    if reply:
        diagnostic = (b"smtp", b" ".join(line.strip() for line in reply))
    else:
        diagnostic = (b"x-unix", b" ".join(line.strip() for line in report.split(b"\n")
                                           if line.strip()))
    return Failure(recipient, status(report, reply, expired), remote_host(report), diagnostic)


# -- field text ---------------------------------------------------------------------------

def clean(text: bytes, utf8: bool) -> bytes:
    """Printable field text: whitespace → space, control bytes and (unless ``utf8``) every
    non-ASCII byte → ``?``; in ``utf8`` text an invalid sequence → ``?``."""
    s = text.decode("utf-8" if utf8 else "ascii", "replace")
    out = []
    for c in s:
        if c.isspace():
            out.append(" ")
        elif c == "\ufffd" or not c.isprintable() or (not utf8 and not c.isascii()):
            out.append("?")
        else:
            out.append(c)
    return "".join(out).encode("utf-8")


def _cut(word: bytes, size: int) -> bytes:
    """At most ``size`` bytes of ``word``, not splitting a UTF-8 sequence."""
    if len(word) <= size:
        return word
    while size and word[size] & 0xC0 == 0x80:
        size -= 1
    return word[:size]


def fold(name: bytes, value: bytes) -> bytes:
    """``name: value\\n`` folded at spaces before column FOLD where it can be."""
    line = name + b":"
    out = b""
    first = True
    for word in _cut(value, MAX_DIAGNOSTIC).split(b" "):
        if not word:
            continue
        word = _cut(word, MAX_WORD)
        if len(line) + 1 + len(word) > FOLD and not first:
            out += line + b"\n"
            line = b""
        line += b" " + word
        first = False
    return out + line + b"\n"


def address_field(name: bytes, address: bytes) -> bytes:
    """``rfc822; addr`` for ASCII, RFC 6533's ``utf-8; addr`` (unitext) otherwise."""
    if address.isascii():
        return name + b": rfc822; " + clean(address, False) + b"\n"
    return name + b": utf-8; " + clean(address, True) + b"\n"


def is_global(failures: list[Failure]) -> bool:
    """Does the report need message/global-delivery-status (RFC 6533)?"""
    return not all(f.recipient.isascii() and f.diagnostic[1].isascii() for f in failures)


def delivery_status(reporting_mta: bytes, arrival: float, last_attempt: float,
                    failures: list[Failure]) -> bytes:
    """The message/delivery-status body: per-message fields, then one group per failure."""
    utf8 = is_global(failures)
    out = (b"Reporting-MTA: dns; " + clean(reporting_mta, False) + b"\n"
           b"Arrival-Date: " + date822(arrival) + b"\n")
    for f in failures:
        out += (b"\n" + address_field(b"Final-Recipient", f.recipient)
                + b"Action: failed\n"
                b"Status: " + f.status + b"\n")
        if f.remote_mta is not None:
            out += b"Remote-MTA: dns; " + f.remote_mta + b"\n"
        kind, text = f.diagnostic
        if text:
            out += fold(b"Diagnostic-Code", kind + b"; " + clean(text, utf8))
        out += b"Last-Attempt-Date: " + date822(last_attempt) + b"\n"
    return out


# -- the original ---------------------------------------------------------------------------

@dataclass
class Scan:
    """What one pass over the start of a file saw."""

    header_len: int | None = None   # bytes of header lines (the blank line excluded)
    last_nl: int = 0                # bytes up to the last newline seen
    eightbit: bool = False
    found: set[bytes] = field(default_factory=set)


def scan(fd: int, length: int, candidates: list[bytes]) -> Scan:
    """Read ``length`` bytes from ``fd``'s offset: header end, 8-bit bytes, which
    candidates occur (also across chunk edges).  OSError on trouble."""
    s = Scan()
    keep = max(len(c) for c in candidates) - 1
    tail = b""
    pos = 0
    while pos < length:
        chunk = os.read(fd, min(CHUNK, length - pos))
        if not chunk:
            break
        window = tail + chunk
        s.found.update(c for c in candidates if c in window)
        if s.header_len is None:
            if pos == 0 and chunk.startswith(b"\n"):
                s.header_len = 0
            else:
                i = (tail[-1:] + chunk).find(b"\n\n")
                if i != -1:
                    s.header_len = pos - len(tail[-1:]) + i + 1
        s.eightbit = s.eightbit or not chunk.isascii()
        nl = chunk.rfind(b"\n")
        if nl != -1:
            s.last_nl = pos + nl + 1
        tail = window[-keep:]
        pos += len(chunk)
    return s


@dataclass(frozen=True)
class Original:
    """How much of mess/<id> the bounce carries, and how it is labelled."""

    length: int         # bytes copied from the start of the file
    whole: bool         # the whole message, else its header lines only
    eightbit: bool
    found: frozenset[bytes]


def survey(path: str, maxbytes: int, candidates: list[bytes]) -> Original:
    """The whole message if it fits in ``maxbytes`` (0: any size), else the header lines
    that fit; OSError if it cannot be read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if not maxbytes or size <= maxbytes:
            s = scan(fd, size, candidates)
            return Original(size, True, s.eightbit, frozenset(s.found))
        first = scan(fd, maxbytes, candidates)
        length = first.header_len if first.header_len is not None else first.last_nl
        os.lseek(fd, 0, os.SEEK_SET)
        s = scan(fd, length, candidates)
        return Original(length, False, s.eightbit, frozenset(s.found))
    finally:
        os.close(fd)


def original_type(whole: bool, eightbit: bool) -> bytes:
    """The third part's type: the whole message or its header, RFC 6533's if 8-bit."""
    if whole:
        return b"message/global" if eightbit else b"message/rfc822"
    return b"message/global-headers" if eightbit else b"text/rfc822-headers"


# -- the message ----------------------------------------------------------------------------

def part_header(content_type: bytes, eightbit: bool) -> bytes:
    """A body part's header lines (8-bit content says so)."""
    cte = b"Content-Transfer-Encoding: 8bit\n" if eightbit else b""
    return b"Content-Type: " + content_type + b"\n" + cte


def new_boundary() -> bytes:
    """A random boundary; ``=_`` cannot occur in quoted-printable or base64 text."""
    return b"qpy=_" + secrets.token_hex(16).encode("ascii")


def message_id(host: bytes, when: float) -> bytes:
    """``Message-ID: <YYYYMMDDhhmmss.TOKEN.qmail@host>``: qmail-inject's form with a random
    token where it has the pid (one qmail-send makes many bounces a second)."""
    t = time.gmtime(when)
    stamp = b"%d%02d%02d%02d%02d%02d" % (t.tm_year, t.tm_mon, t.tm_mday,
                                         t.tm_hour, t.tm_min, t.tm_sec)
    token = secrets.token_hex(8).encode("ascii")
    return b"Message-ID: <" + stamp + b"." + token + b".qmail@" + host + b">\n"


@dataclass(frozen=True)
class Bounce:
    """The bounce as bytes around the copy of the original."""

    head: bytes         # header, the text and report parts, the third part's header
    length: int         # then this many bytes from the start of mess/<id>
    tail: bytes         # then the closing delimiter


def compose(header: bytes, text: bytes, status_body: bytes, status_global: bool,
            prefix: bytes, mess_path: str, maxbytes: int, host: bytes, when: float,
            fresh: Callable[[], bytes] = new_boundary) -> Bounce:
    """The bounce: ``header`` (Date … Subject lines), qmail's ``text``, the report,
    ``prefix`` (qmail's Return-Path line) + the original; OSError if mess is unreadable.
    ``fresh`` makes boundary candidates; the first one nothing carried contains is used."""
    own = text + status_body + prefix + header
    while True:
        candidates = [fresh() for _ in range(CANDIDATES)]
        orig = survey(mess_path, maxbytes, candidates)
        free = [c for c in candidates if c not in orig.found and c not in own]
        if free:
            break
    boundary = free[0]
    text_8bit = not text.isascii()
    orig_8bit = orig.eightbit or not prefix.isascii()
    eightbit = text_8bit or status_global or orig_8bit
    charset = b"utf-8" if text_8bit else b"us-ascii"
    status_type = (b"message/global-delivery-status" if status_global
                   else b"message/delivery-status")
    head = (header
            + message_id(host, when)
            + b"MIME-Version: 1.0\n"
            b"Content-Type: multipart/report; report-type=delivery-status;\n"
            b"\tboundary=\"" + boundary + b"\"\n"
            + (b"Content-Transfer-Encoding: 8bit\n" if eightbit else b"")
            + b"\n--" + boundary + b"\n"
            + part_header(b"text/plain; charset=" + charset, text_8bit) + b"\n"
            + text
            + b"\n--" + boundary + b"\n"
            + part_header(status_type, status_global) + b"\n"
            + status_body
            + b"\n--" + boundary + b"\n"
            + part_header(original_type(orig.whole, orig_8bit), orig_8bit) + b"\n"
            + prefix)
    return Bounce(head, orig.length, b"\n--" + boundary + b"--\n")
