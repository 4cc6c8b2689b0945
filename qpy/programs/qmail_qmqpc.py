"""qmail-qmqpc - a drop-in qmail-queue that hands the message to a QMQP server (mini-qmail).

SYNOPSIS  qmail-qmqpc        (as $QMAILQUEUE, or in place of bin/qmail-queue)
RUNS AS   the caller ("user"): it writes nothing locally.
READS     the message on fd 0, then the envelope on fd 1 (docs/protocols.md §1);
          control/qmqpservers: one server per line, tried in order until one answers:
          ``1.2.3.4``, ``::1`` (port 628), or, a qpy extension, ``1.2.3.4:6280`` and
          ``[::1]:6280``.  Lines that are not addresses are skipped.
WRITES    one QMQP request (netstring of netstring(message) netstring(sender)
          netstring(rcpt)…) to the first server that accepts the connection (10 s), then
          reads its reply (60 s per read) up to the first ``K``, ``Z`` or ``D``.
TRUSTS    the server's reply letter only.
EXIT      0 K (queued); 31 D; 71 Z; 51 out of memory; 54 unable to read the message or
          envelope; 55 control/qmqpservers unreadable, missing or empty; 56 no socket; 61
          QMAILHOME; 72 every connect timed out (the last failure decides 72 or 73); 73
          connection refused; 74 I/O with the server failed; 91 envelope format error.
"""
from __future__ import annotations

import os
import signal
import socket

from qpy import auto, control, fdio
from qpy.errors import Exit, QmailError
from qpy.exitcodes import QQ

PORT = 628
CONNECT_TIMEOUT = 10
IO_TIMEOUT = 60


def parse_server(line: bytes) -> tuple[int, str, int] | None:
    """A qmqpservers line → (family, ip, port), or None if it is not an address."""
    text = line.decode("ascii", "replace").strip()
    port = PORT
    if text.startswith("["):
        text, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                return None
            port = int(rest[1:])
    elif text.count(":") == 1:
        text, _, rest = text.partition(":")
        if not rest.isdigit():
            return None
        port = int(rest)
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, text)
            return family, text, port
        except OSError:
            continue
    return None


def read_all(fd: int) -> bytes:
    """fd 0 to EOF; a read error is exit 54 (MemoryError is main's: exit 51)."""
    try:
        return fdio.read_all(fd)
    except OSError:
        raise Exit(QQ.READ_ERROR)


def read_envelope(fd: int) -> list[bytes]:
    """The envelope records up to the empty one: [sender, rcpt…].  91 if malformed."""
    buf = b""
    records: list[bytes] = []
    while True:
        nul = buf.find(b"\0")
        if nul == -1:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                raise Exit(QQ.READ_ERROR)
            if not chunk:
                raise Exit(QQ.ENVELOPE)
            buf += chunk
            continue
        record, buf = buf[:nul], buf[nul + 1:]
        if not records:
            if record[:1] != b"F":
                raise Exit(QQ.ENVELOPE)
        elif not record:
            return records
        elif record[:1] != b"T":
            raise Exit(QQ.ENVELOPE)
        records.append(record[1:])


def request(message: bytes, sender: bytes, recipients: list[bytes]) -> bytes:
    """The QMQP request: one netstring of netstrings."""
    inner = b"".join(b"%d:%s," % (len(x), x) for x in (message, sender, *recipients))
    return b"%d:%s," % (len(inner), inner)


def try_server(family: int, ip: str, port: int, data: bytes) -> int:
    """Send to one server: its exit code, or minus 72/73 if the connection failed."""
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
        raise Exit(QQ.NETWORK)
    with sock:
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect((ip, port))
        except socket.timeout:
            return -QQ.CONNECT_TIMEOUT
        except OSError:
            return -QQ.CONNECT_REFUSED
        sock.settimeout(IO_TIMEOUT)
        try:
            sock.sendall(data)
            while True:
                chunk = sock.recv(1024)
                if not chunk:
                    raise Exit(QQ.IO_FAILED)
                for ch in chunk:
                    if ch == 0x4B:
                        return QQ.OK
                    if ch == 0x5A:
                        return QQ.TEMP_REJECT
                    if ch == 0x44:
                        return QQ.PERM_REJECT
        except OSError:
            raise Exit(QQ.IO_FAILED)


def send(servers: list[bytes], data: bytes) -> int:
    """Try each server in order; the first answer decides."""
    last = QQ.CONFIG
    for line in servers:
        parsed = parse_server(line)
        if parsed is None:
            continue
        code = try_server(*parsed, data)
        if code >= 0:
            return code
        last = -code
    return last


def main(argv: list[str] | None = None) -> int:
    """Read message and envelope, hand them to a QMQP server."""
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        try:
            os.chdir(auto.home())
        except OSError:
            return QQ.HOME
        try:
            servers = control.read_list("qmqpservers")
        except QmailError:
            return QQ.CONFIG
        if servers is None:
            return QQ.CONFIG
        message = read_all(0)
        envelope = read_envelope(1)
        return send(servers, request(message, envelope[0], envelope[1:]))
    except Exit as e:
        return e.code
    except MemoryError:
        return QQ.NOMEM
