"""The client side of SMTP: connect, read replies, write commands, transmit the body.

``Connection`` reads replies as qmail-remote's smtpcode() does (three digits; a
line continues while its 4th byte is ``-``; the text keeps every line with CR
dropped, NUL → ``?``, at most 5000 bytes), writes commands with CRLF, and can be
upgraded with STARTTLS (and shut it down cleanly after QUIT: ``end_tls``).  Every
timeout, reset or early EOF raises ``Dropped``.

``DataEncoder`` turns stored message bytes into DATA content that no byte
sequence can end early at the next hop (docs/smtpd.md, "Known weaknesses"): LF → CRLF,
CRLF kept, a lone CR → CRLF, and *every* emitted line — also one created by
splitting at a lone CR — is dot-stuffed.  A message not ending in LF raises
``PartialLine`` at ``finish()``.
"""
from __future__ import annotations

import socket
from typing import NamedTuple

from qpy.errors import PermFail, TempFail

MAX_TEXT = 5000          # qmail's HUGESMTPTEXT
MAX_LINE = 1 << 20       # a reply line longer than this is a broken peer
RECV = 65536
UNPARSEABLE = 400        # a reply without 3 digits counts as a temporary failure
CLOSE_WAIT = 5.0         # at most this long for QUIT's reply and the peer's close_notify


class Dropped(TempFail):
    """The connection died: timeout, reset or EOF."""


class PartialLine(PermFail):
    """The message does not end with a newline."""


class Reply(NamedTuple):
    """One SMTP reply: its code and its text (all lines, CR dropped, NUL → ``?``, ≤ 5000 bytes)."""

    code: int
    text: bytes

    @property
    def lines(self) -> list[bytes]:
        """The reply's lines without their newlines."""
        return self.text.split(b"\n")[:-1] if self.text.endswith(b"\n") else self.text.split(b"\n")


def connect(ip: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to ip:port within ``timeout`` seconds; raises TimeoutError/OSError."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect((ip, port))
    except BaseException:
        sock.close()
        raise
    return sock


class Connection:
    """An SMTP client connection with a per-operation timeout."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout
        self.buf = bytearray()
        self.tls = False
        sock.settimeout(timeout)

    # -- reading ----------------------------------------------------------------------
    def _fill(self) -> None:
        """Read more bytes into the buffer; EOF, timeout or error is Dropped."""
        try:
            data = self.sock.recv(RECV)
        except OSError as e:     # includes TimeoutError and ssl.SSLError
            raise Dropped(str(e)) from e
        if not data:
            raise Dropped("EOF")
        self.buf += data

    def _line(self) -> bytes:
        """One raw line including its LF."""
        start = 0
        while True:
            i = self.buf.find(b"\n", start)
            if i >= 0:
                line = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                return line
            if len(self.buf) > MAX_LINE:
                raise Dropped("reply line too long")
            start = len(self.buf)
            self._fill()

    def read_reply(self) -> Reply:
        """Read one (possibly multi-line) reply."""
        line = self._line()
        head = line[:3]
        code = int(head) if len(head) == 3 and head.isdigit() else UNPARSEABLE
        text = bytearray()
        while True:
            if len(text) < MAX_TEXT:
                text += line.replace(b"\r", b"")[:MAX_TEXT - len(text)]
            if line[3:4] != b"-":
                break
            line = self._line()
        return Reply(code, bytes(text.replace(b"\0", b"?")))

    # -- writing ----------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Write everything; failure is Dropped."""
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise Dropped(str(e)) from e

    def command(self, line: bytes) -> Reply:
        """Send one command line (CRLF added) and read its reply."""
        self.send(line + b"\r\n")
        return self.read_reply()

    # -- TLS --------------------------------------------------------------------------
    def starttls(self, context) -> None:
        """Upgrade to TLS after a 220 to STARTTLS.  Raises OSError (ssl.SSLError) on failure.

        Anything the server sent after its 220 is discarded unread: plaintext
        pipelined past STARTTLS must not be taken as a TLS-protected reply.
        """
        self.buf.clear()
        self.sock = context.wrap_socket(self.sock, do_handshake_on_connect=False)
        self.sock.settimeout(self.timeout)
        self.sock.do_handshake()
        self.tls = True

    def tls_description(self) -> bytes:
        """``TLSv1.3 TLS_AES_256_GCM_SHA384``: the protocol version and cipher in use."""
        cipher = self.sock.cipher()
        return f"{self.sock.version()} {cipher[0] if cipher else ''}".encode()

    def end_tls(self) -> None:
        """After QUIT under TLS: read its reply, then send our close_notify and take the
        peer's (RFC 8446 §6.1), each waited for at most CLOSE_WAIT seconds; a peer that
        answers neither is left as it is."""
        self.sock.settimeout(min(self.timeout, CLOSE_WAIT))
        try:
            self.read_reply()
            self.sock = self.sock.unwrap()
        except (Dropped, OSError, ValueError):
            pass
        self.tls = False

    def close(self) -> None:
        """Close without waiting for anything."""
        try:
            self.sock.close()
        except OSError:
            pass


def tls_context():
    """An opportunistic TLS client context: encrypt, verify nothing (there is no name to check)."""
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def ehlo_keywords(reply: Reply) -> dict[bytes, bytes]:
    """The extensions an EHLO reply offers: upper-case keyword → parameters."""
    found = {}
    for line in reply.lines[1:]:
        keyword, _, params = line[4:].strip().partition(b" ")
        if keyword:
            found[keyword.upper()] = params.strip()
    return found


class DataEncoder:
    """Stored message bytes → dot-stuffed CRLF DATA content, chunk by chunk."""

    def __init__(self) -> None:
        self.bol = True       # the next output byte starts a line
        self.cr = False       # the previous chunk ended in CR (CRLF or a lone CR?)

    def feed(self, chunk: bytes) -> bytes:
        """Encode one chunk; a CR at its end is held until the next byte is known."""
        if self.cr:
            chunk = b"\r" + chunk
            self.cr = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self.cr = True
        if not chunk:
            return b""
        # One line end per CRLF, LF or lone CR; "\r\r\n" is two line ends.
        text = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        text = text.replace(b"\n.", b"\n..")
        if self.bol and text.startswith(b"."):
            text = b"." + text
        self.bol = text.endswith(b"\n")
        return text.replace(b"\n", b"\r\n")

    def finish(self) -> bytes:
        """The terminating ``.`` line; PartialLine if the message did not end in LF."""
        if self.cr or not self.bol:
            raise PartialLine()
        return b".\r\n"


def encode(message: bytes) -> bytes:
    """The whole DATA content for a message, terminator included."""
    enc = DataEncoder()
    return enc.feed(message) + enc.finish()
