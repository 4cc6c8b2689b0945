"""rblsmtpd - block SMTP clients listed in DNS blocklists (ucspi-tcp 0.88 compatible).

SYNOPSIS  rblsmtpd [-bBcC] [-t timeout] -r base [-r base]… [-a base]… prog [arg…]
RUNS AS   qmaild, under tcpserver (fd 0/1 = the client), in front of qmail-smtpd.
READS     $TCPREMOTEIP, $RBLSMTPD; DNS through qpy.resolver (dnspython): TXT of
          ``d.c.b.a.<base>`` for -r, A for -a (IPv6 clients: the 32 reversed nibbles).
DECIDES   1. $RBLSMTPD set: empty → accept; ``-text`` → 553 text; else 451 text.
          2. else each -r/-a in command-line order until one decides (-b/-B/-c/-C affect
          the options after them): -r listed (any TXT) → 451 text (553 with -b); -a
          listed (any A) → accept.  A temporary DNS failure: -C (default) treats -r as
          not listed and -a as listed; -c blocks (-r: ``temporary RBL lookup error``)
          and ignores -a; any temporary failure forces 451 even with -b.  A resolver
          configuration that cannot be read counts as a temporary failure.
          3. not blocked → prog (ours warm through qpy.chain, others exec'd).
          At least one -r is required: there is no default zone (usage error, exit 100).
BLOCKED   ``451 |553 `` + text (200 bytes at most, bytes outside 32–126 → ``?``); log line
          ``rblsmtpd: <ip> pid <pid>: <message>`` on fd 2.  -t 0: write the message, exit 0.
          Else (alarm -t, default 60 s, then silent exit 0): ``220 rblsmtpd.local``; HELO,
          EHLO, MAIL, RSET, NOOP → ``250 rblsmtpd.local``; QUIT → ``221 rblsmtpd.local``;
          anything else → the message.
TRUSTS    nothing the client sends; the DNS answers only decide accept or block.
EXIT      0 after a blocked session; 100 usage; 111 prog cannot run; else prog's code.
"""
from __future__ import annotations

import getopt
import ipaddress
import os
import signal
import sys

import dns.exception
import dns.resolver

from qpy import chain, errstr, fdio, resolver
from qpy.errors import Exit, QmailError, TempFail

USAGE = ("rblsmtpd: usage: rblsmtpd [ -b ] [ -B ] [ -c ] [ -C ] [ -t timeout ] -r base "
         "[ -r base ... ] [ -a base ] smtpd [ arg ... ]")
LOOKUP_TIMEOUT = 30.0
ACCEPT, REJECT, BOUNCE = 1, 2, 3
HOST = b"rblsmtpd.local"
REPLIES = {b"helo": b"250", b"ehlo": b"250", b"mail": b"250", b"rset": b"250", b"noop": b"250"}


def reverse(ip: str) -> str:
    """The DNSBL prefix for an IP: ``4.3.2.1.`` (dotted parts reversed), nibbles for IPv6."""
    if ":" in ip:
        try:
            nibbles = ipaddress.IPv6Address(ip).reverse_pointer
        except ValueError:
            return ""
        return nibbles[:-len("ip6.arpa")]
    parts = ip.split(".") if ip else []
    return "".join(p + "." for p in reversed(parts))


class Lookups:
    """DNS answers for the decision: TXT text and "has an A record"."""

    def __init__(self) -> None:
        self.res = resolver.make_resolver(LOOKUP_TIMEOUT)

    def _answer(self, name: str, rdtype: str):
        try:
            return self.res.resolve(name, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        except (dns.exception.DNSException, ValueError) as e:
            raise TempFail(str(e))

    def txt(self, name: str) -> bytes:
        """Every TXT string of ``name`` concatenated (djb's dns_txt); b"" if none."""
        answer = self._answer(name, "TXT")
        if answer is None:
            return b""
        return b"".join(b"".join(r.strings) for r in answer)

    def has_a(self, name: str) -> bool:
        """True if ``name`` has an A record."""
        answer = self._answer(name, "A")
        return answer is not None and len(answer) > 0


class Decision:
    """rblsmtpd.c's state: decision, text, and whether a 553 is still allowed."""

    def __init__(self, ip: str, lookups: Lookups | None) -> None:
        self.ip = ip
        self.prefix = reverse(ip)
        self.lookups = lookups
        self.decision = 0
        self.text = b""
        self.bounce = False        # -b
        self.fail_closed = False   # -c
        self.must_not_bounce = False

    def from_env(self, value: bytes | None) -> None:
        """$RBLSMTPD decides first."""
        if value is None:
            return
        if not value:
            self.decision = ACCEPT
        elif value.startswith(b"-"):
            self.text, self.decision = value[1:], BOUNCE
        else:
            self.text, self.decision = value, REJECT

    def rbl(self, base: str) -> None:
        """-r base: listed (any TXT) blocks."""
        if self.decision:
            return
        try:
            text = self._looked_up().txt(self.prefix + base)
        except TempFail:
            self.must_not_bounce = True
            if self.fail_closed:
                self.text, self.decision = b"temporary RBL lookup error", REJECT
            return
        if text:
            self.text, self.decision = text, BOUNCE if self.bounce else REJECT

    def antirbl(self, base: str) -> None:
        """-a base: listed (any A record) accepts."""
        if self.decision:
            return
        try:
            listed = self._looked_up().has_a(self.prefix + base)
        except TempFail:
            self.must_not_bounce = True
            if not self.fail_closed:
                self.decision = ACCEPT
            return
        if listed:
            self.decision = ACCEPT

    def _looked_up(self) -> Lookups:
        """The resolver, made on first use; unusable configuration is a temporary failure."""
        if self.lookups is None:
            try:
                self.lookups = Lookups()
            except (QmailError, OSError, ValueError, dns.exception.DNSException) as e:
                raise TempFail(str(e))
        return self.lookups

    def message(self) -> bytes:
        """The SMTP reply of a blocked session, without CRLF."""
        code = b"451 " if self.must_not_bounce or self.decision == REJECT else b"553 "
        return bytes(ch if 32 <= ch <= 126 else 0x3F for ch in code + self.text[:200])


def decide(argv: list[str], env: dict[bytes, bytes], lookups: Lookups | None = None
           ) -> tuple[Decision, int, list[str]]:
    """Parse options, running lookups as they come; return (decision, timeout, prog argv).

    Raises Exit(100) with the usage line.
    """
    try:
        pairs, prog = getopt.getopt(argv, "bBcCt:r:a:")
    except getopt.GetoptError:
        raise Exit(100, USAGE)
    if not prog or not any(flag == "-r" for flag, _ in pairs):
        raise Exit(100, USAGE)
    state = Decision(os.fsdecode(env.get(b"TCPREMOTEIP", b"")), lookups)
    state.from_env(env.get(b"RBLSMTPD"))
    timeout = 60
    for flag, value in pairs:
        if flag in ("-b", "-B"):
            state.bounce = flag == "-b"
        elif flag in ("-c", "-C"):
            state.fail_closed = flag == "-c"
        elif flag == "-t":
            digits = value[:len(value) - len(value.lstrip("0123456789"))]
            timeout = int(digits) if digits else 0
        elif flag == "-r":
            state.rbl(value)
        else:
            state.antirbl(value)
    return state, timeout, prog


def _alarm(signum: int, frame: object) -> None:
    raise TimeoutError()


def commands(fd_in: int, fd_out: int, message: bytes) -> None:
    """The blocked dialogue, until QUIT or EOF (commands.c: LF-ended, a CR before it dropped)."""
    fdio.write_all(fd_out, b"220 " + HOST + b"\r\n")
    buf = b""
    while True:
        nl = buf.find(b"\n")
        if nl == -1:
            chunk = os.read(fd_in, 64)
            if not chunk:
                return
            buf += chunk
            continue
        line, buf = buf[:nl], buf[nl + 1:]
        if line.endswith(b"\r"):
            line = line[:-1]
        verb = line.split(b"\0", 1)[0].split(b" ", 1)[0].lower()
        if verb == b"quit":
            fdio.write_all(fd_out, b"221 " + HOST + b"\r\n")
            return
        reply = REPLIES.get(verb)
        fdio.write_all(fd_out, reply + b" " + HOST + b"\r\n" if reply else message + b"\r\n")


def blocked(state: Decision, timeout: int) -> int:
    """Log the block and talk to the client; exit code 0."""
    message = state.message()
    line = b"rblsmtpd: %s pid %d: %s\n" % (os.fsencode(state.ip), os.getpid(), message)
    fdio.write_quietly(2, line)
    try:
        if not timeout:
            fdio.write_all(1, message + b"\r\n")
            return 0
        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(timeout)
        try:
            commands(0, 1, message)
        finally:
            signal.alarm(0)
    except OSError:     # the client went away, or the timeout (TimeoutError) rang
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    """Decide, then block the session or become prog."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        state, timeout, prog = decide(argv, dict(os.environb))
    except Exit as e:
        os.write(2, (e.text + "\n").encode())
        return e.code
    if state.decision >= REJECT:
        return blocked(state, timeout)
    try:
        return chain.run_next(prog)
    except OSError as e:
        os.write(2, os.fsencode(f"rblsmtpd: fatal: unable to run {prog[0]}: {errstr.text(e)}\n"))
        return 111
