"""Where to deliver a domain's mail: MX, A and AAAA lookups mapped to qmail's outcomes.

This is qmail's dns_mxip()/dns_ip() plus IPv6, through dnspython (imported only
when a lookup is really needed: an IP literal or an smtproutes relay given as an
IP costs no DNS import at all).

- ``mx_targets(host)``: ``[1.2.3.4]``, ``[IPv6:…]`` or a bare dotted quad is used
  as is (preference 0).  Otherwise the MX records, lowest preference first, in a
  random order among equal preferences; each exchanger's A then AAAA addresses.
  No MX (no data) → the host's own A/AAAA addresses (preference 0).
- ``relay_targets(host)``: an smtproutes relay: literal, else A/AAAA, never MX.
- ``drop_own(targets, own)``: drop every target whose preference is at or above
  the best preference of any of this host's own addresses (qmail's prefme).

Outcomes (docs/protocols.md §4): NXDOMAIN → ``NoSuchHost`` (D #5.1.2); SERVFAIL, a
timeout or any other resolver trouble → ``DnsTemp`` (Z #4.1.2) unless some
exchanger still gave addresses; nothing usable → ``NoMailExchanger`` (D #5.4.4);
only ourselves left → ``OwnMX`` (D #5.4.6).

The random order uses ``random.SystemRandom``: a warm child forked from
qmail-rspawn would otherwise inherit the parent's generator state, and every
delivery would make the same "random" choice.
"""
from __future__ import annotations

import ipaddress
import random
import socket
import struct

from qpy.errors import PermFail, TempFail

SIOCGIFCONF = 0x8912
MAX_INTERFACES = 256


class DnsTemp(TempFail):
    """Sorry, I couldn't find any host by that name. (#4.1.2)"""


class NoSuchHost(PermFail):
    """Sorry, I couldn't find any host named that. (#5.1.2)"""

    def __init__(self, host: bytes) -> None:
        safe = bytes(c if 33 <= c <= 126 else 63 for c in host).decode("ascii")
        super().__init__(f"Sorry, I couldn't find any host named {safe}. (#5.1.2)")


class NoMailExchanger(PermFail):
    """Sorry, I couldn't find a mail exchanger or IP address. (#5.4.4)"""


class OwnMX(PermFail):
    """Sorry. Although I'm listed as a best-preference MX or A for that host,
it isn't in my control/locals file, so I don't treat it as local. (#5.4.6)"""


class LocalAddresses(TempFail):
    """System resources temporarily unavailable. (#4.3.0)"""


class Target:
    """One address to try, with the MX preference it came from."""

    __slots__ = ("pref", "ip")

    def __init__(self, pref: int, ip: str) -> None:
        self.pref = pref
        self.ip = ip

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Target) and (self.pref, self.ip) == (other.pref, other.ip)

    def __hash__(self) -> int:
        return hash((self.pref, self.ip))

    def __repr__(self) -> str:
        return f"Target({self.pref}, {self.ip!r})"


# -- literals -----------------------------------------------------------------------

def literal(host: bytes) -> str | None:
    """The IP of ``[1.2.3.4]``, ``[IPv6:…]``, ``[::1]`` or a bare dotted quad; else None."""
    text = host.decode("latin-1")
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1]
        if inner[:5].lower() == "ipv6:":
            inner = inner[5:]
        try:
            return str(ipaddress.ip_address(inner))
        except ValueError:
            return None
    parts = text.split(".")
    if len(parts) == 4 and all(p.isdigit() and p.isascii() for p in parts):
        try:
            return str(ipaddress.IPv4Address(".".join(str(int(p)) for p in parts)))
        except ValueError:
            return None
    return None


# -- DNS ------------------------------------------------------------------------------

class _Lookup:
    """One resolver and the outcome classes of dnspython's exceptions."""

    def __init__(self) -> None:
        import dns.exception
        import dns.name
        import dns.resolver

        from qpy import resolver
        self.dns = dns
        self.res = resolver.make_resolver()

    def name(self, host: bytes):
        """The dns.name for a host; an unusable name is NoSuchHost."""
        try:
            if host.isascii():
                return self.dns.name.from_text(host.decode("ascii"))
            return self.dns.name.from_unicode(host.decode("utf-8"))
        except (UnicodeError, self.dns.exception.DNSException, ValueError):
            raise NoSuchHost(host) from None

    def query(self, name, rdtype: str) -> tuple[str, list]:
        """("ok", rdatas) | ("nodata", []) | ("nxdomain", []) | ("soft", [])."""
        dns = self.dns
        try:
            answer = self.res.resolve(name, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return "nxdomain", []
        except dns.resolver.NoAnswer:
            return "nodata", []
        except (dns.resolver.YXDOMAIN, dns.name.NameTooLong, dns.name.EmptyLabel):
            return "nxdomain", []
        except dns.exception.DNSException:
            return "soft", []
        if answer.rrset is None:
            return "nodata", []
        return "ok", list(answer.rrset)

    def addresses(self, name) -> tuple[list[str], str]:
        """A then AAAA of one name: (ips, worst outcome among "ok"/"nodata"/"nxdomain"/"soft")."""
        ips: list[str] = []
        states = []
        for rdtype in ("A", "AAAA"):
            state, rdatas = self.query(name, rdtype)
            states.append(state)
            ips += [str(ipaddress.ip_address(r.address)) for r in rdatas]
        if "soft" in states:
            return ips, "soft"
        if "ok" in states:
            return ips, "ok"
        if "nodata" in states:
            return ips, "nodata"
        return ips, "nxdomain"


def warm_up() -> None:
    """Import dnspython now: a warm spawner (qmail-rspawn) calls this once so its forked
    qmail-remote children do not each pay the import.  No lookup is made."""
    import dns.exception  # noqa: F401
    import dns.name  # noqa: F401
    import dns.resolver  # noqa: F401

    from qpy import resolver  # noqa: F401


def relay_targets(host: bytes) -> list[Target]:
    """qmail's dns_ip(): a literal, else the host's A and AAAA addresses (preference 0)."""
    ip = literal(host)
    if ip is not None:
        return [Target(0, ip)]
    if not host:
        raise NoSuchHost(host)
    look = _Lookup()
    return _host_addresses(look, host, look.name(host))


def _host_addresses(look: _Lookup, host: bytes, name) -> list[Target]:
    ips, state = look.addresses(name)
    if ips:
        return [Target(0, ip) for ip in ips]
    if state == "soft":
        raise DnsTemp()
    if state == "ok":
        raise NoMailExchanger()
    raise NoSuchHost(host)


def mx_targets(host: bytes, rng: random.Random | None = None) -> list[Target]:
    """qmail's dns_mxip(): literal, else MX hosts' addresses in order, else the host's own."""
    ip = literal(host)
    if ip is not None:
        return [Target(0, ip)]
    if not host:
        raise NoSuchHost(host)
    look = _Lookup()
    name = look.name(host)
    state, rdatas = look.query(name, "MX")
    if state == "soft":
        raise DnsTemp()
    if state == "nxdomain":
        raise NoSuchHost(host)
    if not rdatas:
        return _host_addresses(look, host, name)
    rng = rng or random.SystemRandom()
    by_pref: dict[int, list] = {}
    for r in rdatas:
        by_pref.setdefault(r.preference, []).append(r.exchange)
    targets: list[Target] = []
    soft = False
    for pref in sorted(by_pref):
        exchanges = by_pref[pref]
        rng.shuffle(exchanges)
        for exchange in exchanges:
            if exchange == look.dns.name.root:
                continue   # null MX (RFC 7505): this exchanger accepts no mail
            text = exchange.to_text(omit_final_dot=True).encode("ascii")
            ip = literal(text)
            if ip is not None:
                targets.append(Target(pref, ip))
                continue
            ips, state = look.addresses(exchange)
            soft = soft or state == "soft"
            targets += [Target(pref, ip) for ip in ips]
    if not targets:
        if soft:
            raise DnsTemp()
        raise NoMailExchanger()
    return targets


# -- our own addresses ------------------------------------------------------------------

def own_ips() -> set[str]:
    """This host's addresses (qmail's ipme): every interface address, plus 0.0.0.0 and ::."""
    ips = {"0.0.0.0", "::"}
    ips |= _ipv4_interfaces()
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                field = line.split()[0]
                ips.add(str(ipaddress.IPv6Address(bytes.fromhex(field))))
    except (OSError, ValueError, IndexError):
        pass    # no IPv6 on this host
    return ips


def _ipv4_interfaces() -> set[str]:
    """Every IPv4 interface address, aliases included (SIOCGIFCONF)."""
    import array
    import fcntl
    size = 40 if struct.calcsize("P") == 8 else 32     # struct ifreq
    buf = array.array("B", bytes(size * MAX_INTERFACES))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            request = struct.pack("iP", len(buf), buf.buffer_info()[0])
            result = fcntl.ioctl(s.fileno(), SIOCGIFCONF, request)
    except OSError as e:
        raise LocalAddresses() from e
    used = struct.unpack("iP", result)[0]
    data = buf.tobytes()[:used]
    ips = set()
    for off in range(0, used - size + 1, size):
        family = struct.unpack_from("H", data, off + 16)[0]
        if family == socket.AF_INET:
            ips.add(socket.inet_ntoa(data[off + 20:off + 24]))
    return ips


def drop_own(targets: list[Target], own: set[str]) -> list[Target]:
    """Keep targets preferred over every own address; none left → OwnMX."""
    prefme = min((t.pref for t in targets if _canon(t.ip) in own), default=100000)
    kept = [t for t in targets if t.pref < prefme]
    if not kept:
        raise OwnMX()
    return kept


def _canon(ip: str) -> str:
    """Canonical text; an IPv4-mapped IPv6 address counts as its IPv4 address."""
    addr = ipaddress.ip_address(ip)
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)
