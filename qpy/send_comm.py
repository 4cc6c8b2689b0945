"""qmail-send COMMUNICATION: the pipes to qmail-lspawn, qmail-rspawn and qmail-clean.

Spawner commands are written without blocking (a stuck spawner must never block the
loop; one command is buffered per channel, as in qmail); reports are read as they
come and cut into ``<slot><letter><text>`` records (docs/protocols.md §2).  qmail-clean
requests (docs/protocols.md §6) may be left outstanding: it answers in order, and each
answer is handed to the request's callback when it is read.  A lost pipe logs its
alert once and makes qmail-send exit as soon as possible.
"""
from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from qpy import fdio, log
from qpy.errors import TempFail
from qpy.schedule import CHANNELS

if TYPE_CHECKING:
    from qpy.send_core import Core, Wait
    from qpy.send_jobs import Delivery

FD_TO_SPAWN = (1, 3)
FD_FROM_SPAWN = (2, 4)
FD_TO_CLEAN, FD_FROM_CLEAN = 5, 6
REPORTMAX = 10000       # bytes of a report record kept (slot + letter + text)
CLEAN_OUTSTANDING = 512 # qmail-clean requests sent but not yet answered, at most
READ_CHUNK = 65536


class ReportReader:
    """Splits a spawner's output into report records: ``<slot><letter><text>\\0``.

    The slot byte may itself be NUL; a record is cut at REPORTMAX bytes.
    """

    def __init__(self) -> None:
        self.buf = bytearray()
        self.started = False

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the records completed by them (without the NUL)."""
        done = []
        i = 0
        while i < len(data):
            if not self.started:
                self.buf.append(data[i])
                self.started = True
                i += 1
                continue
            j = data.find(b"\0", i)
            end = len(data) if j == -1 else j
            room = REPORTMAX - len(self.buf)
            if room > 0:
                self.buf += data[i:min(end, i + room)]
            if j == -1:
                break
            done.append(bytes(self.buf))
            self.buf.clear()
            self.started = False
            i = j + 1
        return done


class Spawner:
    """One delivery channel: its command pipe, report pipe and slot table."""

    def __init__(self, channel: int, fd_out: int, fd_in: int, concurrency: int) -> None:
        self.channel = channel
        self.fd_out, self.fd_in = fd_out, fd_in
        self.concurrency = concurrency
        self.slots: list[Delivery | None] = [None] * concurrency
        self.used = 0
        self.alive = True
        self.pending = b""
        self.reader = ReportReader()

    def available(self) -> bool:
        """True if a new delivery can start on this channel now."""
        return self.alive and not self.pending and self.used < self.concurrency

    def free_slot(self) -> int:
        """The lowest free slot (caller checked available())."""
        return self.slots.index(None)

    def flush(self) -> bool:
        """Write what is buffered without blocking; False if the spawner is gone."""
        while self.pending:
            try:
                n = os.write(self.fd_out, self.pending)
            except BlockingIOError:
                return True
            except OSError:
                return False
            self.pending = self.pending[n:]
        return True


class Cleaner:
    """The client side of qmail-clean, on fds 5 and 6.

    ``send`` leaves requests outstanding, ``collect`` dispatches the replies read so
    far, ``request`` waits for its own.
    """

    def __init__(self, fd_out: int = FD_TO_CLEAN, fd_in: int = FD_FROM_CLEAN) -> None:
        self.fd_out, self.fd_in = fd_out, fd_in
        self.alive = True
        self.waiting: deque[tuple[str, Callable[[str, int], None] | None]] = deque()

    def send(self, names: list[str], done: Callable[[str, int], None] | None) -> bool:
        """Send requests; ``done(name, reply byte)`` runs when each is answered.  False if clean died."""
        if not self.alive:
            return False
        if len(self.waiting) >= CLEAN_OUTSTANDING and not self.collect(block=True):
            return False
        try:
            fdio.write_all(self.fd_out, b"".join(n.encode() + b"\0" for n in names))
        except OSError:
            self.alive = False
            return False
        self.waiting.extend((n, done) for n in names)
        return True

    def collect(self, block: bool) -> bool:
        """Read replies (one read, or until none is outstanding if ``block``); False if clean died."""
        while self.waiting:
            try:
                data = os.read(self.fd_in, len(self.waiting))
            except OSError:
                data = b""
            if not data:
                self.alive = False
                self.waiting.clear()
                return False
            for reply in data:
                name, done = self.waiting.popleft()
                if done is not None:
                    done(name, reply)
            if not block:
                break
        return True

    def request(self, names: list[str]) -> bytes | None:
        """Send ``foop/N`` / ``todo/N`` requests; return one reply byte each, None if clean died."""
        if not names:
            return b""
        replies = bytearray()
        if not self.send(names, lambda name, reply: replies.append(reply)):
            return None
        if not self.collect(block=True):
            return None
        return bytes(replies)


def read_limits() -> list[int]:
    """One byte from each spawner (fds 2 and 4): its slot limit; TempFail if one is missing."""
    limits = []
    for fd in FD_FROM_SPAWN:
        try:
            byte = os.read(fd, 1)
        except OSError:
            byte = b""
        if not byte:
            raise TempFail("hath the daemon spawn no fire?")
        limits.append(byte[0])
    return limits


class Comm:
    """The section: both spawners and qmail-clean, with the alerts for lost pipes."""

    def __init__(self, core: Core, concurrency: list[int]) -> None:
        self.core = core
        self.spawners = [Spawner(c, FD_TO_SPAWN[c], FD_FROM_SPAWN[c], concurrency[c])
                         for c in CHANNELS]
        self.cleaner = Cleaner()

    def init(self) -> None:
        """Non-blocking spawner pipes."""
        for sp in self.spawners:
            try:
                os.set_blocking(sp.fd_out, False)
                os.set_blocking(sp.fd_in, False)
            except OSError:
                self.spawn_died(sp)

    def status(self) -> None:
        """Log the ``status:`` line."""
        local, remote = self.spawners
        self.core.log.line(log.status((local.used, remote.used),
                                      (local.concurrency, remote.concurrency),
                                      self.core.exitasap))

    def spawn_died(self, sp: Spawner) -> None:
        """A spawner pipe broke: stop using it and exit as soon as possible."""
        if sp.alive:
            self.core.log.alert("oh no! lost spawn connection! dying...")
        sp.alive = False
        self.core.exitasap = True

    def send_command(self, sp: Spawner, data: bytes) -> None:
        """Buffer one command for ``sp`` and write what it takes now."""
        sp.pending = data
        if not sp.flush():
            self.spawn_died(sp)

    def can_exit(self) -> bool:
        """True when no live spawner has a delivery in flight."""
        return all(not sp.alive or not sp.used for sp in self.spawners)

    def clean(self, names: list[str]) -> bytes | None:
        """Ask qmail-clean and wait; on a lost connection log the alert and exit asap."""
        was_alive = self.cleaner.alive
        replies = self.cleaner.request(names)
        if replies is None:
            self.lost_cleaner(was_alive)
        return replies

    def clean_async(self, names: list[str], done: Callable[[str, int], None]) -> None:
        """Ask qmail-clean without waiting; ``done(name, reply)`` runs once it answered."""
        was_alive = self.cleaner.alive
        if names and not self.cleaner.send(names, done):
            self.lost_cleaner(was_alive)

    def clean_collect(self, block: bool) -> None:
        """Dispatch the replies qmail-clean has sent (all outstanding ones if ``block``)."""
        was_alive = self.cleaner.alive
        if self.cleaner.waiting and not self.cleaner.collect(block):
            self.lost_cleaner(was_alive)

    def lost_cleaner(self, was_alive: bool) -> None:
        """qmail-clean is gone: log the alert once and exit asap."""
        if was_alive:
            self.core.log.alert("oh no! lost qmail-clean connection! dying...")
        self.core.exitasap = True

    def prep(self, wait: Wait) -> None:
        """Watch live spawners' reports, pending commands and outstanding clean answers."""
        for sp in self.spawners:
            if sp.alive:
                wait.rfds.append(sp.fd_in)
                if sp.pending:
                    wait.wfds.append(sp.fd_out)
        if self.cleaner.waiting:
            wait.rfds.append(self.cleaner.fd_in)

    def do(self, readable: set[int], writable: set[int],
           report: Callable[[Spawner, bytes], None]) -> None:
        """Write pending commands, hand each complete report to ``report``, collect clean answers."""
        for sp in self.spawners:
            if sp.alive and sp.pending and sp.fd_out in writable and not sp.flush():
                self.spawn_died(sp)
        for sp in self.spawners:
            if not sp.alive or sp.fd_in not in readable:
                continue
            data = fdio.read_ready(sp.fd_in, READ_CHUNK)
            if data is None:
                continue
            if not data:
                self.spawn_died(sp)
                continue
            for record in sp.reader.feed(data):
                report(sp, record)
        if self.cleaner.fd_in in readable:
            self.clean_collect(block=False)
