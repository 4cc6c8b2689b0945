"""Control files: QMAILHOME/control/<name>, read as qmail's control.c does.

A missing file means the default; any other error is a ControlError (a
temporary failure).  Trailing spaces, tabs and newlines are stripped from every
line.  Values are bytes: control files hold host names and addresses.  Every
default, and whether a file defaults to control/me, comes from qpy.controlfiles;
a name it does not declare is a programming error (KeyError).
"""
from __future__ import annotations

import os

from qpy import addr, auto, controlfiles, scan
from qpy.errors import ControlError

_STRIP = b" \t\r\n"

def control_path(name: str) -> str:
    """Return the path of control file ``name``."""
    return auto.path("control", name)


def read_bytes(name: str) -> bytes | None:
    """Return the whole file, or None if it does not exist."""
    try:
        with open(control_path(name), "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ControlError(f"Unable to read control/{name}: {e.strerror}. (#4.3.0)") from e


def _lines(data: bytes) -> list[bytes]:
    """Split into lines, each with trailing blanks removed."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line.rstrip(_STRIP) for line in lines]


def _line_default(name: str) -> bytes | None:
    """The declared literal of a line file (None: no value)."""
    value = controlfiles.entry(name).default
    return value if isinstance(value, bytes) else None


def first_line(name: str) -> bytes | None:
    """Return the first line, or None if the file is missing (no default applied)."""
    data = read_bytes(name)
    if data is None:
        return None
    lines = _lines(data)
    return lines[0] if lines else b""


def read_line(name: str, default: bytes | None = None) -> bytes | None:
    """Return the first line of a line file, or its declared default if missing.

    ``default`` overrides the declared one; only qmail-send still passes it.
    """
    line = first_line(name)
    if line is not None:
        return line
    return default if default is not None else _line_default(name)


def read_int(name: str, default: int | None = None) -> int:
    """Return the first line parsed as unsigned decimal; the declared default if missing
    or not numeric (``default`` overrides it; only qmail-send still passes it)."""
    if default is None:
        declared = controlfiles.entry(name).default
        if not isinstance(declared, int):
            raise TypeError(f"control/{name} has no int default")
        default = declared
    line = first_line(name)
    if line is None:
        return default
    digits = scan.digits(line)
    return int(digits) if digits else default


def read_list(name: str, default: list[bytes] | None = None) -> list[bytes] | None:
    """Return the non-empty, non-comment lines, or the declared default if missing.

    A "default me" list (locals) defaults to [me], or None without me; me is read
    first, as qmail's control_init does.  ``default`` overrides (only qmail-send).
    """
    if default is None and controlfiles.entry(name).me:
        host = me()
        default = [host] if host else None
    data = read_bytes(name)
    if data is None:
        return default
    return [line for line in _lines(data) if line and not line.startswith(b"#")]


def me() -> bytes | None:
    """Return control/me's first line, or None."""
    return read_line("me")


def read_line_me(name: str, literal: bytes | None = None) -> bytes | None:
    """A "default me" line file: file, else control/me, else its declared literal.

    ``literal`` overrides the declared one; only qmail-send still passes it.
    """
    value = first_line(name)
    if value is not None:
        return value
    value = me()
    if value is not None:
        return value
    return literal if literal is not None else _line_default(name)


def read_host(name: str) -> bytes:
    """A "default me" host name that is never empty: read_line_me, and an empty value
    (from the file or from me) also means the declared literal (qmail-send's hosts)."""
    return read_line_me(name) or _line_default(name) or b""


def exists(name: str) -> bool:
    """True if control/<name> exists."""
    return os.path.exists(control_path(name))


class DomainSet:
    """A case-insensitive set of domains with qmail's suffix matching (constmap)."""

    def __init__(self, entries: list[bytes]) -> None:
        self.entries = {e.lower() for e in entries}

    def __contains__(self, domain: bytes) -> bool:
        return domain.lower() in self.entries

    def matches_suffix(self, domain: bytes) -> bool:
        """True if the domain, or a suffix starting at a '.', is listed."""
        return any(key in self.entries for key in addr.domain_keys(domain.lower()))


def read_map(name: str) -> dict[bytes, bytes] | None:
    """Read a ``key:value`` list file into a dict with lowercased keys; last wins."""
    lines = read_list(name)
    if lines is None:
        return None
    table: dict[bytes, bytes] = {}
    for line in lines:
        key, sep, value = line.partition(b":")
        if sep:
            table[key.lower()] = value
    return table
