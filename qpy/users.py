"""users/assign and users/cdb (qmail-users(5)): compile and look up.

``compile_assign`` turns assign text into cdb records exactly as qmail-newu
does; ``lookup`` answers qmail-lspawn's question for a local part with the six
fields of a users/cdb value as a ``getpw.Entry`` (qmail-getpw answers with the
same six), ext completed for wildcard hits.
"""
from __future__ import annotations

import dataclasses

from qpy import auto, cdb
from qpy.errors import FormatError
from qpy.getpw import Entry


def compile_assign(text: bytes) -> list[tuple[bytes, bytes]]:
    """Return the cdb records for users/assign text; FormatError names the bad line."""
    records: list[tuple[bytes, bytes]] = []
    wildchars = bytearray()
    pos = 0
    lineno = 0
    while True:
        lineno += 1
        nl = text.find(b"\n", pos)
        if nl == -1:
            if text[pos:].startswith(b"."):
                break
            raise FormatError(f"line {lineno}: missing final '.' line or newline")
        line = text[pos:nl]
        pos = nl + 1
        if line.startswith(b"."):
            break
        if b"\0" in line:
            raise FormatError(f"line {lineno}: contains a NUL byte")
        kind = line[:1]
        i = line.find(b":")
        if kind not in (b"=", b"+") or i < 1:
            raise FormatError(f"line {lineno}: must start with = or + and hold a ':'")
        local = line[1:i].lower()
        if kind == b"+":
            key = b"!" + local
            if i >= 2 and line[i - 1] not in wildchars:
                wildchars.append(line[i - 1])
        else:
            key = b"!" + local + b"\0"
        fields = line[i + 1:].split(b":")
        if len(fields) < 7:
            raise FormatError(f"line {lineno}: needs user:uid:gid:home:dash:ext: after the address")
        records.append((key, b"\0".join(fields[:6])))
    records.append((b"", bytes(wildchars)))
    return records


def parse_value(value: bytes) -> Entry:
    """Split a users/cdb value into its fields."""
    parts = value.split(b"\0")
    if len(parts) != 6 or not parts[1].isdigit() or not parts[2].isdigit():
        raise FormatError("users/cdb: bad record")
    return Entry(parts[0], int(parts[1]), int(parts[2]), parts[3], parts[4], parts[5])


def lookup(local: bytes, path: str | None = None) -> Entry | None:
    """qmail-lspawn's users/cdb lookup for a local part (docs/control.md §3); None = ask qmail-getpw."""
    table = cdb.open_cached(path or auto.path("users", "cdb"))   # kept open: reused while unchanged
    if table is None:
        return None
    lower = local.lower()
    value = table.get(b"!" + lower + b"\0")
    if value is not None:
        return parse_value(value)
    wildchars = table.get(b"") or b""
    for i in range(len(local), -1, -1):
        if i > 0 and local[i - 1] not in wildchars:
            continue
        value = table.get(b"!" + lower[:i])
        if value is not None:
            a = parse_value(value)
            return dataclasses.replace(a, ext=a.ext + local[i:])
    return None
