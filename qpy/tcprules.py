"""tcprules files: parse rule lines, compile them to ucspi-tcp's cdb, look a client up.

A rule line is ``address:allow`` or ``address:deny`` followed by any number of
``,VAR=<q>value<q>`` (``<q>`` any single quote character).  The cdb written is
byte-for-byte what ucspi-tcp's tcprules writes: key = the address text (with
``1.2.3.37-53`` and ``10.2-3.`` expanded to one key per number), value = ``D\\0``
if denying, then ``+VAR=value\\0`` per variable.  ``find`` walks the keys in
tcpserver's lookup order (docs/ucspi-tcp.md); IPv6 addresses also try the prefixes
ending in ``:``, as the IPv6 patches of ucspi-tcp do.  Extension: a line such as
``::1:allow`` or ``2001:db8::allow`` (which ucspi-tcp rejects, its address
ending at the first ``:``) is read as an IPv6 address or prefix; write IPv6
addresses in their RFC 5952 form (``2001:db8::1``), as tcpserver sets them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator

from qpy import addr, cdb
from qpy.errors import PermFail

_TRIM = b"\n \t"
_IPV6 = frozenset(b"0123456789abcdefABCDEF:.")


class BadLine(PermFail):
    """A rule line tcprules cannot parse; the text is the (trimmed) line."""


@dataclass
class Rule:
    """What a cdb value says: deny or allow, and the variables to set."""

    deny: bool = False
    env: list[tuple[bytes, bytes]] = field(default_factory=list)


def _number(text: bytes, line: bytes) -> int:
    """A range end: decimal digits (empty = 0), as Debian's tcprules checks."""
    if text and not text.isdigit():
        raise BadLine(line.decode("latin-1"))
    return int(text) if text else 0


def _ipv6_colon(line: bytes) -> int:
    """qpy extension: the colon ending an IPv6 address (``[info@]hex:…``), or -1.

    ucspi-tcp splits at the first ``:``, which an IPv6 address already holds; a
    line ucspi-tcp would reject is read this way if what precedes a ``:allow`` or
    ``:deny`` is an IPv6 address or prefix (hex digits, ``:`` and ``.`` only).
    """
    colon = line.find(b":")
    while colon != -1:
        rest = line[colon + 1:]
        if rest.startswith(b"allow") or rest.startswith(b"deny"):
            address = line[:colon].rpartition(b"@")[2]
            if address and all(ch in _IPV6 for ch in address) and b":" in address:
                return colon
        colon = line.find(b":", colon + 1)
    return -1


def parse_line(raw: bytes) -> tuple[bytes, bytes] | None:
    """One input line → (address, cdb value), or None for a comment/blank/colonless line."""
    if raw.startswith(b"#"):
        return None
    line = raw.rstrip(_TRIM)
    colon = line.find(b":")
    if colon == -1:
        return None
    try:
        return _parse(line, colon)
    except BadLine:
        colon = _ipv6_colon(line)
        if colon == -1:
            raise
        return _parse(line, colon)


def _parse(line: bytes, colon: int) -> tuple[bytes, bytes]:
    """Split at ``colon`` and encode the instructions.  Raises BadLine."""
    address, rest = line[:colon], line[colon + 1:]
    bad = BadLine(line.decode("latin-1"))
    if rest.startswith(b"deny"):
        data, rest = bytearray(b"D\0"), rest[4:]
    elif rest.startswith(b"allow"):
        data, rest = bytearray(), rest[5:]
    else:
        raise bad
    while rest:
        if rest[:1] != b",":
            raise bad
        eq = rest.find(b"=")
        if eq == -1 or eq + 1 >= len(rest):
            raise bad
        quote = rest[eq + 1:eq + 2]
        end = rest.find(quote, eq + 2)
        if end == -1:
            raise bad
        data += b"+" + rest[1:eq + 1] + rest[eq + 2:end] + b"\0"
        rest = rest[end + 1:]
    return address, bytes(data)


def expand(address: bytes, line: bytes = b"") -> list[bytes]:
    """The keys for an address: ``1.2.3.37-53`` → one per number (top capped at 255)."""
    dash = address.find(b"-")
    if b"=" in address or b"@" in address or dash == -1:
        return [address]
    left = address.rfind(b".", 0, dash) + 1
    right = address.find(b".", dash + 1)
    if right == -1:
        right = len(address)
    bot = _number(address[left:dash], line or address)
    top = min(_number(address[dash + 1:right], line or address), 255)
    return [address[:left] + b"%d" % n + address[right:] for n in range(bot, top + 1)]


def compile_rules(text: bytes) -> list[tuple[bytes, bytes]]:
    """All cdb records for a rules text, in input order.  Raises BadLine."""
    records = []
    lines = text.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for raw in lines:
        parsed = parse_line(raw)
        if parsed is None:
            continue
        address, data = parsed
        for key in expand(address, raw.rstrip(_TRIM)):
            records.append((key, data))
    return records


def write(path: str, tmp: str, records: Iterable[tuple[bytes, bytes]]) -> None:
    """Write the cdb through ``tmp`` (fsync, rename).  OSError.filename2 set = the rename failed."""
    cdb.rebuild(path, records, tmp=tmp)


def decode(value: bytes) -> Rule:
    """A cdb value → Rule; as tcpserver: ``D`` denies, ``+VAR=value`` sets, the rest is ignored."""
    rule = Rule()
    for record in value.split(b"\0")[:-1]:
        if record[:1] == b"D":
            rule.deny = True
        elif record[:1] == b"+":
            name, eq, val = record[1:].partition(b"=")
            if eq:
                rule.env.append((name, val))
    return rule


def keys(ip: bytes, host: bytes | None, info: bytes | None) -> Iterator[bytes]:
    """The keys tcpserver tries, in order (docs/ucspi-tcp.md, "Lookup order")."""
    if info is not None:
        yield info + b"@" + ip
        if host is not None:
            yield info + b"@=" + host
    yield ip
    if host is not None:
        yield b"=" + host
    seps = b".:" if b":" in ip else b"."
    for n in range(len(ip), 0, -1):
        if ip[n - 1] in seps:
            yield ip[:n]
    if host is not None:
        for suffix in addr.domain_keys(host)[1:]:
            yield b"=" + suffix
        yield b"="
    yield b""


def find(path: str, ip: bytes, host: bytes | None, info: bytes | None) -> tuple[bytes, bytes] | None:
    """The first (key, value) present for this client, or None.

    Raises CdbError (its __cause__ is the OSError, if any) when the file cannot be read.
    """
    with cdb.Table(path) as table:
        for key in keys(ip, host, info):
            value = table.get(key)
            if value is not None:
                return key, value
    return None
