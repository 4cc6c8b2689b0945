"""Numbers read the way qmail's C code reads them (scan.h): the leading ASCII decimal
digits of a text, the rest ignored.  Works on bytes (control files, records) and str
(argv, the environment) alike."""
from __future__ import annotations

from typing import AnyStr


def digits(text: AnyStr) -> AnyStr:
    """The leading ASCII decimal digits of ``text`` (empty if it does not start with one)."""
    rest = text.lstrip(b"0123456789" if isinstance(text, bytes) else "0123456789")  # type: ignore[arg-type]
    return text[:len(text) - len(rest)]


def ulong(text: str | bytes) -> int:
    """qmail's scan_ulong: the leading decimal digits as a number, 0 if none."""
    found = digits(text)
    return int(found) if found else 0
