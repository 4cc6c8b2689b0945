"""The tcp-environ of one connection: addresses, names, ident, and the variables they make.

ucspi-tcp sets ``PROTO=TCP`` and ``TCPLOCALIP TCPLOCALPORT TCPLOCALHOST TCPREMOTEIP
TCPREMOTEPORT TCPREMOTEHOST TCPREMOTEINFO`` (unset when unknown).  For an IPv6
client we set ``PROTO=TCP6``, the same ``TCP*`` variables (so qmail-smtpd and
rblsmtpd need nothing new) and, as ucspi-tcp6 does, the ``TCP6*`` copies plus
``TCP6INTERFACE`` for a scoped address.  An IPv4 client reaching an IPv6 socket
(``::ffff:a.b.c.d``) is an IPv4 client: ``PROTO=TCP`` and dotted addresses.
Names come from DNS through qpy.resolver (dnspython), lowercased, final dot dropped.
"""
from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass

NAMES = ("LOCALIP", "LOCALPORT", "LOCALHOST", "REMOTEIP", "REMOTEPORT", "REMOTEHOST", "REMOTEINFO")
IDENT_PORT = 113
IDENT_MAX = 256


def ip_text(address: str) -> tuple[str, bool]:
    """A socket address string → (canonical text, is IPv6); v4-mapped becomes dotted."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped), False
        return ip.compressed, True
    return str(ip), False


@dataclass
class Connection:
    """Both ends of one TCP connection, and what is known about them."""

    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int
    v6: bool = False
    scope: int = 0
    local_host: str | None = None
    remote_host: str | None = None
    remote_info: str | None = None

    @classmethod
    def from_socket(cls, sock: socket.socket, remote: tuple | None = None) -> "Connection":
        """Both addresses of a connected socket (``remote`` as accept() gave it, if known)."""
        local = sock.getsockname()
        remote = remote if remote is not None else sock.getpeername()
        local_ip, v6 = ip_text(local[0])
        remote_ip, _ = ip_text(remote[0])
        scope = remote[3] if len(remote) > 3 else 0
        return cls(local_ip, local[1], remote_ip, remote[1], v6, scope if v6 else 0)

    def environ(self) -> dict[str, str | None]:
        """The variables to set (None = unset), in ucspi-tcp's order."""
        values = (self.local_ip, str(self.local_port), self.local_host, self.remote_ip,
                  str(self.remote_port), self.remote_host, self.remote_info)
        env: dict[str, str | None] = {"PROTO": "TCP6" if self.v6 else "TCP"}
        env.update({"TCP" + n: v for n, v in zip(NAMES, values)})
        if self.v6:
            env.update({"TCP6" + n: v for n, v in zip(NAMES, values)})
            env["TCP6INTERFACE"] = _interface(self.scope)
        return env


def _interface(scope: int) -> str | None:
    """The interface name of a scope id, or None."""
    if not scope:
        return None
    try:
        return socket.if_indextoname(scope)
    except OSError:
        return str(scope)


def _name(rdata) -> str:
    return rdata.target.to_text(omit_final_dot=True).lower()


def ptr_name(resolver, ip: str) -> str | None:
    """The first PTR name of ``ip``, or None (no name, or the lookup failed)."""
    import dns.exception
    import dns.reversename
    try:
        answer = resolver.resolve(dns.reversename.from_address(ip), "PTR")
    except dns.exception.DNSException:
        return None
    for rdata in answer:
        return _name(rdata) or None
    return None


def has_address(resolver, name: str, ip: str) -> bool:
    """True if ``name`` has an A (or AAAA, for an IPv6 ``ip``) record equal to ``ip``."""
    import dns.exception
    want = ipaddress.ip_address(ip)
    try:
        answer = resolver.resolve(name, "AAAA" if want.version == 6 else "A", search=False)
    except dns.exception.DNSException:
        return False
    return any(ipaddress.ip_address(r.address) == want for r in answer)


def remote_info(conn: Connection, timeout: float) -> str | None:
    """RFC 1413 ident: the text after the third ``:`` of the answer, or None on failure.

    As ucspi-tcp's remoteinfo.c: spaces, tabs and CRs are dropped, at most 256 bytes kept.
    """
    deadline = time.monotonic() + timeout
    family = socket.AF_INET6 if conn.v6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.bind((conn.local_ip, 0))
            s.connect((conn.remote_ip, IDENT_PORT))
            s.sendall(b"%d , %d\r\n" % (conn.remote_port, conn.local_port))
            out = bytearray()
            colons = 0
            buf = b""
            while True:
                if not buf:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    s.settimeout(left)
                    buf = s.recv(512)
                    if not buf:
                        return None
                ch, buf = buf[0], buf[1:]
                if ch in b" \t\r":
                    continue
                if ch == 0x0A:
                    break
                if colons < 3:
                    colons += ch == 0x3A
                else:
                    out.append(ch)
                    if len(out) > IDENT_MAX:
                        break
    except OSError:
        return None
    return bytes(out).decode("utf-8", "surrogateescape")
