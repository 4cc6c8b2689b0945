"""dot-qmail files (docs/control.md §4): which file applies to an address, and its lines.

``candidates(dash, ext)`` is qmail-local's search order; ``find(dash, ext)``
opens the first existing regular file of it in the current directory (the
home).  Every name is ``.qmail`` + dash + ext-derived text, and a name holding a
``/`` is never tried: ext comes from an envelope address, so nothing it holds
can make a path outside the home directory (``.qmail-default`` still matches).
``lines(text)`` and ``classify(line)`` split and sort a file's lines.
"""
from __future__ import annotations

import errno
import os
import stat
from qpy import errstr, fdio
from qpy.auto import PATTERN
from qpy.errors import TempFail, temporary_errno

DEFAULT = b"default"


def safe_ext(ext: bytes) -> bytes:
    """ext lowercased with every ``.`` turned into ``:``."""
    return ext.lower().replace(b".", b":")


def candidates(dash: bytes, ext: bytes) -> list[tuple[bytes, bytes | None]]:
    """(file name, DEFAULT value or None) in qmail-local's search order, ``/``-free names only.

    ext ``a-b-c``: ``.qmail-a-b-c``, ``-a-b-default``, ``-a-default``, ``-default``.
    """
    safe = safe_ext(ext)
    first_default = None
    if len(safe) >= 7 and safe.endswith(DEFAULT):
        first_default = ext[len(safe) - 7:]
    found = [(b".qmail" + dash + safe, first_default)]
    for i in range(len(safe), -1, -1):
        if i == 0 or safe[i - 1:i] == b"-":
            found.append((b".qmail" + dash + safe[:i] + DEFAULT, ext[i:]))
    return [(name, value) for name, value in found if b"/" not in name]


class Found:
    """An open dot-qmail file: its fd, its name, the DEFAULT value for *default files,
    and whether the user-execute bit (forward-only) is set."""

    __slots__ = ("fd", "name", "default", "forward_only")

    def __init__(self, fd: int, name: bytes, default: bytes | None, forward_only: bool) -> None:
        self.fd, self.name, self.default, self.forward_only = fd, name, default, forward_only

    def read(self) -> bytes:
        """Read the whole file and close it."""
        try:
            return fdio.read_all(self.fd)
        except OSError as e:
            raise TempFail(_unable(b"read", self.name, e)) from e
        finally:
            os.close(self.fd)


def _unable(verb: bytes, name: bytes, e: OSError) -> str:
    return os.fsdecode(b"Unable to " + verb + b" " + name + b": ") + errstr.text(e) + ". (#4.3.0)"


def open_if_file(name: bytes) -> tuple[int, bool] | None:
    """qmeexists: (fd, forward_only) if ``name`` is a regular file, None if absent.

    TempFail for temporary errors, EACCES and EPERM, and for a world-writable file.
    """
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        if temporary_errno(e.errno) or e.errno in (errno.EACCES, errno.EPERM):
            raise TempFail(_unable(b"open", name, e)) from e
        return None
    try:
        st = os.fstat(fd)
    except OSError as e:
        os.close(fd)
        raise TempFail(_unable(b"open", name, e)) from e
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    if st.st_mode & PATTERN:
        os.close(fd)
        raise TempFail("Uh-oh: .qmail file is writable. (#4.7.0)")
    return fd, bool(st.st_mode & 0o100)


def find(dash: bytes, ext: bytes) -> Found | None:
    """qmesearch in the current directory: the first existing candidate, opened."""
    for name, default in candidates(dash, ext):
        opened = open_if_file(name)
        if opened is not None:
            return Found(opened[0], name, default, opened[1])
    return None


def exists(name: bytes) -> bool:
    """qmeox: True if ``name`` exists (any type); TempFail on a temporary error."""
    if b"/" in name:
        return False
    try:
        os.stat(name)
    except OSError as e:
        if temporary_errno(e.errno):
            raise TempFail(_unable(b"open", name, e)) from e
        return False
    return True


def lines(text: bytes) -> list[bytes]:
    """Split a file (or defaultdelivery) into lines, trailing spaces and tabs removed."""
    if not text.endswith(b"\n"):
        text += b"\n"
    return [line.rstrip(b" \t") for line in text.split(b"\n")[:-1]]


BLANK, COMMENT, MAILDIR, MBOX, PROGRAM, LIST, IGNORED, FORWARD = (
    "blank", "comment", "maildir", "mbox", "program", "list", "ignored", "forward")


def classify(line: bytes) -> tuple[str, bytes]:
    """(kind, argument) of one stripped line: the table of docs/control.md §4."""
    if not line:
        return BLANK, b""
    first = line[0]
    if first == 0x23:                       # '#'
        return COMMENT, line
    if first in (0x2E, 0x2F):               # '.' or '/'
        return (MAILDIR if line.endswith(b"/") else MBOX), line
    if first == 0x7C:                       # '|'
        return PROGRAM, line[1:]
    if first == 0x2B:                       # '+'
        return (LIST if line == b"+list" else IGNORED), line
    if first == 0x26:                       # '&'
        return FORWARD, line[1:]
    return FORWARD, line
