"""qmail-remote - send one message to the mail exchangers of one host by SMTP.

SYNOPSIS  qmail-remote host sender recip...
RUNS AS   qmailr: a warm child of qmail-rspawn (qpy.warm.run) or exec'd; cwd QMAILHOME.
READS     the message on fd 0, once, front to back (a seekable file or a pipe);
          control/helohost (default me), smtproutes, timeoutconnect, timeoutremote;
          DNS through qpy.resolver ($QPY_NAMESERVERS, control/nameservers);
          queue/lock/tcpto and tcpto6 (qpy.tcpto).
WRITES    on fd 1 (docs/protocols.md §4): one recipient record per recipient in argv order
          (``r\\0`` accepted, ``h<text>\\0`` permanent, ``s<text>\\0`` temporary), then
          exactly one message record ``K|Z|D<text>\\0``.  Failures before RCPT give only
          the message record; a connection that dies mid-way gives fewer recipient
          records.  Nothing on fd 2: qmail-rspawn merges it into the report pipe.
ROUTES    smtproutes ``domain:relay[:port]`` (keys: host, each ``.suffix``, then the
          empty key; case-insensitive; last duplicate wins).  A non-empty relay gets its
          A/AAAA addresses only; ``[1.2.3.4]``/``[::1]``/``[IPv6:…]`` relays need no DNS.
          An empty relay means MX delivery; qpy extension: ``domain::port`` is MX delivery
          to that port.  Without a route: MX in preference order (random among equals),
          else A/AAAA; MXs at or above our own preference are dropped when delivering to
          port 25 (``domain::port`` to another port delivers even to this host's address).
SMTP      EHLO (HELO if EHLO is refused); STARTTLS when offered, opportunistic and
          unverified, and on a failed handshake one reconnect in plain text to the same
          address; SIZE= when offered; SMTPUTF8 when offered and an envelope address or
          the header has a byte above 127 (RFC 6531/6532); MAIL plus every RCPT in one
          write when PIPELINING is offered; one transaction for all recipients; DATA with every line
          dot-stuffed and CRLF-terminated (qpy.smtpclient.DataEncoder); QUIT, reply not
          awaited in plain text; under TLS its reply and the peer's close_notify are
          awaited after ours, at most 5 seconds each.  Only connect failures move on to
          the next address.  The K report ends in ``TLS: <version> <cipher>`` or ``TLS:
          handshake failed, sent without TLS`` when TLS was used or tried (so the log says).
TRUSTS    nothing from the network: replies are parsed as three digits and bounded text.
EXIT      always 0.
"""
from __future__ import annotations

import os
import stat

from qpy import addr, auto, control, fdio, mx, scan, smtpclient
from qpy.errors import ControlError, Exit, QmailError
from qpy.smtpclient import Connection, Dropped, PartialLine
from qpy.tcpto import Tcpto

PORT = 25
CHUNK = 65536
HEADER_PEEK = 4 * CHUNK     # how far header_8bit() looks for the end of the header

USAGE = b"DI (qmail-remote) was invoked improperly. (#5.3.5)\n"
CHDIR = b"ZUnable to switch to home directory. (#4.3.0)\n"
CONTROL = b"ZUnable to read control files. (#4.3.0)\n"
NOCONN = b"ZSorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n"
READ = b"ZUnable to read message. (#4.3.0)\n"
PARTIAL = b"DSMTP cannot transfer messages with partial final lines. (#5.6.2)\n"
OSERR = b"ZSystem resources temporarily unavailable. (#4.3.0)\n"
BADADDR = b"Sorry, I won't send an address containing CR, LF or NUL. (#5.1.3)\n"
TLS_FAILED = b"TLS: handshake failed, sent without TLS\n"


# -- configuration ----------------------------------------------------------------------

class Config:
    """The control files qmail-remote reads at every start."""

    def __init__(self) -> None:
        try:
            self.timeout = max(control.read_int("timeoutremote"), 1)
            self.timeoutconnect = max(control.read_int("timeoutconnect"), 1)
            helohost = control.read_line_me("helohost")
            self.routes = control.read_map("smtproutes") or {}
        except ControlError:
            raise Exit(0, CONTROL)
        if helohost is None:
            raise Exit(0, CONTROL)
        self.helohost = helohost


def route(host: bytes, routes: dict[bytes, bytes]) -> tuple[bytes | None, int]:
    """The smtproutes entry for host: (relay or None for MX, port)."""
    for key in [*addr.domain_keys(host.lower()), b""]:
        if key in routes:
            return parse_relay(routes[key])
    return None, PORT


def parse_relay(value: bytes) -> tuple[bytes | None, int]:
    """``relay[:port]``, ``[ip]:port`` or ``:port`` → (relay or None, port)."""
    if value.startswith(b"["):
        end = value.find(b"]")
        if end > 0:
            relay, rest = value[:end + 1], value[end + 1:]
            return relay, _port(rest[1:]) if rest.startswith(b":") else PORT
    relay, sep, port = value.partition(b":")
    return relay or None, _port(port) if sep else PORT


def _port(text: bytes) -> int:
    """Leading decimal digits as a port; none → 25."""
    port = scan.ulong(text)
    return port if 0 < port < 65536 else PORT


def smtp_address(address: bytes) -> bytes:
    """The address as sent in MAIL/RCPT: local part quoted when needed (as addrmangle)."""
    if b"@" not in address:
        return address
    return addr.quote(address)


def bad_address(address: bytes) -> bool:
    """Bytes that would end or split a command line at the next hop."""
    return any(c in address for c in (b"\r", b"\n", b"\0"))


# -- the message --------------------------------------------------------------------------

class Message:
    """fd 0: read once; size and final byte known in advance when it is a regular file."""

    def __init__(self, fd: int = 0) -> None:
        self.fd = fd
        self.size: int | None = None
        self.ahead = b""                    # read by header_8bit(), sent first by chunks()
        self.eight: bool | None = None
        try:
            st = os.fstat(fd)
        except OSError:
            raise Exit(0, READ)
        if stat.S_ISREG(st.st_mode):
            self.size = st.st_size

    def complete(self) -> bool:
        """False if a regular file's last byte is known not to be LF."""
        if not self.size:
            return True
        try:
            pos = os.lseek(self.fd, 0, os.SEEK_CUR)
            if pos >= self.size:
                return True
            return os.pread(self.fd, 1, self.size - 1) == b"\n"
        except OSError:
            return True     # find out while sending

    def read(self) -> bytes:
        """The next chunk of fd 0 (b"" at its end); a read error is ``Unable to read message``."""
        try:
            return os.read(self.fd, CHUNK)
        except OSError:
            raise Exit(0, READ)

    def header_8bit(self) -> bool:
        """True if the header (up to the first empty line, at most HEADER_PEEK bytes) has a
        byte above 127, i.e. the message needs SMTPUTF8 (RFC 6532).  Reads ahead once;
        what it read is sent first by chunks()."""
        if self.eight is None:
            ahead = bytearray(b"\n")       # so an empty header is found as "\n\n" too
            while (end := ahead.find(b"\n\n")) < 0 and len(ahead) <= HEADER_PEEK:
                data = self.read()
                if not data:
                    break
                ahead += data
            self.ahead = bytes(ahead[1:])
            self.eight = not self.ahead[:end if end >= 0 else HEADER_PEEK].isascii()
        return self.eight

    def chunks(self):
        """The message, chunk by chunk."""
        if self.ahead:
            yield self.ahead
            self.ahead = b""
        while data := self.read():
            yield data


# -- the SMTP dialogue --------------------------------------------------------------------

class Session:
    """One SMTP dialogue with one address; its end is always an Exit(0, report)."""

    def __init__(self, conn: Connection, ip: str, conf: Config, sender: bytes,
                 recips: list[bytes], results: list[bytes | None], message: Message) -> None:
        self.conn = conn
        self.ip = ip.encode("ascii")
        self.conf = conf
        self.sender = sender
        self.recips = recips
        self.results = results
        self.message = message
        self.critical = False
        self.text = b""
        self.tls_note = b""     # the K report's last line: TLS version and cipher, or TLS_FAILED

    def reply(self) -> smtpclient.Reply:
        """Read a reply, remembering its text for the report."""
        r = self.conn.read_reply()
        self.text = r.text
        return r

    def command(self, line: bytes) -> smtpclient.Reply:
        self.conn.send(line + b"\r\n")
        return self.reply()

    def quit(self, prepend: bytes, append: bytes, note: bytes = b"") -> Exit:
        """Send QUIT (in plain text its reply is not awaited; under TLS it is, briefly, and
        the TLS close follows) and build the report: prepend ip append '.' text note."""
        try:
            self.conn.send(b"QUIT\r\n")
            if self.conn.tls:
                self.conn.end_tls()
        except Dropped:
            pass
        return Exit(0, prepend + self.ip + append + b".\n" + self.said(self.text) + note)

    @staticmethod
    def said(text: bytes) -> bytes:
        return b"Remote host said: " + text if text else b""

    def dropped(self) -> Exit:
        maybe = b"Possible duplicate! " if self.critical else b""
        return Exit(0, b"ZConnected to " + self.ip + b" but connection died. " + maybe
                    + b"(#4.4.2)\n")

    def run(self, tls: bool) -> None:
        """The whole dialogue; raises Exit, or returns if the STARTTLS handshake failed."""
        try:
            extensions = self.hello(tls)
            if extensions is None:
                return
            self.transaction(extensions)
        except Dropped:
            raise self.dropped()

    def hello(self, tls: bool) -> dict[bytes, bytes] | None:
        """Greeting, EHLO (or HELO), STARTTLS; the offered extensions, None if TLS failed."""
        if self.reply().code != 220:
            raise self.quit(b"ZConnected to ", b" but greeting failed")
        extensions = self.ehlo()
        if tls and b"STARTTLS" in extensions:
            if self.command(b"STARTTLS").code == 220:
                try:
                    self.conn.starttls(smtpclient.tls_context())
                except OSError:
                    return None
                self.tls_note = b"TLS: " + self.conn.tls_description() + b"\n"
                extensions = self.ehlo()
        return extensions

    def ehlo(self) -> dict[bytes, bytes]:
        r = self.command(b"EHLO " + self.conf.helohost)
        if r.code == 250:
            return smtpclient.ehlo_keywords(r)
        if self.command(b"HELO " + self.conf.helohost).code != 250:
            raise self.quit(b"ZConnected to ", b" but my name was rejected")
        return {}

    def mail_command(self, extensions: dict[bytes, bytes]) -> bytes:
        line = b"MAIL FROM:<" + smtp_address(self.sender) + b">"
        if b"SIZE" in extensions and self.message.size is not None:
            line += b" SIZE=%d" % self.message.size
        if b"SMTPUTF8" in extensions and (not all(
                a.isascii() for a in [self.sender, *self.recips]) or self.message.header_8bit()):
            line += b" SMTPUTF8"
        return line + b"\r\n"

    def transaction(self, extensions: dict[bytes, bytes]) -> None:
        """MAIL, RCPTs, DATA, the message; raises Exit."""
        wanted = [i for i, r in enumerate(self.results) if r is None]
        rcpts = [b"RCPT TO:<" + smtp_address(self.recips[i]) + b">\r\n" for i in wanted]
        mail = self.mail_command(extensions)
        pipelining = b"PIPELINING" in extensions
        if pipelining:
            self.conn.send(mail + b"".join(rcpts))
        else:
            self.conn.send(mail)
        code = self.reply().code
        if code >= 500:
            raise self.quit(b"DConnected to ", b" but sender was rejected")
        if code >= 400:
            raise self.quit(b"ZConnected to ", b" but sender was rejected")
        accepted = False
        for i, line in zip(wanted, rcpts):
            if not pipelining:
                self.conn.send(line)
            r = self.reply()
            if r.code >= 500:
                self.results[i] = b"h" + self.ip + b" does not like recipient.\n" + self.said(r.text)
            elif r.code >= 400:
                self.results[i] = b"s" + self.ip + b" does not like recipient.\n" + self.said(r.text)
            else:
                self.results[i] = b"r"
                accepted = True
        self.text = b""     # each recipient record took its own text
        if not accepted:
            raise self.quit(b"DGiving up on ", b"")
        code = self.command(b"DATA").code
        if code >= 500:
            raise self.quit(b"D", b" failed on DATA command")
        if code >= 400:
            raise self.quit(b"Z", b" failed on DATA command")
        self.blast()
        code = self.reply().code
        self.critical = False
        if code >= 500:
            raise self.quit(b"D", b" failed after I sent the message")
        if code >= 400:
            raise self.quit(b"Z", b" failed after I sent the message")
        raise self.quit(b"K", b" accepted message", self.tls_note)

    def blast(self) -> None:
        """Send the message, dot-stuffed, then the final dot."""
        enc = smtpclient.DataEncoder()
        pending = bytearray()
        for chunk in self.message.chunks():
            pending += enc.feed(chunk)
            if len(pending) >= CHUNK:
                self.conn.send(bytes(pending))
                pending.clear()
        try:
            pending += enc.finish()
        except PartialLine:
            if pending:
                self.conn.send(bytes(pending))
            raise Exit(0, PARTIAL)   # the connection is closed without the final dot
        self.critical = True
        self.conn.send(bytes(pending))


# -- delivery -------------------------------------------------------------------------------

def targets_for(host: bytes, conf: Config) -> tuple[list[mx.Target], int]:
    """The addresses to try, in order, and the port."""
    relay, port = route(host, conf.routes)
    if relay is not None:
        return mx.relay_targets(relay), port      # a relay is trusted: no own-MX check
    if port != PORT:
        return mx.mx_targets(host), port          # another port is another MTA, not our own
    return mx.drop_own(mx.mx_targets(host), mx.own_ips()), port


def deliver(argv: list[str], results: list[bytes | None], fd: int = 0) -> None:
    """Everything after the usage check; always ends in Exit(0, report)."""
    try:
        os.chdir(auto.home())
    except OSError:
        raise Exit(0, CHDIR)
    conf = Config()
    host = os.fsencode(argv[0])
    sender = os.fsencode(argv[1])
    recips = [os.fsencode(a) for a in argv[2:]]
    if bad_address(sender):
        raise Exit(0, b"D" + BADADDR)
    for i, r in enumerate(recips):
        if bad_address(r):
            results[i] = b"h" + BADADDR
    if all(r is not None for r in results):
        raise Exit(0, b"DGiving up: no recipient could be sent. (#5.1.3)\n")
    message = Message(fd)
    if not message.complete():
        raise Exit(0, PARTIAL)
    try:
        targets, port = targets_for(host, conf)
    except QmailError as e:
        raise Exit(0, e.letter.encode() + e.text.encode("latin-1") + b"\n")
    table = Tcpto()
    for target in targets:
        if table.skip(target.ip):
            continue
        for tls in (True, False):      # False: the plain retry after a failed handshake
            try:
                sock = smtpclient.connect(target.ip, port, conf.timeoutconnect)
            except TimeoutError:
                table.result(target.ip, True)
                break
            except OSError:
                table.result(target.ip, False)
                break
            table.result(target.ip, False)
            conn = Connection(sock, conf.timeout)
            session = Session(conn, target.ip, conf, sender, recips, results, message)
            if not tls:
                session.tls_note = TLS_FAILED
            try:    # run() returns only if STARTTLS failed: reconnect without it
                session.run(tls)
            finally:
                conn.close()
    raise Exit(0, NOCONN)


def render(results: list[bytes | None], report: bytes) -> bytes:
    """Recipient records up to the first unknown one, then the message record."""
    out = bytearray()
    for r in results:
        if r is None:
            break
        out += r + b"\0"
    return bytes(out + report + b"\0")


def main(argv: list[str] | None = None) -> int:
    """Deliver, print the report on fd 1, exit 0."""
    import signal
    import sys
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    results: list[bytes | None] = [None] * max(len(argv) - 2, 0)
    try:
        if len(argv) < 3:
            raise Exit(0, USAGE)
        deliver(argv, results)
    except Exit as e:
        report = e.data
    except MemoryError:
        report = b"ZOut of memory. (#4.3.0)\n"
    except Exception as e:   # never lose a message: anything unexpected is temporary
        text = f"{type(e).__name__}: {e}".encode("utf-8", "replace").replace(b"\0", b"?")
        report = b"ZInternal error in qmail-remote: " + text + b" (#4.3.0)\n"
    fdio.write_quietly(1, render(results, report))   # a failure just ends it (qmail: _exit(0))
    return 0
