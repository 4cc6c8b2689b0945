"""qmail-send JOBS, DELIVERIES and PASSES (docs/queue.md §5).

A job is a pass over one channel file of one message plus its deliveries in flight;
each ``T`` record becomes one spawner command.  A report marks its record done
(``K``, ``D``: one ``D`` byte over the ``T``) and a ``D`` appends to bounce/<id>;
``Z`` leaves it for the retry schedule.  When a job's last reference goes, its
channel is rescheduled, or finished: the channel file is given back and, once both
channels are finished, the message goes to completion (send_done).

qmail opens one pass per channel per loop turn; here a pass that reaches the end of
its file is followed at once by the next due one (up to PASS_BATCH per turn), so a
burst of one-recipient messages fills every free slot in one turn.
"""
from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass

from qpy import bounce, fdio, log, queuedir
from qpy.schedule import CHANNELS, SLEEP_SYSFAIL, dying, next_retry
from qpy.send_comm import Comm, Spawner
from qpy.send_core import Core, Wait
from qpy.send_done import Completion
from qpy.send_info import Corrupt, Messages
from qpy.send_queues import Queues

PASS_BATCH = 64         # passes per channel per loop turn
READ_CHUNK = 65536      # bytes of a channel file read at a time


@dataclass(eq=False)
class Job:
    """A pass over one channel file of one message, plus its deliveries in flight."""

    msgid: int
    channel: int
    retry: int
    sender: bytes
    dying: bool
    numtodo: int = 0
    hiteof: bool = False
    refs: int = 1


@dataclass(eq=False)
class Delivery:
    """One delivery in flight: which job, its log number, its record's offset."""

    job: Job
    delid: int
    mpos: int
    recip: bytes


@dataclass(eq=False)
class Pass:
    """Reading a channel file, READ_CHUNK bytes at a time (memory does not grow with the
    number of recipients): the window ``data`` starts at file offset ``base``."""

    job: Job
    fd: int
    data: bytes = b""
    base: int = 0
    pos: int = 0            # index in data of the next record
    eof: bool = False

    def peek(self) -> tuple[int, bytes] | None:
        """The next complete record: (its file offset, its bytes without the NUL); None at
        the end of the file (a trailing partial record is not a record).  OSError on trouble."""
        while True:
            end = self.data.find(b"\0", self.pos)
            if end != -1:
                return self.base + self.pos, self.data[self.pos:end]
            if self.eof:
                return None
            chunk = os.pread(self.fd, READ_CHUNK, self.base + len(self.data))
            self.base += self.pos
            self.data = self.data[self.pos:] + chunk
            self.pos = 0
            self.eof = not chunk

    def advance(self, record: bytes) -> None:
        """Step past the record peek() returned."""
        self.pos += len(record) + 1

    def close(self) -> None:
        """Close the channel file."""
        fdio.close_quietly(self.fd)


def verp(sender: bytes, recip: bytes) -> bytes:
    """Expand a VERP sender: ``pre@host-@[]`` with ``box@dom`` → ``prebox=dom@host``."""
    if not sender.endswith(bounce.VERP_TAIL):
        return sender
    base = sender[:-len(bounce.VERP_TAIL)]
    j = base.rfind(b"@")
    k = recip.rfind(b"@")
    if j == -1 or k == -1:
        return sender
    return base[:j] + recip[:k] + b"=" + recip[k + 1:] + b"@" + base[j + 1:]


def command(slot: int, msgid: int, sender: bytes, recip: bytes) -> bytes:
    """A spawner command: ``<slot><split>/<id>\\0<sender>\\0<recip>\\0``."""
    return (bytes([slot]) + queuedir.mess_rel(msgid).encode() + b"\0"
            + verp(sender, recip) + b"\0" + recip + b"\0")


def markdone(path: str, pos: int) -> None:
    """Overwrite the record's ``T`` at ``pos`` with ``D`` (no fsync: a loss means a duplicate)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        if os.pwrite(fd, b"D", pos) != 1:
            raise OSError(errno.EIO, "short write")
    finally:
        os.close(fd)


class Deliveries:
    """The section: jobs, the passes over channel files, deliveries and their reports."""

    def __init__(self, core: Core, comm: Comm, queues: Queues, messages: Messages,
                 completion: Completion) -> None:
        self.core = core
        self.comm = comm
        self.queues = queues
        self.messages = messages
        self.completion = completion
        self.numjobs = sum(sp.concurrency for sp in comm.spawners)
        self.jobs_open = 0
        self.passes: list[Pass | None] = [None, None]
        self.masterdelid = 1

    # -- jobs
    def job_avail(self) -> bool:
        """True if a new pass may start."""
        return self.jobs_open < self.numjobs

    def job_close(self, job: Job) -> None:
        """Drop one reference; the last one reschedules, or finishes the channel."""
        job.refs -= 1
        if job.refs > 0:
            return
        self.jobs_open -= 1
        c, msgid = job.channel, job.msgid
        due = job.retry
        if job.hiteof and not job.numtodo:
            path = queuedir.channel(c, msgid)
            try:
                self.core.spares.give(path)
            except OSError:
                self.core.log.warning(f"unable to unlink {path}; will try again later")
                due = int(time.time()) + SLEEP_SYSFAIL
            else:
                other = queuedir.channel(1 - c, msgid)
                try:
                    if queuedir.exists(other):
                        return  # the other channel's job finishes the message
                except OSError:
                    self.core.log.warning(f"unable to stat {other}")
                    self.messages.forget(msgid)     # completion must look at the files
                self.queues.done.add(msgid, int(time.time()))
                return
        self.queues.chan[c].add(msgid, due)

    # -- passes
    def open_pass(self, c: int) -> Pass | None:
        """Start a pass over the next due channel file, if any."""
        if not self.job_avail() or not self.comm.spawners[c].concurrency:
            return None
        due = self.queues.chan[c].next_due()
        if due is None or due > self.core.recent:
            return None
        _, msgid = self.queues.chan[c].pop()
        if c == 0:
            self.messages.first_local_pass(msgid)
        if msgid in self.messages.quarantined:
            return None
        path = queuedir.channel(c, msgid)
        try:
            fd: int | None = os.open(path, os.O_RDONLY)
        except OSError:
            fd = None
        try:
            info = self.messages.info(msgid) if fd is not None else None
        except Corrupt as e:
            fdio.close_quietly(fd)
            self.core.quarantine(msgid, e.text)
            return None
        if fd is None or info is None:
            if fd is not None:
                os.close(fd)
            self.core.log.warning(f"trouble opening {path}; will try again later")
            self.queues.chan[c].add(msgid, self.core.recent + SLEEP_SYSFAIL)
            return None
        sender, birth = info
        recent = self.core.recent
        job = Job(msgid, c, next_retry(birth, recent, c), sender,
                  dying(birth, recent, self.core.controls.lifetime))
        self.jobs_open += 1
        p = self.passes[c] = Pass(job, fd)
        return p

    def end_pass(self, c: int, p: Pass, hiteof: bool) -> None:
        """The pass is over: at the end of its file, or cut short by a read error
        (then the job is rescheduled, as after a deferral)."""
        p.close()
        p.job.hiteof = hiteof
        self.passes[c] = None
        self.job_close(p.job)

    def pass_step(self, c: int) -> bool:
        """Advance or open one pass; True if it hit its end (another may start now)."""
        p = self.passes[c] or self.open_pass(c)
        if p is None:
            return False
        sp = self.comm.spawners[c]
        while True:
            try:
                found = p.peek()
            except OSError:
                path = queuedir.channel(c, p.job.msgid)
                self.core.log.warning(f"trouble reading {path}; will try again later")
                self.end_pass(c, p, hiteof=False)
                return False
            if found is None:
                self.end_pass(c, p, hiteof=True)
                return True
            offset, record = found
            kind = record[:1]
            if kind == b"T":
                if not sp.available():
                    return False
                p.job.numtodo += 1
                self.del_start(p.job, offset, record[1:])
            elif kind != b"D":
                self.core.log.warning(f"unknown record type in {queuedir.channel(c, p.job.msgid)}!")
            p.advance(record)

    # -- deliveries
    def del_start(self, job: Job, mpos: int, recip: bytes) -> None:
        """Hand one recipient to the channel's spawner."""
        sp = self.comm.spawners[job.channel]
        slot = sp.free_slot()
        d = Delivery(job, self.masterdelid, mpos, recip)
        self.masterdelid += 1
        job.refs += 1
        sp.slots[slot] = d
        sp.used += 1
        self.core.log.line(log.starting_delivery(d.delid, job.msgid, job.channel, recip))
        self.comm.status()
        self.comm.send_command(sp, command(slot, job.msgid, job.sender, recip))

    def report(self, sp: Spawner, record: bytes) -> None:
        """One report from a spawner: log it, mark done/bounce, release the slot."""
        slot = record[0]
        d = sp.slots[slot] if slot < sp.concurrency else None
        if d is None:
            self.core.log.warning("internal error: delivery report out of range")
            return
        job = d.job
        letter = chr(record[1]) if len(record) > 1 else ""
        report = record[2:]
        if letter == "Z" and job.dying:
            letter, report = "D", report + bounce.GIVING_UP
        self.core.log.line(log.delivery(d.delid, letter, report))
        if letter == "D":
            self.completion.addbounce(job.msgid, d.recip, report)
        if letter in ("K", "D"):
            path = queuedir.channel(sp.channel, job.msgid)
            try:
                markdone(path, d.mpos)
            except OSError:
                self.core.log.warning(f"trouble marking {path}; message will be delivered twice!")
            job.numtodo -= 1
        self.job_close(job)
        sp.slots[slot] = None
        sp.used -= 1
        self.comm.status()

    # -- the section's loop parts
    def prep(self, wait: Wait) -> None:
        """Wake at once for an open pass with a free slot; else when the next channel is due."""
        for c in CHANNELS:
            if self.passes[c] is not None and self.comm.spawners[c].available():
                wait.at(0)
        if self.job_avail():
            for c in CHANNELS:
                if self.passes[c] is None and self.comm.spawners[c].concurrency:
                    wait.at(self.queues.chan[c].next_due())

    def do(self) -> None:
        """Advance the passes of both channels."""
        for c in CHANNELS:
            for _ in range(PASS_BATCH):
                if self.core.exitasap or not self.pass_step(c):
                    break
