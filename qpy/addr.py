"""Address helpers.  Addresses are bytes; the ``@`` that counts is always the last one."""
from __future__ import annotations

_ATOM = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                  b".!#$%&'*+-/=?^_`{|}~" + bytes(range(0x80, 0x100)))   # RFC 6531: UTF-8 too


def split(address: bytes) -> tuple[bytes, bytes | None]:
    """Split at the last ``@``: (local, domain); domain None when there is no ``@``."""
    i = address.rfind(b"@")
    if i == -1:
        return address, None
    return address[:i], address[i + 1:]


def domain_of(address: bytes) -> bytes:
    """The text after the last ``@`` (empty if none)."""
    i = address.rfind(b"@")
    return b"" if i == -1 else address[i + 1:]


def domain_keys(domain: bytes) -> list[bytes]:
    """qmail's lookup keys for a domain (rcpthosts, virtualdomains, smtproutes): the
    domain, then each suffix of it that starts at a ``.``, longest first."""
    keys = [domain]
    i = domain.find(b".")
    while i != -1:
        keys.append(domain[i:])
        i = domain.find(b".", i + 1)
    return keys


def needs_quote(local: bytes) -> bool:
    """True if an RFC 5321 local part must be quoted (docs/protocols.md §4); bytes of
    UTF-8 (>= 0x80) are atom characters, as RFC 6531 extends the dot-atom."""
    if not local or local.startswith(b".") or local.endswith(b".") or b".." in local:
        return True
    return any(ch not in _ATOM for ch in local)


def quote_local(local: bytes) -> bytes:
    """Quote a local part when needed: ``"…"`` with ``\\`` before CR, LF, ``"`` and ``\\``."""
    if not needs_quote(local):
        return local
    out = bytearray(b'"')
    for ch in local:
        if ch in b'\r\n"\\':
            out += b"\\"
        out.append(ch)
    out += b'"'
    return bytes(out)


def quote(address: bytes) -> bytes:
    """Quote the local part of an address if needed; the domain is passed as is."""
    local, domain = split(address)
    if domain is None:
        return quote_local(local)
    return quote_local(local) + b"@" + domain


def safe_log(text: bytes) -> bytes:
    """qmail-send's logsafe: ``\\n`` → ``/``; bytes < 33, > 126 or ``%`` → ``_``."""
    out = bytearray(text)
    for i, ch in enumerate(out):
        if ch == 10:
            out[i] = 0x2F
        elif ch < 33 or ch > 126 or ch == 0x25:
            out[i] = 0x5F
    return bytes(out)
