"""CDB tables through cdblib: lookups by mmap, atomic rebuilds.

A rebuild writes ``<path>.tmp``, fsyncs it, renames it over ``<path>`` and
fsyncs the directory, so readers see the old table or the new one, never a mix.
"""
from __future__ import annotations

import mmap
import os
from typing import Iterable

import cdblib

from qpy import fdio
from qpy.errors import CdbError


class Table:
    """An open cdb file; ``get`` returns the first value for a key."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size < 2048:
                    raise CdbError(f"Unable to read {path}: truncated cdb. (#4.3.0)")
                self._map: mmap.mmap | None = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise CdbError(f"Unable to read {path}: {e.strerror}. (#4.3.0)") from e
        self._reader: cdblib.Reader | None = cdblib.Reader(self._map, strict=True)

    def get(self, key: bytes) -> bytes | None:
        """Return the first value stored under ``key``, or None."""
        if self._reader is None:
            return None
        try:
            return self._reader.get(key)
        except (ValueError, IndexError) as e:
            raise CdbError(f"Unable to read {self.path}: corrupt cdb. (#4.3.0)") from e

    def get_all(self, key: bytes) -> list[bytes]:
        """Return every value stored under ``key``, in insertion order."""
        if self._reader is None:
            return []
        return list(self._reader.gets(key))

    def items(self) -> list[tuple[bytes, bytes]]:
        """Return every record in file order."""
        if self._reader is None:
            return []
        return list(self._reader.iteritems())

    def close(self) -> None:
        """Release the mapping."""
        if self._map is not None:
            self._reader = None
            self._map.close()
            self._map = None

    def __enter__(self) -> "Table":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_table(path: str) -> Table | None:
    """Open a cdb, or return None if it does not exist."""
    if not os.path.exists(path):
        return None
    return Table(path)


_cached: dict[str, tuple[tuple[int, int, int, int], Table]] = {}


def open_cached(path: str) -> Table | None:
    """Like open_table, but the table stays open (do not close it) for later calls.

    It is reused while the file is unchanged: same device, inode, size and mtime
    (``rebuild`` renames a new file into place, so a rebuilt table is a new inode).
    One stat per call instead of mapping the file and parsing its 2 KB index.
    """
    try:
        st = os.stat(path)
    except OSError:
        old = _cached.pop(path, None)
        if old is not None:
            old[1].close()
        return None
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    hit = _cached.get(path)
    if hit is not None:
        if hit[0] == key:
            return hit[1]
        del _cached[path]
        hit[1].close()
    table = Table(path)
    _cached[path] = (key, table)
    return table


def lookup(path: str, key: bytes) -> bytes | None:
    """One lookup in the cdb at ``path``; None if the file or the key is missing."""
    table = open_table(path)
    if table is None:
        return None
    with table:
        return table.get(key)


def rebuild(path: str, records: Iterable[tuple[bytes, bytes]], tmp: str | None = None,
            mode: int = 0o644) -> None:
    """Write ``records`` as a new cdb at ``path`` atomically (tmp, fsync, rename)."""
    tmp = tmp or path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            with cdblib.Writer(f, strict=True) as writer:
                for key, value in records:
                    writer.put(key, value)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fdio.fsync_dir(os.path.dirname(os.path.abspath(path)))     # the rename is durable
