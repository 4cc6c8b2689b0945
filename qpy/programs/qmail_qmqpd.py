"""qmail-qmqpd - receive one message by QMQP and queue it (docs/protocols.md §7).

SYNOPSIS  qmail-qmqpd        (under tcpserver, port 628: fd 0/1 = the client)
RUNS AS   qmaild.
READS     one netstring holding netstring(message) netstring(sender) netstring(rcpt)…;
          $TCPREMOTEIP, $TCPREMOTEHOST, $TCPREMOTEINFO, $TCPLOCALHOST (else $TCPLOCALIP)
          for the Received line; control/maxrcpt ($MAXRCPT overrides).
WRITES    the message to qmail-queue (qpy.qmailq), after ``Received: from <host>
          (<info>@<ip>) by <local> with QMQP; <date>``; then one netstring on fd 1:
          ``Kok <time> qp <pid>``, qmail-queue's ``Z…``/``D…`` text, or ``Dsorry, I can't
          accept addresses like that (#5.1.3)`` (an address of 1000 bytes or more, or with
          a NUL: nothing is queued), or ``Dsorry, too many recipients (#5.5.3)`` (more
          than maxrcpt: nothing is queued, and past the limit nothing is kept; QMQP has one
          reply per message, and the same request would never fit, so it is permanent).
          No relay control: QMQP clients are trusted hosts (restrict them with tcpserver -x).
TRUSTS    nothing in the request beyond the netstring format.
EXIT      0 after the reply, or when the client hangs up; 100 protocol error (silently;
          reading past the outer netstring, non-digit length, missing comma); 111 a length
          over 200000000, control/maxrcpt unreadable, the queue cannot be started, or 3600 s
          without finishing.
"""
from __future__ import annotations

import os
import signal
import time

from qpy import control, fdio, netstring, qmailq, received, scan, submit
from qpy.errors import Exit, QmailError

ALARM = 3600
OUTER_DIGITS = 100
MAX_ADDR = 1000
BAD_ADDRESS = "Dsorry, I can't accept addresses like that (#5.1.3)"
TOO_MANY = "Dsorry, too many recipients (#5.5.3)"


def _alarm(signum: int, frame: object) -> None:
    raise Exit(111)       # qmail's resources()


def received_line() -> bytes:
    """The ``with QMQP`` Received line from tcpserver's variables."""
    host, info, ip, local = received.tcp_peer()
    return received.smtp_line(host, None, info, ip, local, b"QMQP")


def address(stream: netstring.Stream) -> bytes | None:
    """One address netstring; None if it is too long or holds a NUL (qmail-qmqpd's getbuf)."""
    n = stream.length()
    if n >= MAX_ADDR:
        for _ in stream.chunks(n):
            pass
        stream.comma()
        return None
    data = stream.read(n)
    stream.comma()
    return None if b"\0" in data else data


def maxrcpt() -> int:
    """control/maxrcpt, or $MAXRCPT; 0 = no limit."""
    value = os.environb.get(b"MAXRCPT")
    if value is not None:
        return scan.ulong(value)
    try:
        return control.read_int("maxrcpt")
    except QmailError:
        raise Exit(111)


def receive(stream: netstring.Stream) -> str:
    """Read the request, queue it; return the reply text."""
    limit = maxrcpt()
    too_many = False
    stream.budget = stream.length()
    size = stream.length()
    try:
        job = qmailq.start(submit.SIGN)     # QMQP clients are trusted peers: signed
    except OSError:
        raise Exit(111)
    try:
        job.put(received_line())
        for chunk in stream.chunks(size):
            job.put(chunk)
        stream.comma()
        sender = address(stream)
        ok = sender is not None
        recipients = []
        while stream.budget:
            rcpt = address(stream)
            ok = ok and rcpt is not None
            if rcpt is not None and limit and len(recipients) >= limit:
                too_many = True         # read to the end, never kept
            elif rcpt is not None:
                recipients.append(rcpt)
        stream.budget = 1
        stream.comma()
    except BaseException:
        job.abort()
        raise
    if not ok or too_many:
        job.abort()
        return BAD_ADDRESS if not ok else TOO_MANY
    result = job.close(sender or b"", recipients)
    return result or "Kok %d qp %d" % (int(time.time()), job.pid)


def main(argv: list[str] | None = None) -> int:
    """Serve one QMQP request on fd 0/1."""
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(ALARM)
    try:
        reply = receive(netstring.Stream(0, budget=OUTER_DIGITS))
        fdio.write_all(1, netstring.encode(reply.encode("latin-1", "replace")))
        return 0
    except netstring.Closed:
        return 0
    except OSError:
        return 0
    except netstring.ProtocolError:
        return 100
    except (netstring.TooLong, MemoryError):
        return 111
    except Exit as e:
        return e.code
    finally:
        signal.alarm(0)
