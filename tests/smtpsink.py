"""A real SMTP receiving server on loopback for tests: scripted replies, raw bytes kept.

    with SMTPSink("127.0.0.2", replies={"RCPT": lambda arg: b"550 no" if b"bad" in arg else None}) as sink:
        ... deliver to sink.host:sink.port ...
        sink.wait_idle()
        sink.messages[0].data      # the message as received: CRLF lines, dot-unstuffed
        sink.sessions[0].raw       # every byte the client sent on that connection

Replies: ``replies`` maps a verb (GREETING, EHLO, HELO, STARTTLS, MAIL, RCPT, DATA, DOT,
QUIT, RSET, NOOP) to bytes (the reply without its final CRLF; lines joined by CRLF
for a multi-line reply), to a callable ``f(arg) -> bytes | None`` (None = the
default reply) or to ``DROP`` (close the connection instead of answering).

DATA is parsed strictly: the message ends at the first CRLF.CRLF and nothing else;
bytes after it are read as the next commands, so a smuggled message shows up as a
second entry in ``messages``.  Commands are read by CRLF too.

``silent=True`` accepts connections and never says anything.  ``tls="ok"`` offers
STARTTLS with ``certfile``/``keyfile``; ``tls="broken"`` offers it, answers 220 and
then sends plain text and hangs up instead of a handshake.  ``ehlo=False`` refuses
EHLO (502) so the client must fall back to HELO.  Binds 127.0.0.x or ::1 on the
given port (0 = any free port); ``sink_group`` binds several addresses on one port.
"""
from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from dataclasses import dataclass, field

DROP = object()
TIMEOUT = 30
DEFAULTS = {
    "GREETING": b"220 sink.test ESMTP",
    "HELO": b"250 sink.test",
    "STARTTLS": b"220 ready to start TLS",
    "MAIL": b"250 ok",
    "RCPT": b"250 ok",
    "DATA": b"354 go ahead",
    "DOT": b"250 ok queued",
    "QUIT": b"221 bye",
    "RSET": b"250 ok",
    "NOOP": b"250 ok",
}


@dataclass
class Message:
    """One message as the sink received it."""

    mail_from: bytes
    params: bytes
    rcpts: list[bytes]
    data: bytes
    tls: bool


@dataclass
class Session:
    """One connection."""

    peer: tuple
    raw: bytearray = field(default_factory=bytearray)
    chunks: list[bytes] = field(default_factory=list)    # raw, one entry per recv()
    commands: list[bytes] = field(default_factory=list)
    tls: bool = False
    tls_closed: bool | None = None      # after QUIT under TLS: did the client send close_notify?
    tls_cipher: bytes = b""             # "TLSv1.3 TLS_AES_256_GCM_SHA384" once TLS is up


class Closed(Exception):
    """The client went away (or we hung up)."""


class SMTPSink:
    """A scripted SMTP server on one loopback address."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, replies: dict | None = None,
                 ehlo: bool = True, extensions: tuple[bytes, ...] = (b"PIPELINING", b"SIZE 10000000",
                                                                       b"8BITMIME"),
                 tls: str | None = None, certfile: str | None = None, keyfile: str | None = None,
                 silent: bool = False) -> None:
        self.host = host
        self.replies = dict(replies or {})
        self.ehlo = ehlo
        self.extensions = extensions
        self.tls = tls
        self.silent = silent
        self.messages: list[Message] = []
        self.sessions: list[Session] = []
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()
        self.context = None
        if tls == "ok":
            self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.context.load_cert_chain(certfile, keyfile)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError:
            self.sock.close()
            raise
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self._closed = False
        self._acceptor: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> "SMTPSink":
        self._acceptor = threading.Thread(target=self._serve, daemon=True)
        self._acceptor.start()
        return self

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            session = Session(peer)
            with self.lock:
                self.sessions.append(session)
            t = threading.Thread(target=self._run, args=(conn, session), daemon=True)
            self.threads.append(t)
            t.start()

    def wait_idle(self, timeout: float = 10) -> None:
        """Wait until every connection so far has ended."""
        for t in list(self.threads):
            t.join(timeout)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        if self._acceptor:
            self._acceptor.join(5)
        self.wait_idle(5)

    def __enter__(self) -> "SMTPSink":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one connection -------------------------------------------------------------------
    def _run(self, conn: socket.socket, session: Session) -> None:
        conn.settimeout(TIMEOUT)
        io = _IO(conn, session)
        try:
            if self.silent:
                while io.recv():
                    pass
                return
            self._dialogue(io, session)
        except (Closed, OSError):
            pass
        finally:
            with contextlib.suppress(OSError):
                io.sock.close()

    def _reply(self, io: "_IO", verb: str, arg: bytes, default: bytes | None = None) -> None:
        rule = self.replies.get(verb)
        if callable(rule):
            rule = rule(arg)
        if rule is DROP:
            raise Closed()
        reply = rule if rule is not None else (default if default is not None else DEFAULTS[verb])
        io.send(reply + b"\r\n")

    def _ehlo_reply(self, tls_active: bool) -> bytes:
        lines = [b"sink.test", *self.extensions]
        if self.tls and not tls_active:
            lines.append(b"STARTTLS")
        return b"\r\n".join(b"250-" + x for x in lines[:-1]) + b"\r\n250 " + lines[-1]

    def _dialogue(self, io: "_IO", session: Session) -> None:
        self._reply(io, "GREETING", b"")
        mail: tuple[bytes, bytes] | None = None
        rcpts: list[bytes] = []
        while True:
            line = io.line()
            session.commands.append(line)
            verb, _, arg = line.partition(b" ")
            verb_s = verb.upper().decode("latin-1")
            if verb_s == "EHLO":
                if self.ehlo:
                    self._reply(io, "EHLO", arg, self._ehlo_reply(session.tls))
                else:
                    self._reply(io, "EHLO", arg, b"502 unimplemented")
            elif verb_s == "HELO":
                self._reply(io, "HELO", arg)
            elif verb_s == "STARTTLS" and self.tls and not session.tls:
                self._reply(io, "STARTTLS", arg)
                if self.tls == "broken":
                    io.send(b"this is not TLS at all\r\n")
                    raise Closed()
                io.starttls(self.context)
                session.tls = True
                mail, rcpts = None, []
            elif verb_s == "MAIL":
                address, params = _path(arg, b"FROM:")
                mail = (address, params)
                rcpts = []
                self._reply(io, "MAIL", arg)
            elif verb_s == "RCPT":
                if mail is None:
                    io.send(b"503 MAIL first\r\n")
                    continue
                rule = self.replies.get("RCPT")
                reply = rule(arg) if callable(rule) else rule
                if reply is DROP:
                    raise Closed()
                reply = reply if reply is not None else DEFAULTS["RCPT"]
                if reply[:1] == b"2":
                    rcpts.append(_path(arg, b"TO:")[0])
                io.send(reply + b"\r\n")
            elif verb_s == "DATA":
                if mail is None or not rcpts:
                    io.send(b"503 no valid recipients\r\n")
                    continue
                rule = self.replies.get("DATA")
                reply = rule(arg) if callable(rule) else rule
                if reply is DROP:
                    raise Closed()
                reply = reply if reply is not None else DEFAULTS["DATA"]
                io.send(reply + b"\r\n")
                if reply[:3] != b"354":
                    continue
                data = io.data()
                rule = self.replies.get("DOT")
                reply = rule(data) if callable(rule) else rule
                if reply is DROP:
                    raise Closed()
                reply = reply if reply is not None else DEFAULTS["DOT"]
                if reply[:1] == b"2":
                    with self.lock:
                        self.messages.append(Message(mail[0], mail[1], rcpts, data, session.tls))
                mail, rcpts = None, []
                io.send(reply + b"\r\n")
            elif verb_s == "QUIT":
                self._reply(io, "QUIT", arg)
                if session.tls:
                    io.sock.settimeout(10)
                    try:                # our close_notify, then wait for the client's
                        io.sock = io.sock.unwrap()
                        session.tls_closed = True
                    except (OSError, ValueError):
                        session.tls_closed = False
                raise Closed()
            elif verb_s in ("RSET", "NOOP"):
                mail, rcpts = (None, []) if verb_s == "RSET" else (mail, rcpts)
                self._reply(io, verb_s, arg)
            else:
                io.send(b"502 unimplemented\r\n")


def _path(arg: bytes, prefix: bytes) -> tuple[bytes, bytes]:
    """``FROM:<a@b> SIZE=1`` → (b"a@b", b"SIZE=1")."""
    if arg[:len(prefix)].upper() == prefix:
        arg = arg[len(prefix):]
    arg = arg.strip()
    if arg.startswith(b"<"):
        end = arg.find(b">")
        if end >= 0:
            return arg[1:end], arg[end + 1:].strip()
    address, _, params = arg.partition(b" ")
    return address, params.strip()


class _IO:
    """Buffered reading by CRLF, recording every byte received."""

    def __init__(self, sock: socket.socket, session: Session) -> None:
        self.sock = sock
        self.session = session
        self.buf = bytearray()

    def recv(self) -> bytes:
        data = self.sock.recv(65536)
        self.session.raw += data
        if data:
            self.session.chunks.append(data)
        return data

    def _more(self) -> None:
        data = self.recv()
        if not data:
            raise Closed()
        self.buf += data

    def line(self) -> bytes:
        """One command line without its CRLF."""
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return line
            self._more()

    def data(self) -> bytes:
        """DATA content up to the first CRLF.CRLF, dot-unstuffed, each line with its CRLF."""
        while True:
            s = b"\r\n" + bytes(self.buf)
            i = s.find(b"\r\n.\r\n")
            if i >= 0:
                content = s[2:i + 2] if i > 0 else b""
                del self.buf[:i + 3]
                lines = content.split(b"\r\n")
                return b"\r\n".join(x[1:] if x.startswith(b".") else x for x in lines)
            self._more()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def starttls(self, context: ssl.SSLContext) -> None:
        self.buf.clear()
        self.sock = context.wrap_socket(self.sock, server_side=True)
        self.session.tls = True
        self.session.tls_cipher = f"{self.sock.version()} {self.sock.cipher()[0]}".encode()


def sink_group(hosts: list[str], **kw) -> contextlib.AbstractContextManager[list[SMTPSink]]:
    """Started sinks on several loopback addresses sharing one port (an MX port)."""
    return _group(hosts, kw)


@contextlib.contextmanager
def _group(hosts: list[str], kw: dict):
    for _ in range(50):
        sinks: list[SMTPSink] = []
        try:
            sinks.append(SMTPSink(hosts[0], 0, **kw))
            for h in hosts[1:]:
                sinks.append(SMTPSink(h, sinks[0].port, **kw))
        except OSError:
            for s in sinks:
                s.sock.close()
            continue
        break
    else:
        raise OSError("no port free on every address")
    for s in sinks:
        s.start()
    try:
        yield sinks
    finally:
        for s in sinks:
            s.close()


def free_port(hosts: list[str]) -> int:
    """A port number nothing listens on at any of ``hosts`` right now (for "refused")."""
    with sink_group(hosts) as sinks:
        port = sinks[0].port
    return port


def make_cert(directory) -> tuple[str, str]:
    """A self-signed test certificate made with the openssl CLI: (certfile, keyfile)."""
    import os
    import subprocess
    cert = os.path.join(str(directory), "cert.pem")
    key = os.path.join(str(directory), "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=sink.test", "-keyout", key, "-out", cert],
                   check=True, capture_output=True, timeout=60)
    return cert, key
