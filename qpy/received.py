"""Received:/Delivered-To: lines, qmail's date822fmt date format and predate's local one."""
from __future__ import annotations

import os
import time

_MONTHS = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep",
           b"Oct", b"Nov", b"Dec")
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.@%+/=:-[]")


def date822(when: float | None = None) -> bytes:
    """``D Mon YYYY hh:mm:ss -0000`` in UTC, day not zero-padded, no weekday."""
    t = time.gmtime(time.time() if when is None else when)
    return b"%d %s %d %02d:%02d:%02d -0000" % (
        t.tm_mday, _MONTHS[t.tm_mon - 1], t.tm_year, t.tm_hour, t.tm_min, t.tm_sec)


def date_local(when: float | None = None) -> bytes:
    """``D Mon YYYY hh:mm:ss +hhmm`` in local time, the offset from UTC rounded to minutes."""
    t = time.localtime(time.time() if when is None else when)
    offset = t.tm_gmtoff or 0
    sign = b"-" if offset < 0 else b"+"
    minutes = (abs(offset) + 30) // 60
    return b"%d %s %d %02d:%02d:%02d %s%02d%02d" % (
        t.tm_mday, _MONTHS[t.tm_mon - 1], t.tm_year, t.tm_hour, t.tm_min, t.tm_sec,
        sign, minutes // 60, minutes % 60)


def queue_line(pid: int, who: bytes, when: float | None = None) -> bytes:
    """qmail-queue's line: ``Received: (qmail PID invoked WHO); DATE\\n``."""
    return b"Received: (qmail %d invoked %s); %s\n" % (pid, who, date822(when))


_SAFE_TABLE = bytes(ch if ch in _SAFE else 0x3F for ch in range(256))


def safe(value: bytes) -> bytes:
    """Every byte outside ``A-Za-z0-9.@%+/=:-[]`` becomes ``?`` (qmail-smtpd's safehost)."""
    return value.translate(_SAFE_TABLE)


def smtp_line(remotehost: bytes, helo: bytes | None, remoteinfo: bytes | None,
              remoteip: bytes, localhost: bytes, protocol: bytes = b"SMTP",
              when: float | None = None, tls: bytes = b"") -> bytes:
    """The Received line a network server writes (docs/smtpd.md, DATA); ``tls`` (our
    TLS library's ``<version> <cipher>``, not the client's words) follows the protocol
    in parentheses."""
    out = b"Received: from " + safe(remotehost)
    if helo is not None and helo.lower() != remotehost.lower():
        out += b" (HELO " + safe(helo) + b")"
    out += b" ("
    if remoteinfo is not None:
        out += safe(remoteinfo) + b"@"
    out += safe(remoteip) + b")\n  by " + safe(localhost) + b" with " + protocol
    if tls:
        out += b" (" + tls + b")"
    return out + b"; " + date822(when) + b"\n"


def tcp_peer() -> tuple[bytes, bytes | None, bytes, bytes]:
    """(remotehost, remoteinfo, remoteip, localhost) for smtp_line from tcpserver's
    variables: TCPREMOTEHOST, TCPREMOTEINFO, TCPREMOTEIP, TCPLOCALHOST (else
    TCPLOCALIP); "unknown" where a name or address is missing."""
    env = os.environb
    return (env.get(b"TCPREMOTEHOST") or b"unknown", env.get(b"TCPREMOTEINFO"),
            env.get(b"TCPREMOTEIP") or b"unknown",
            env.get(b"TCPLOCALHOST") or env.get(b"TCPLOCALIP") or b"unknown")


def delivered_to(local: bytes, domain: bytes) -> bytes:
    """``Delivered-To: local@domain\\n`` with any newline in the address turned into ``_``."""
    addr = (local + b"@" + domain).replace(b"\n", b"_")
    return b"Delivered-To: " + addr + b"\n"
