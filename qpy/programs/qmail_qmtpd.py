"""qmail-qmtpd - receive messages by QMTP and queue them (docs/protocols.md §7).

SYNOPSIS  qmail-qmtpd        (under tcpserver, port 209: fd 0/1 = the client)
RUNS AS   qmaild.
READS     per message: netstring(``\\n`` + LF text, or ``\\r`` + CRLF text: CRLF → LF, a
          lone CR kept), netstring(sender), netstring(netstrings of recipients); any number
          of messages until the client closes.  control/rcpthosts, morercpthosts.cdb,
          databytes, maxrcpt, and at the first SRS recipient srs_domain, srs_secrets
          (qmaild's), srs_maxage; $RELAYCLIENT (appended to each recipient, rcpthosts not
          checked), $DATABYTES, $MAXRCPT; $TCPREMOTEIP/HOST/INFO and $TCPLOCALHOST (else
          $TCPLOCALIP).
WRITES    each message to qmail-queue (qpy.qmailq) after ``Received: from <host>
          (<info>@<ip>) by <local> with QMTP; <date>``; per message one netstring per
          recipient, in order: ``Kok <time> qp <pid>``, qmail-queue's ``Z…``/``D…``, ``Dsorry,
          that domain isn't in my list of allowed rcpthosts (#5.7.1)``, or ``Dsorry, I can't
          handle that recipient (#5.1.3)`` (address + RELAYCLIENT of 1000 bytes or more, or
          a NUL), ``Dforged SRS address (#5.7.1)``, ``Dexpired SRS address (#5.7.1)`` or
          ``Dmalformed SRS address (#5.1.1)`` (an SRS0/SRS1 address at control/srs_domain
          that qpy.srs does not verify; a valid one needs no rcpthosts); past maxrcpt
          acceptable recipients ``Zsorry, too many recipients (#4.5.3)``
          (QMTP's temporary refusal, SMTP's 452: the client sends those again later, in a
          message of their own).  A bad sender (1000 bytes or more, or a NUL) makes the
          others ``Dunacceptable sender (#5.1.7)``, a message over databytes ``Dsorry, that
          message size exceeds my databytes limit (#5.3.4)``; then nothing is queued.  Replies are flushed before
          each read, as qmail's saferead does.
TRUSTS    nothing in the stream beyond the netstring format.
EXIT      0 when the client closes; 100 protocol error (silently); 111 a length over
          200000000, control files unreadable, the queue cannot start, or 3600 s in all.
"""
from __future__ import annotations

import os
import signal
import time

from qpy import auto, control, fdio, netstring, qmailq, received, rcpthosts, scan, srs, submit
from qpy.errors import Exit, QmailError
from qpy.exitcodes import qq_text

ALARM = 3600
MAX_ADDR = 1000
NOT_RCPTHOST = netstring.encode(b"Dsorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)")
BAD_RCPT = netstring.encode(b"Dsorry, I can't handle that recipient (#5.1.3)")
TOO_MANY = netstring.encode(b"Zsorry, too many recipients (#4.5.3)")
BAD_SENDER = "Dunacceptable sender (#5.1.7)"
TOO_BIG = "Dsorry, that message size exceeds my databytes limit (#5.3.4)"


def _alarm(signum: int, frame: object) -> None:
    raise Exit(111)       # qmail's resources()


def _env(name: str) -> bytes | None:
    return os.environb.get(name.encode())


class Session:
    """One connection: configuration read once, then messages until EOF."""

    def __init__(self, fd_in: int = 0, fd_out: int = 1) -> None:
        self.fd_out = fd_out
        self.pending = bytearray()
        self.stream = netstring.Stream(fd_in, before_read=self.flush)
        try:
            self.rcpthosts = rcpthosts.RcptHosts()
            self.databytes = control.read_int("databytes")
            self.maxrcpt = control.read_int("maxrcpt")
        except QmailError:
            raise Exit(111)
        value = _env("DATABYTES")
        if value is not None:
            self.databytes = scan.ulong(value)
        value = _env("MAXRCPT")
        if value is not None:
            self.maxrcpt = scan.ulong(value)
        self.relayclient = _env("RELAYCLIENT")
        self.header = received.tcp_peer()

    def flush(self) -> None:
        """Send the replies waiting (before every read, as qmail-qmtpd does)."""
        if not fdio.write_quietly(self.fd_out, self.pending):
            raise netstring.Closed()
        self.pending.clear()

    def body(self, job: qmailq.QueueJob, size: int) -> bool:
        """Copy the message into the queue; return False if it exceeds databytes."""
        kind = self.stream.byte()
        size -= 1
        if kind not in (0x0A, 0x0D):
            raise netstring.ProtocolError("bad QMTP message type")
        host, info, ip, local = self.header
        job.put(received.smtp_line(host, None, info, ip, local, b"QMTP"))
        fits = True
        if kind == 0x0A:
            fits = not (self.databytes and size > self.databytes)
            for chunk in self.stream.chunks(size):
                if fits:
                    job.put(chunk)
            return fits
        written = 0
        carry = b""
        for chunk in self.stream.chunks(size):
            data = (carry + chunk).replace(b"\r\n", b"\n")
            carry = b""
            if data.endswith(b"\r"):
                data, carry = data[:-1], b"\r"
            written += len(data)
            if self.databytes and written > self.databytes:
                fits = False
            if fits:
                job.put(data)
        written += len(carry)
        if self.databytes and written > self.databytes:
            fits = False
        if fits and carry:
            job.put(carry)
        return fits

    def sender(self) -> bytes | None:
        """The sender netstring; None if unacceptable."""
        n = self.stream.length()
        if n >= MAX_ADDR:
            for _ in self.stream.chunks(n):
                pass
            self.stream.comma()
            return None
        data = self.stream.read(n)
        self.stream.comma()
        return None if b"\0" in data else data

    def recipients(self) -> list[list]:
        """The recipients netstring → [[address to queue or None, failure reply or b"", count]]:
        a refusal repeated for consecutive recipients is one entry (a flood stays small)."""
        relay = self.relayclient
        extra = len(relay) if relay is not None else 0
        total = self.stream.length()
        out: list[list] = []
        accepted = 0
        while total > 0:
            n = 0
            digits = 0
            while True:
                if not total:
                    raise netstring.ProtocolError("recipient cut short")
                ch = self.stream.byte()
                total -= 1
                if ch == 0x3A and digits:
                    break
                if not 0x30 <= ch <= 0x39:
                    raise netstring.ProtocolError("bad recipient length")
                if n > netstring.MAX_LENGTH:
                    raise netstring.TooLong("recipient too long")
                n = n * 10 + ch - 0x30
                digits += 1
            if n >= total:
                raise netstring.ProtocolError("recipient cut short")
            if n + extra >= MAX_ADDR:
                for _ in self.stream.chunks(n):
                    pass
                _add(out, None, BAD_RCPT)
            else:
                addr = self.stream.read(n)
                failure = BAD_RCPT if b"\0" in addr else b""
                try:
                    verdict = None if failure else srs.classify(addr)   # None: not SRS of ours
                    if verdict not in (None, srs.VALID):
                        failure = netstring.encode(b"D" + srs.refusal(verdict))
                    if relay is not None:
                        addr += relay
                    elif verdict is None and not self.rcpthosts.accepts(addr):
                        failure = NOT_RCPTHOST
                except QmailError:
                    raise Exit(111)
                if not failure and self.maxrcpt and accepted >= self.maxrcpt:
                    failure = TOO_MANY          # read, then forgotten
                accepted += not failure
                _add(out, None if failure else addr, failure)
            self.stream.comma()
            total -= n + 1
        self.stream.comma()
        return out

    def message(self) -> None:
        """Receive one message and queue the replies for it."""
        size = self.stream.length()
        if size == 0:
            raise netstring.ProtocolError("empty message")
        try:
            job = qmailq.start(submit.SIGN if self.relayclient is not None else None)
        except OSError:
            raise Exit(111)
        try:
            fits = self.body(job, size)
            self.stream.comma()
            sender = self.sender()
            rcpts = self.recipients()
        except BaseException:
            job.abort()
            raise
        good = [addr for addr, failure, _ in rcpts if addr is not None]
        if fits and sender is not None and good:
            result = job.close(sender, good)
        else:
            job.abort()
            result = qq_text(54)
        if sender is None:
            result = BAD_SENDER
        if not fits:
            result = TOO_BIG
        reply = netstring.encode((result or "Kok %d qp %d" % (int(time.time()), job.pid)).encode())
        for _, failure, count in rcpts:
            for _ in range(count):
                self.pending += failure or reply
                if len(self.pending) >= 65536:
                    self.flush()

    def run(self) -> None:
        """Messages until the client closes (netstring.Closed)."""
        while True:
            self.message()


def _add(out: list[list], addr: bytes | None, failure: bytes) -> None:
    """Append one recipient's outcome, counting a refusal repeated from the one before."""
    if addr is None and out and out[-1][0] is None and out[-1][1] == failure:
        out[-1][2] += 1
    else:
        out.append([addr, failure, 1])


def main(argv: list[str] | None = None) -> int:
    """Serve QMTP on fd 0/1."""
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(ALARM)
    try:
        try:
            os.chdir(auto.home())
        except OSError:
            return 111
        Session().run()
    except netstring.Closed:
        return 0
    except netstring.ProtocolError:
        return 100
    except (netstring.TooLong, MemoryError):
        return 111
    except Exit as e:
        return e.code
    finally:
        signal.alarm(0)
    return 0
