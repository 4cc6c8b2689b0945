"""queue/lock/tcpto: qmail-remote's memory of hosts whose connect timed out (docs/queue.md §9).

IPv4 records live in ``queue/lock/tcpto`` exactly as qmail keeps them, so qmail's own
qmail-tcpto/qmail-tcpok can read and clear the file: 1024 bytes = 64 records × 16
bytes; bytes 0–3 the address, byte 4 the count of consecutive connect timeouts (≤ 10),
bytes 8–11 the time of the last one (little-endian); the rest zero.

IPv6 records (a qpy extension) live in a second file, ``queue/lock/tcpto6``, so the
first stays byte-compatible: 2048 bytes = 64 records × 32 bytes; bytes 0–15 the
address, byte 16 the count, bytes 24–31 the time of the last timeout (little-endian,
64-bit); the rest zero.  The same rules apply to both files.  A missing or
unreadable file means "nothing known" (as qmail's tcpto.c): no host is skipped and
nothing is recorded.

Rules (tcpto.c): a host is skipped while its count is ≥ 2 and its last timeout is
less than ``(60 + (pid & 31)) * 64`` seconds old.  Only connect timeouts count; a
successful connect or another error resets the count of a host already listed.  A
timeout within 120 s of the previous one is not counted.  A new host takes a free
(count 0) record, else the one with the smallest ``time + count * 1024``.  Every
access holds ``flock(LOCK_EX)`` on the file.
"""
from __future__ import annotations

import fcntl
import ipaddress
import os
import time

from qpy import auto

MAX_COUNT = 10
SKIP_COUNT = 2
GRACE = 120         # a timeout this soon after the previous one is not counted
AGE_WEIGHT = 1024   # replacement key: time + count * 1024


class Layout:
    """Where the fields of one family's records sit (name = file under queue/lock)."""

    def __init__(self, name: str, addrlen: int, reclen: int, count_at: int, time_at: int,
                 timelen: int) -> None:
        self.name, self.addrlen, self.reclen = name, addrlen, reclen
        self.count_at, self.time_at, self.timelen = count_at, time_at, timelen
        self.size = 64 * reclen


V4 = Layout("tcpto", 4, 16, 4, 8, 4)
V6 = Layout("tcpto6", 16, 32, 16, 24, 8)
LAYOUTS = (V4, V6)


class Entry:
    """One remembered host: address, count of recent timeouts, time of the last one."""

    __slots__ = ("ip", "count", "when")

    def __init__(self, ip: str, count: int, when: int) -> None:
        self.ip, self.count, self.when = ip, count, when

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Entry) and (self.ip, self.count, self.when) == (
            other.ip, other.count, other.when)

    def __repr__(self) -> str:
        return f"Entry({self.ip!r}, {self.count}, {self.when})"


def layout_for(ip: str) -> tuple[Layout, bytes]:
    """The layout and packed address for an IP in text form."""
    addr = ipaddress.ip_address(ip)
    return (V4 if addr.version == 4 else V6), addr.packed


def path(layout: Layout, home: str | None = None) -> str:
    """The file of one family."""
    return os.path.join(home or auto.home(), "queue", "lock", layout.name)


class _Locked:
    """The file opened read-write and flock'ed; the whole table read into ``buf``."""

    def __init__(self, layout: Layout, home: str | None, write: bool = True) -> None:
        self.layout = layout
        self.fd = os.open(path(layout, home), os.O_RDWR if write else os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            data = os.pread(self.fd, layout.size, 0)
        except OSError:
            os.close(self.fd)
            raise
        n = len(data) // layout.reclen
        self.buf = bytearray(data[:n * layout.reclen])
        self.n = n

    def record(self, i: int) -> memoryview:
        """Record i as a writable view."""
        r = self.layout.reclen
        return memoryview(self.buf)[i * r:(i + 1) * r]

    def addr(self, i: int) -> bytes:
        return bytes(self.record(i)[:self.layout.addrlen])

    def count(self, i: int) -> int:
        return self.record(i)[self.layout.count_at]

    def when(self, i: int) -> int:
        lay = self.layout
        return int.from_bytes(self.record(i)[lay.time_at:lay.time_at + lay.timelen], "little")

    def set(self, i: int, addr: bytes | None, count: int, when: int | None) -> None:
        """Change record i in memory and on disk."""
        lay = self.layout
        rec = self.record(i)
        if addr is not None:
            rec[:lay.addrlen] = addr
        rec[lay.count_at] = count
        if when is not None:
            mask = (1 << (8 * lay.timelen)) - 1
            rec[lay.time_at:lay.time_at + lay.timelen] = (when & mask).to_bytes(lay.timelen, "little")
        try:
            os.pwrite(self.fd, bytes(rec), i * lay.reclen)
        except OSError:
            pass    # as tcpto.c: the memory is advisory

    def find(self, addr: bytes) -> int:
        """Index of the record for addr, or -1."""
        for i in range(self.n):
            if self.addr(i) == addr:
                return i
        return -1

    def close(self) -> None:
        os.close(self.fd)


def _open(layout: Layout, home: str | None, write: bool = True) -> _Locked | None:
    """The locked table, or None if it cannot be used (qmail: getbuf() == 0)."""
    try:
        table = _Locked(layout, home, write)
    except OSError:
        return None
    if table.n == 0:
        table.close()
        return None
    return table


class Tcpto:
    """qmail-remote's view of the table for one run: ``skip(ip)`` then ``result(ip, timed_out)``."""

    def __init__(self, home: str | None = None, pid: int | None = None,
                 clock=time.time) -> None:
        self.home = home
        self.pid = os.getpid() if pid is None else pid
        self.clock = clock
        self.seen: set[str] = set()   # tcpto.c's flagwasthere, per address

    def now(self) -> int:
        return int(self.clock())

    def skip(self, ip: str) -> bool:
        """True if ``ip`` timed out repeatedly and recently: do not try it now."""
        layout, addr = layout_for(ip)
        table = _open(layout, self.home, write=False)
        if table is None:
            return False
        try:
            i = table.find(addr)
            if i < 0:
                return False
            self.seen.add(ip)
            if table.count(i) >= SKIP_COUNT:
                return self.now() - table.when(i) < (60 + (self.pid & 31)) << 6
            return False
        finally:
            table.close()

    def result(self, ip: str, timed_out: bool) -> None:
        """Record the outcome of a connect attempt to ``ip``."""
        if not timed_out and ip not in self.seen:
            return   # could have been added meanwhile, but not worth the effort (tcpto.c)
        layout, addr = layout_for(ip)
        table = _open(layout, self.home)
        if table is None:
            return
        try:
            self._update(table, addr, timed_out)
        finally:
            table.close()

    def _update(self, table: _Locked, addr: bytes, timed_out: bool) -> None:
        i = table.find(addr)
        if i >= 0:
            if not timed_out:
                table.set(i, None, 0, None)
                return
            now = self.now()
            count = table.count(i)
            if count and now < GRACE + table.when(i):
                return
            table.set(i, None, min(count + 1, MAX_COUNT), now)
            return
        if not timed_out:
            return
        free = [j for j in range(table.n) if table.count(j) == 0]
        if free:
            i = free[0]
        else:
            i = min(range(table.n), key=lambda j: (table.when(j) + table.count(j) * AGE_WEIGHT, j))
        table.set(i, addr, 1, self.now())


def entries(home: str | None = None) -> list[Entry]:
    """Every record with a nonzero count, IPv4 file first, in file order.

    Raises OSError if the IPv4 file cannot be opened or locked (qmail-tcpto reports
    that); a missing IPv6 file is simply empty.
    """
    found = []
    for layout in LAYOUTS:
        try:
            table = _Locked(layout, home, write=layout is V4)
        except FileNotFoundError:
            if layout is V4:
                raise
            continue
        try:
            for i in range(table.n):
                if table.count(i) >= 1:
                    ip = str(ipaddress.ip_address(table.addr(i)))
                    found.append(Entry(ip, table.count(i), table.when(i)))
        finally:
            table.close()
    return found


def clear(home: str | None = None) -> None:
    """Zero both files under their locks (qmail-tcpok, qmail-rspawn at startup).

    Raises OSError if the IPv4 file cannot be written; a missing IPv6 file is skipped.
    """
    for layout in LAYOUTS:
        try:
            fd = os.open(path(layout, home), os.O_WRONLY)
        except FileNotFoundError:
            if layout is V4:
                raise
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = b"\0" * layout.size
            view = memoryview(data)
            offset = 0
            while offset < len(data):
                offset += os.pwrite(fd, view[offset:], offset)
        finally:
            os.close(fd)
