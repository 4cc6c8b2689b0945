"""qmail-send - schedule the deliveries of queued messages.

SYNOPSIS  qmail-send    (started by qmail-start; fds 0-6 wired as below)
RUNS AS   qmails, group qmail; cwd QMAILHOME/queue; umask 077.
FDS       0 log (write) · 1 → qmail-lspawn commands · 2 ← qmail-lspawn reports ·
          3 → qmail-rspawn commands · 4 ← qmail-rspawn reports · 5 → qmail-clean · 6 ← qmail-clean.
READS     control/ once at start (locals and virtualdomains again on HUP); todo/<id>,
          info/, local/, remote/, bounce/ and mess/ of the queue; lock/trigger.
WRITES    info/, local/, remote/, bounce/ files (queue.md §4-§8); log lines on fd 0
          (protocols.md §8); bounce messages through qmail-queue.
TRUSTS    the queue layout; never the contents of a queue file beyond its format (a bad
          record is a warning, never a crash); the spawners' reports only as far as
          their format (slot numbers are checked, reports cut at 10000 bytes).
SIGNALS   TERM: start nothing new, wait for running deliveries, save retry times as
          the channel files' atime/mtime, log ``status: exiting``, exit 0.
          ALRM: retry every channel now.  HUP: reread locals and virtualdomains.
EXIT      0 after TERM (or after losing a spawner or qmail-clean, logged as an alert);
          111 if it cannot start (``alert: cannot start: …``) or on an internal error
          (``alert: oh no! internal error: …``; the queue stays consistent, a supervisor
          restarts it).

One process, one select() loop, no threads.  Each turn services spawner reports,
writes pending commands (non-blocking), preprocesses a bounded batch of todo/
entries, starts deliveries, completes finished messages and sweeps a bounded
slice of mess/ for leftovers; so a long todo/ never starves deliveries.

DURABILITY OF BATCHED PREPROCESSING.  queue.md §4 promises that a message leaves
todo/ (S4 → S5) only once its info and channel files are on disk, so a crash at
any instant either redoes preprocessing from todo/<id> (which first unlinks any
half-written info/local/remote) or finds complete files.  qmail-send may write
the files of up to TODO_BATCH messages before syncing them: for every message of
the batch it fsyncs each file it wrote, then fsyncs every directory that gained
one of those entries (the link itself must be durable, which a file fsync does
not promise on every filesystem), and only for the messages whose fsyncs all
succeeded does it ask qmail-clean to remove todo/<id>.  Until that request the
message is still in S4 for crash recovery (todo/<id> exists; startup skips an
info/<id> with a todo/<id>), so no guarantee of queue.md depends on the batch
size; batching only lets one journal commit cover many messages.  Writeback of
every file of the batch is started (sync_file_range) before the first fsync, so the
batch's allocations share that commit; every fsync is still made and checked.

OTHER PERFORMANCE CHOICES (none touches durability).  A pass that reaches the end of
its channel file is followed by the next due one in the same turn (PASS_BATCH), so
a burst of one-recipient messages fills every free slot at once.  The answer to a
completion's ``foop/N`` is not waited for (it only decides a warning; mess/N, hence
the id N, stays in use until qmail-clean has removed it; a crash in between leaves
S2 for the 36 h cleanup, as before); ``todo/N`` answers are waited for.  Log lines
are written once per turn, several whole lines per write below PIPE_BUF (the log is
not part of the queue's state).  (sender, birth) of messages preprocessed here are
remembered (INFO_CACHE) instead of re-reading info/<id>, and a completion looks for
bounce/<id> before reading info/<id>.  Finished info/ and channel files are
moved into queue/spares and new ones taken from there (qpy.spare: the same queue
states as unlink and O_EXCL create, without an inode to allocate and free).
"""
from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from qpy import auto, bounce, control, log, prot, queuedir, spare, trigger
from qpy.queuewrite import start_writeback
from qpy.errors import ControlError
from qpy.rewrite import Rewriter
from qpy.schedule import (CHANNELS, LIFETIME, OSSIFIED, SLEEP_CLEANUP, SLEEP_FOREVER, SLEEP_FUZZ,
                          SLEEP_SYSFAIL, SLEEP_TODO, TimedQueue, dying, next_retry)

FD_LOG = 0
FD_TO_SPAWN = (1, 3)
FD_FROM_SPAWN = (2, 4)
FD_TO_CLEAN, FD_FROM_CLEAN = 5, 6
REPORTMAX = 10000       # bytes of a report record kept (slot + letter + text)
TODO_BATCH = 32         # todo/ entries preprocessed per loop turn
PREP_AHEAD = 2 * TODO_BATCH  # preprocessed local channel files whose first pass has not begun, at most
CLEANUP_BATCH = 256     # mess/ entries looked at per loop turn
DONE_BATCH = 64         # completions per loop turn
PASS_BATCH = 64         # passes per channel per loop turn
CLEAN_OUTSTANDING = 512 # qmail-clean requests sent but not yet answered, at most
INFO_CACHE = 20000      # messages whose info/<id> contents qmail-send remembers
SLEEP_PAUSE = 10        # after an unreadable directory or a failing bounce append
READ_CHUNK = 65536


class CannotStart(Exception):
    """qmail-send cannot start; the text follows ``alert: cannot start: ``."""


# ---------------------------------------------------------------- controls

@dataclass
class Controls:
    """Everything qmail-send reads from control/ at start."""

    lifetime: int
    concurrency: list[int]
    rewriter: Rewriter
    bounce: bounce.Settings


def read_controls() -> Controls:
    """Read the controls; ControlError if one is unreadable."""
    bouncehost = control.read_line_me("bouncehost", b"bouncehost") or b"bouncehost"
    dbhost = control.read_line_me("doublebouncehost", b"doublebouncehost") or b"doublebouncehost"
    dbto = control.read_line("doublebounceto", b"postmaster")
    return Controls(
        lifetime=control.read_int("queuelifetime", LIFETIME),
        concurrency=[min(control.read_int("concurrencylocal"), auto.SPAWN_LIMIT),
                     min(control.read_int("concurrencyremote"), auto.SPAWN_LIMIT)],
        rewriter=Rewriter.from_control(),
        bounce=bounce.Settings(bouncefrom=control.read_line("bouncefrom", b"MAILER-DAEMON") or b"",
                               bouncehost=bouncehost,
                               doublebounceto=(dbto or b"") + b"@" + dbhost),
    )


def reread_rewriter(old: Rewriter, lg: log.Log) -> Rewriter:
    """HUP: a rewriter with fresh locals and virtualdomains, or the old one on trouble."""
    try:
        me = control.me()
        locals_ = control.read_list("locals", [me] if me else None)
    except ControlError:
        locals_ = None
    if locals_ is None:
        lg.alert("unable to reread control/locals")
        return old
    try:
        vdoms = control.read_map("virtualdomains") or {}
    except ControlError:
        lg.alert("unable to reread control/virtualdomains")
        return old
    return replace(old, locals={d.lower() for d in locals_}, virtualdomains=vdoms)


# ---------------------------------------------------------------- helpers

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


def read_file(path: str, with_mtime: bool = False) -> tuple[bytes, int]:
    """The whole file and (if ``with_mtime``) its mtime, else 0; OSError on trouble."""
    fd = os.open(path, os.O_RDONLY)
    try:
        mtime = int(os.fstat(fd).st_mtime) if with_mtime else 0
        parts = []
        while True:
            chunk = os.read(fd, READ_CHUNK)
            if not chunk:
                break
            parts.append(chunk)
        return b"".join(parts), mtime
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """Write everything (blocking fd); OSError on trouble."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def unlink_missing_ok(path: str) -> None:
    """unlink; a missing file is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


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


# ---------------------------------------------------------------- pipes

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

    def can_write(self) -> bool:
        """True when no command is buffered (qmail buffers one per channel)."""
        return not self.pending

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
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return False
            self.pending = self.pending[n:]
        return True


class Cleaner:
    """The client side of qmail-clean (protocols.md §6), on fds 5 and 6.

    Requests may be left outstanding (``send``): qmail-clean answers in order, and
    each reply is handed to the request's callback when it is read (``collect``), so
    qmail-send goes on working while qmail-clean unlinks.  ``request`` waits.
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
            write_all(self.fd_out, b"".join(n.encode() + b"\0" for n in names))
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
            except InterruptedError:
                continue
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


# ---------------------------------------------------------------- jobs

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
    """Reading a channel file: its contents and the offset of the next record."""

    job: Job
    data: bytes
    pos: int = 0


@dataclass(eq=False)
class Prep:
    """A todo/ entry written out but not yet synced: its open files by path."""

    msgid: int
    files: dict[str, int]
    channels: list[bool]
    info: tuple[bytes, int] | None = None     # what getinfo() will read back
    reused: set[int] = field(default_factory=set)   # fds of spares: trimmed after writing

    def close(self) -> None:
        """Close every file still open."""
        for fd in self.files.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.files = {}


# ---------------------------------------------------------------- the daemon

class Flags:
    """What the signal handlers ask for; a self-pipe makes select() return for them."""

    def __init__(self) -> None:
        self.exitasap = self.runasap = self.readasap = False
        self.wake_r = -1

    def install(self) -> None:
        """Catch TERM, ALRM and HUP from now on."""
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self.wake_r = r
        signal.set_wakeup_fd(w)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGALRM, self._on_alarm)
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)

    def _on_term(self, signum: int, frame: object) -> None:
        self.exitasap = True

    def _on_alarm(self, signum: int, frame: object) -> None:
        self.runasap = True

    def _on_hup(self, signum: int, frame: object) -> None:
        self.readasap = True

    def drain(self) -> None:
        """Empty the self-pipe."""
        try:
            while os.read(self.wake_r, 512):
                pass
        except OSError:
            pass


class QmailSend:
    """The scheduler's state and its main loop."""

    def __init__(self, controls: Controls, concurrency: list[int], lg: log.Log,
                 flags: Flags) -> None:
        self.flags = flags
        self.controls = controls
        self.rewriter = controls.rewriter
        self.log = lg
        self.spawners = [Spawner(c, FD_TO_SPAWN[c], FD_FROM_SPAWN[c], concurrency[c])
                         for c in CHANNELS]
        self.numjobs = sum(concurrency)
        self.jobs_open = 0
        self.cleaner = Cleaner()
        self.spares = spare.pool(spare.SPARES)   # info/local/remote inodes for reuse
        # (sender, birth) of messages preprocessed by this process, as getinfo() would
        # read them back from info/<id> (which nothing else writes); saves two file
        # reads per message.  Dropped at completion; bounded by INFO_CACHE.
        self.infos: dict[int, tuple[bytes, int]] = {}
        # Ids this process appended a bounce to: for a message in self.infos (so
        # preprocessed here; a bounce/<id> is only ever made after that), bounce/<id>
        # exists exactly when its id is here.
        self.bounced: set[int] = set()
        # queue.md §4 step 2 (unlink leftovers of an earlier attempt) is needed only
        # for ids in todo/ when this process started, all of which the first full scan
        # of todo/ meets, and for ids whose preprocessing here did not reach S5.
        self.todo_scanned = False
        self.prep_open: set[int] = set()
        # Ids preprocessed here whose local channel's first pass has not started (PREP_AHEAD).
        self.unopened: set[int] = set()
        self.pqchan = [TimedQueue(), TimedQueue()]
        self.pqdone = TimedQueue()
        self.pqfail = TimedQueue()
        self.passes: list[Pass | None] = [None, None]
        self.masterdelid = 1
        self.recent = int(time.time())
        self.trigger_fd: int | None = None
        self.todo_iter = None
        self.nexttodorun = self.recent
        self.cleanup_iter = None
        self.cleanuptime = self.recent

    # -- signals and fds
    @property
    def exitasap(self) -> bool:
        """TERM, or a lost pipe: start nothing new, exit once running deliveries are done."""
        return self.flags.exitasap

    @exitasap.setter
    def exitasap(self, value: bool) -> None:
        self.flags.exitasap = value

    def init_comm(self) -> None:
        """Non-blocking spawner pipes (a stuck spawner must never block the loop)."""
        for sp in self.spawners:
            try:
                os.set_blocking(sp.fd_out, False)
                os.set_blocking(sp.fd_in, False)
            except OSError:
                self.spawn_died(sp)

    def status(self) -> None:
        """Log the ``status:`` line."""
        self.log.line(log.status((self.spawners[0].used, self.spawners[1].used),
                                 (self.spawners[0].concurrency, self.spawners[1].concurrency),
                                 self.exitasap))

    def spawn_died(self, sp: Spawner) -> None:
        """A spawner pipe broke: stop using it and exit as soon as possible."""
        if sp.alive:
            self.log.alert("oh no! lost spawn connection! dying...")
        sp.alive = False
        self.exitasap = True

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
            self.log.alert("oh no! lost qmail-clean connection! dying...")
        self.exitasap = True

    # -- startup scan (queue.md §6)
    def pqadd(self, msgid: int) -> None:
        """Schedule a preprocessed message found on disk: channels at their mtimes."""
        path = queuedir.info(msgid)
        try:
            if not queuedir.exists(path):
                return
            path = queuedir.todo(msgid)
            if queuedir.exists(path):
                return  # preprocessing will be redone
            due: list[int | None] = []
            for c in CHANNELS:
                path = queuedir.channel(c, msgid)
                try:
                    due.append(int(os.stat(path).st_mtime))
                except FileNotFoundError:
                    due.append(None)
        except OSError:
            self.log.warning(f"unable to stat {path}; will try again later")
            self.pqfail.add(msgid, int(time.time()) + SLEEP_SYSFAIL)
            return
        for c in CHANNELS:
            if due[c] is not None:
                self.pqchan[c].add(msgid, due[c])
        if due == [None, None]:
            self.pqdone.add(msgid, int(time.time()))

    def pqstart(self) -> None:
        """Scan info/*/* at startup."""
        for n in range(auto.SPLIT):
            while True:
                try:
                    names = os.listdir(f"info/{n}")
                    break
                except FileNotFoundError:
                    names = []
                    break
                except OSError:
                    self.log.alert(f"unable to opendir info/{n}, sleeping...")
                    self.log.flush()
                    time.sleep(SLEEP_PAUSE)
            for name in names:
                msgid = queuedir.parse_id(name)
                if msgid is not None:
                    self.pqadd(msgid)

    def pqfinish(self) -> None:
        """At exit: each scheduled channel's next retry time goes into its file's times."""
        for c in CHANNELS:
            for due, msgid in self.pqchan[c]:
                path = queuedir.channel(c, msgid)
                try:
                    os.utime(path, (due, due))
                except OSError:
                    self.log.warning(f"unable to utime {path}; message will be retried too soon")

    # -- info
    def getinfo(self, msgid: int) -> tuple[bytes, int] | None:
        """(sender, birth) from info/<id>, or None if unreadable or malformed."""
        cached = self.infos.get(msgid)
        if cached is not None:
            return cached
        try:
            data, mtime = read_file(queuedir.info(msgid), with_mtime=True)
        except OSError:
            return None
        end = data.find(b"\0")
        if end == -1 or data[:1] != b"F":
            return None
        return data[1:end], mtime

    # -- jobs and passes (queue.md §5)
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
                self.spares.give(path)
            except OSError:
                self.log.warning(f"unable to unlink {path}; will try again later")
                due = int(time.time()) + SLEEP_SYSFAIL
            else:
                other = queuedir.channel(1 - c, msgid)
                try:
                    if queuedir.exists(other):
                        return  # the other channel's job finishes the message
                except OSError:
                    self.log.warning(f"unable to stat {other}")
                    self.infos.pop(msgid, None)     # messdone() must look at the files
                self.pqdone.add(msgid, int(time.time()))
                return
        self.pqchan[c].add(msgid, due)

    def open_pass(self, c: int) -> Pass | None:
        """Start a pass over the next due channel file, if any."""
        if not self.job_avail() or not self.spawners[c].concurrency:
            return None
        due = self.pqchan[c].next_due()
        if due is None or due > self.recent:
            return None
        _, msgid = self.pqchan[c].pop()
        if c == 0:
            self.unopened.discard(msgid)
        path = queuedir.channel(c, msgid)
        try:
            data, _ = read_file(path)
        except OSError:
            data = None
        info = self.getinfo(msgid) if data is not None else None
        if data is None or info is None:
            self.log.warning(f"trouble opening {path}; will try again later")
            self.pqchan[c].add(msgid, self.recent + SLEEP_SYSFAIL)
            return None
        sender, birth = info
        job = Job(msgid, c, next_retry(birth, self.recent, c), sender,
                  dying(birth, self.recent, self.controls.lifetime))
        self.jobs_open += 1
        p = self.passes[c] = Pass(job, data)
        return p

    def pass_dochan(self, c: int) -> None:
        """Advance channel c's passes: a delivery per ``T`` record while slots are free.

        qmail opens one pass per channel per loop turn; here a pass that reaches the
        end of its file is followed at once by the next due one (up to PASS_BATCH per
        turn), so a burst of one-recipient messages fills every free slot in one turn.
        """
        for _ in range(PASS_BATCH):
            if self.exitasap or not self.pass_step(c):
                return

    def pass_step(self, c: int) -> bool:
        """Advance or open one pass; True if it hit its end (another may start now)."""
        p = self.passes[c] or self.open_pass(c)
        if p is None:
            return False
        sp = self.spawners[c]
        while True:
            end = p.data.find(b"\0", p.pos)
            if end == -1:  # end of file (a trailing partial record is not a record)
                p.job.hiteof = True
                self.passes[c] = None
                self.job_close(p.job)
                return True
            kind = p.data[p.pos:p.pos + 1]
            if kind == b"T":
                if not sp.available():
                    return False
                p.job.numtodo += 1
                self.del_start(p.job, p.pos, p.data[p.pos + 1:end])
            elif kind != b"D":
                self.log.warning(f"unknown record type in {queuedir.channel(c, p.job.msgid)}!")
            p.pos = end + 1

    def del_start(self, job: Job, mpos: int, recip: bytes) -> None:
        """Hand one recipient to the channel's spawner."""
        sp = self.spawners[job.channel]
        slot = sp.free_slot()
        d = Delivery(job, self.masterdelid, mpos, recip)
        self.masterdelid += 1
        job.refs += 1
        sp.slots[slot] = d
        sp.used += 1
        sp.pending = command(slot, job.msgid, job.sender, recip)
        self.log.line(log.starting_delivery(d.delid, job.msgid, job.channel, recip))
        self.status()
        if not sp.flush():
            self.spawn_died(sp)

    def markdone(self, c: int, msgid: int, pos: int) -> None:
        """Overwrite the record's ``T`` with ``D`` (no fsync: a loss means a duplicate)."""
        path = queuedir.channel(c, msgid)
        try:
            fd = os.open(path, os.O_WRONLY)
            try:
                if os.pwrite(fd, b"D", pos) != 1:
                    raise OSError(errno.EIO, "short write")
            finally:
                os.close(fd)
        except OSError:
            self.log.warning(f"trouble marking {path}; message will be delivered twice!")

    def addbounce(self, msgid: int, recip: bytes, report: bytes) -> None:
        """Append the failure to bounce/<id>; retried every 10 s until it works."""
        data = bounce.block(bounce.strip_vdom_prepend(recip, self.rewriter.virtualdomains), report)
        while True:
            try:
                bounce.append(queuedir.bounce(msgid), data)
                self.bounced.add(msgid)
                return
            except OSError:
                self.log.alert("unable to append to bounce message; HELP! sleeping...")
                self.log.flush()
                time.sleep(SLEEP_PAUSE)

    def handle_report(self, sp: Spawner, record: bytes) -> None:
        """One report from a spawner: log it, mark done/bounce, release the slot."""
        slot = record[0]
        d = sp.slots[slot] if slot < sp.concurrency else None
        if d is None:
            self.log.warning("internal error: delivery report out of range")
            return
        job = d.job
        letter = chr(record[1]) if len(record) > 1 else ""
        report = record[2:]
        if letter == "Z" and job.dying:
            letter, report = "D", report + bounce.GIVING_UP
        self.log.line(log.delivery(d.delid, letter, report))
        if letter == "D":
            self.addbounce(job.msgid, d.recip, report)
        if letter in ("K", "D"):
            self.markdone(sp.channel, job.msgid, d.mpos)
            job.numtodo -= 1
        self.job_close(job)
        sp.slots[slot] = None
        sp.used -= 1
        self.status()

    def del_do(self, readable: set[int]) -> None:
        """Read the reports waiting on the spawner pipes."""
        for sp in self.spawners:
            if not sp.alive or sp.fd_in not in readable:
                continue
            try:
                data = os.read(sp.fd_in, READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                self.spawn_died(sp)
                continue
            for record in sp.reader.feed(data):
                self.handle_report(sp, record)

    def comm_do(self, writable: set[int]) -> None:
        """Write buffered commands to spawners that can take them."""
        for sp in self.spawners:
            if sp.alive and sp.pending and sp.fd_out in writable and not sp.flush():
                self.spawn_died(sp)

    def can_exit(self) -> bool:
        """True when no live spawner has a delivery in flight."""
        return all(not sp.alive or not sp.used for sp in self.spawners)

    # -- completion (queue.md §5, §8)
    def injectbounce(self, msgid: int) -> bool:
        """Send the bounce for a finished message if there is one; False to retry later."""
        path = queuedir.bounce(msgid)
        if msgid in self.infos and msgid not in self.bounced:
            return True     # (see self.bounced)
        try:
            if not queuedir.exists(path):
                return True
        except OSError:
            self.log.warning(f"unable to stat {path}")
            return False
        info = self.getinfo(msgid)
        if info is None:
            self.log.warning(f"trouble reading {queuedir.info(msgid)}; will try again later")
            return False
        if bounce.original_sender(info[0]) == bounce.DOUBLE_BOUNCE_SENDER:
            self.log.line(log.triple_bounce(msgid))
        else:
            # The queue child must not write our signal wakeups into an fd it reuses.
            old = signal.set_wakeup_fd(-1)
            try:
                qp = bounce.inject(path, queuedir.mess(msgid), info[0], self.controls.bounce)
            except bounce.StartError:
                self.log.warning("unable to start qmail-queue, will try later")
                return False
            except bounce.InjectError:
                self.log.warning("trouble injecting bounce message, will try later")
                return False
            finally:
                signal.set_wakeup_fd(old)
            self.log.line(log.bounce_msg(msgid, qp or 0))
        try:
            os.unlink(path)
        except OSError:
            self.log.warning(f"unable to unlink {path}")
            return False
        self.bounced.discard(msgid)
        return True

    def messdone(self, msgid: int) -> None:
        """Every recipient is finished: bounce, ``end msg``, unlink info, clean foop/<id>.

        For a message preprocessed here (in self.infos) the files are not looked at:
        it is scheduled here only once both channel files are gone, nothing else
        makes them or todo/<id> again while the id is in use, and info/<id> goes
        only at the end of this method (which then drops it from self.infos).
        """
        info = queuedir.info(msgid)
        if msgid not in self.infos:
            path = ""
            try:
                for path in (queuedir.local(msgid), queuedir.remote(msgid), queuedir.todo(msgid)):
                    if queuedir.exists(path):
                        return  # still busy, or to be preprocessed again
                path = info
                if not queuedir.exists(path):
                    return
            except OSError:
                self.log.warning(f"unable to stat {path}; will try again later")
                self.pqdone.add(msgid, int(time.time()) + SLEEP_SYSFAIL)
                return
        if not self.injectbounce(msgid):
            self.pqdone.add(msgid, int(time.time()) + SLEEP_SYSFAIL)
            return
        self.log.line(log.end_msg(msgid))
        try:
            self.spares.give(info)
        except OSError:
            self.log.warning(f"unable to unlink {info}; will try again later")
            self.pqdone.add(msgid, int(time.time()) + SLEEP_SYSFAIL)
            return
        self.infos.pop(msgid, None)
        # S5 -> S2 -> S1: info is gone; qmail-clean removes intd and mess.  Not waited
        # for: the answer only decides a warning, and until qmail-clean has unlinked
        # mess/N no new message can get the id N (the inode is still in use).
        self.clean_async([f"foop/{msgid}"], self.cleaned)

    def cleaned(self, name: str, reply: int) -> None:
        """qmail-clean's answer to a ``foop/N`` request."""
        if reply != ord("+"):
            self.log.warning(f"qmail-clean unable to clean up {name}")

    def pass_do(self) -> None:
        """Passes on both channels, then due retries of stat failures and completions."""
        for c in CHANNELS:
            self.pass_dochan(c)
        while (msgid := self.pqfail.pop_due(self.recent)) is not None:
            self.pqadd(msgid)
        # Completions run even after TERM: they start no delivery, and a message whose
        # last delivery just ended is then not left queued until the next start.
        for _ in range(DONE_BATCH):
            msgid = self.pqdone.pop_due(self.recent) if self.cleaner.alive else None
            if msgid is None:
                break
            self.messdone(msgid)

    # -- preprocessing (queue.md §4)
    def create(self, prep: Prep, path: str) -> None:
        """Open ``path`` for ``prep`` as a spare (qpy.spare) or a new file (O_EXCL, 0600)."""
        fd = self.spares.take(path, 0o600)
        if fd is None:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        else:
            prep.reused.add(fd)
        prep.files[path] = fd

    def preprocess(self, msgid: int) -> Prep | None:
        """Write info/<id> and the channel files from todo/<id>; nothing is synced yet."""
        leftovers = not self.todo_scanned or msgid in self.prep_open
        self.prep_open.add(msgid)      # until S5 is reached (commit)
        todo = queuedir.todo(msgid)
        try:
            data, _ = read_file(todo)
        except OSError:
            self.log.warning(f"unable to open {todo}")
            return None
        path = queuedir.mess(msgid)
        try:
            size = os.stat(path).st_size  # just for the log
        except OSError:
            self.log.warning(f"unable to stat {path}")
            return None
        prep = Prep(msgid, {}, [False, False])
        while True:
            if leftovers:
                try:
                    for path in (queuedir.local(msgid), queuedir.remote(msgid), queuedir.info(msgid)):
                        unlink_missing_ok(path)  # leftovers of an earlier attempt
                except OSError:
                    self.log.warning(f"unable to unlink {path}")
                    return None
            path = queuedir.info(msgid)
            try:
                self.create(prep, path)
                break
            except FileExistsError:
                if leftovers:
                    self.log.warning(f"unable to create {path}")
                    return None
                leftovers = True    # an earlier attempt left files after all: do step 2
            except OSError:
                self.log.warning(f"unable to create {path}")
                return None
        self.log.line(log.new_msg(msgid))
        if data and not data.endswith(b"\0"):
            self.log.warning(f"trouble reading {todo}")
            prep.close()
            return None
        out: dict[str, bytearray] = {queuedir.info(msgid): bytearray()}
        uid = pid = 0
        for record in data.split(b"\0")[:-1]:
            kind, value = record[:1], record[1:]
            if kind == b"u":
                uid = _number(value)
            elif kind == b"p":
                pid = _number(value)
            elif kind == b"F":
                out[queuedir.info(msgid)] += record + b"\0"
                self.log.line(log.info_msg(msgid, size, value, pid, uid))
            elif kind == b"T":
                c, address = self.rewriter.rewrite(value)
                path = queuedir.channel(c, msgid)
                if not prep.channels[c]:
                    try:
                        self.create(prep, path)
                    except OSError:
                        self.log.warning(f"unable to create {path}")
                        prep.close()
                        return None
                    prep.channels[c] = True
                    out[path] = bytearray()
                out[path] += b"T" + address + b"\0"
            else:
                self.log.warning(f"unknown record type in {todo}")
                prep.close()
                return None
        for path, buf in out.items():
            try:
                fd = prep.files[path]
                write_all(fd, buf)
                if fd in prep.reused:
                    spare.trim(fd, len(buf))
            except OSError:
                self.log.warning(f"trouble writing to {path}")
                prep.close()
                return None
        info = out[queuedir.info(msgid)]
        if info[:1] == b"F":
            try:
                birth = int(os.fstat(prep.files[queuedir.info(msgid)]).st_mtime)
            except OSError:
                birth = None
            if birth is not None:
                prep.info = (bytes(info[1:info.index(b"\0")]), birth)
        return prep

    def commit(self, preps: list[Prep]) -> None:
        """fsync the batch, then S4 -> S5 through qmail-clean, then schedule."""
        synced: list[Prep] = []
        dirs: dict[str, list[Prep]] = {}
        for prep in preps:
            for fd in prep.files.values():
                start_writeback(fd)
        for prep in preps:
            path = ""
            try:
                for path, fd in prep.files.items():
                    os.fsync(fd)
            except OSError:
                self.log.warning(f"trouble fsyncing {path}")
                prep.close()
                continue
            for path in prep.files:
                dirs.setdefault(os.path.dirname(path), []).append(prep)
            prep.close()
            synced.append(prep)
        failed: set[int] = set()
        for path, users in dirs.items():
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError:
                self.log.warning(f"trouble fsyncing {path}")
                failed.update(p.msgid for p in users)
        synced = [p for p in synced if p.msgid not in failed]
        # Waited for: the answer decides whether the batch is scheduled in this turn.
        replies = self.clean([f"todo/{p.msgid}" for p in synced])
        if replies is None:
            return
        # Due at this turn's time, so pass_do() later in the same turn starts them even
        # when the batch's fsyncs ran into the next second.
        now = self.recent
        for prep, reply in zip(synced, replies):
            if reply != ord("+"):
                self.log.warning(f"qmail-clean unable to clean up todo/{prep.msgid}")
                continue
            # S4 -> S5: the message is preprocessed.
            self.prep_open.discard(prep.msgid)
            if prep.info is not None and len(self.infos) < INFO_CACHE:
                self.infos[prep.msgid] = prep.info
            for c in CHANNELS:
                if prep.channels[c]:
                    self.pqchan[c].add(prep.msgid, now)
            if prep.channels[0] and self.spawners[0].concurrency:
                self.unopened.add(prep.msgid)
            if not any(prep.channels):
                self.pqdone.add(prep.msgid, now)

    def prep_paused(self) -> bool:
        """True while PREP_AHEAD preprocessed local channel files wait for their first pass.

        Preprocessing then waits (the messages stay safely in todo/): info/ and channel
        files are taken from the spares that the deliveries just finished gave back,
        instead of a long run of new files now and of unlinks at the end.  Only the
        local channel counts: local deliveries take milliseconds, so such a backlog
        drains at once, while slow remote deliveries must never hold back local mail.
        """
        return len(self.unopened) >= PREP_AHEAD

    def todo_do(self, readable: set[int]) -> None:
        """Scan todo/ when triggered or due, a batch of entries per turn."""
        if self.exitasap:
            return
        if self.todo_iter is None:
            if self.trigger_fd not in readable and self.recent < self.nexttodorun:
                return
            self.trigger_set()
            try:
                self.todo_iter = os.scandir("todo")
            except OSError:
                self.log.alert("unable to opendir todo, sleeping...")
                self.nexttodorun = self.recent + SLEEP_PAUSE
                return
            self.nexttodorun = self.recent + SLEEP_TODO
        if self.prep_paused():
            return
        ids: list[int] = []
        scanned = False
        while len(ids) < TODO_BATCH:
            try:
                entry = next(self.todo_iter)
            except (StopIteration, OSError) as e:
                self.todo_iter.close()
                self.todo_iter = None
                scanned = isinstance(e, StopIteration)
                break
            msgid = queuedir.parse_id(entry.name)
            if msgid is not None:
                ids.append(msgid)
        preps = []
        for msgid in ids:
            prep = self.preprocess(msgid)
            if prep is not None:
                preps.append(prep)
        # Only now: the last batch of the first full scan still gets step 2.
        self.todo_scanned = self.todo_scanned or scanned
        self.commit(preps)

    def trigger_set(self) -> None:
        """(Re)open the trigger FIFO; without it we still scan every 25 minutes."""
        if self.trigger_fd is not None:
            try:
                os.close(self.trigger_fd)
            except OSError:
                pass
            self.trigger_fd = None
        try:
            self.trigger_fd = trigger.open_listen()
        except OSError:
            self.trigger_fd = None

    # -- cleanup of leftovers (queue.md §6)
    def mess_ids(self):
        """Every id in mess/*/, one split directory at a time."""
        for n in range(auto.SPLIT):
            try:
                names = os.listdir(f"mess/{n}")
            except OSError:
                continue
            for name in names:
                msgid = queuedir.parse_id(name)
                if msgid is not None:
                    yield msgid

    def cleanup_do(self) -> None:
        """Remove ossified mess files that belong to no message (crashed qmail-queue)."""
        if self.exitasap or not self.cleaner.alive:
            return
        if self.cleanup_iter is None:
            if self.recent < self.cleanuptime:
                return
            self.cleanup_iter = self.mess_ids()
        for _ in range(CLEANUP_BATCH):
            msgid = next(self.cleanup_iter, None)
            if msgid is None:
                self.cleanup_iter = None
                self.cleanuptime = self.recent + SLEEP_CLEANUP
                return
            try:
                if self.recent <= os.stat(queuedir.mess(msgid)).st_atime + OSSIFIED:
                    continue
                if queuedir.exists(queuedir.info(msgid)) or queuedir.exists(queuedir.todo(msgid)):
                    continue
            except OSError:
                continue
            name = f"foop/{msgid}"
            replies = self.clean([name])
            if replies is None:
                return
            if replies != b"+":
                self.log.warning(f"qmail-clean unable to clean up {name}")

    # -- the loop
    def wakeup_and_fds(self) -> tuple[int, list[int], list[int]]:
        """When to wake up at the latest, and the fds to watch."""
        wakeup = self.recent + SLEEP_FOREVER
        rfds = [self.flags.wake_r] if self.flags.wake_r >= 0 else []
        wfds = []
        for sp in self.spawners:
            if sp.alive:
                rfds.append(sp.fd_in)
                if sp.pending:
                    wfds.append(sp.fd_out)
        if self.cleaner.waiting:
            rfds.append(self.cleaner.fd_in)
        if not self.exitasap:
            for c in CHANNELS:
                if self.passes[c] is not None and self.spawners[c].available():
                    wakeup = 0
            if self.job_avail():
                for c in CHANNELS:
                    due = self.pqchan[c].next_due()
                    if self.passes[c] is None and due is not None and self.spawners[c].concurrency:
                        wakeup = min(wakeup, due)
            for q in (self.pqfail, self.pqdone):
                due = q.next_due()
                if due is not None:
                    wakeup = min(wakeup, due)
            paused = self.prep_paused()
            if self.trigger_fd is not None and not (paused and self.todo_iter is not None):
                rfds.append(self.trigger_fd)
            if self.todo_iter is not None and not paused:
                wakeup = 0
            wakeup = min(wakeup, self.nexttodorun)
            if self.cleanup_iter is not None:
                wakeup = 0
            wakeup = min(wakeup, self.cleanuptime)
        return wakeup, rfds, wfds

    def turn(self) -> None:
        """One loop turn: sleep in select() until something is due, then do it."""
        self.recent = int(time.time())
        if self.flags.runasap:
            self.flags.runasap = False
            for q in self.pqchan:
                q.run_all(self.recent)
        if self.flags.readasap:
            self.flags.readasap = False
            self.rewriter = reread_rewriter(self.rewriter, self.log)
        wakeup, rfds, wfds = self.wakeup_and_fds()
        timeout = 0 if wakeup <= self.recent else wakeup - self.recent + SLEEP_FUZZ
        self.log.flush()
        try:
            r, w, _ = select.select(rfds, wfds, [], timeout)
        except OSError:
            self.log.warning("trouble in select")
            self.log.flush()
            time.sleep(1)
            return
        readable, writable = set(r), set(w)
        if self.flags.wake_r in readable:
            self.flags.drain()
        self.recent = int(time.time())
        self.comm_do(writable)
        self.del_do(readable)
        if self.cleaner.fd_in in readable:
            self.clean_collect(block=False)
        self.todo_do(readable)
        self.pass_do()
        self.cleanup_do()

    def run(self) -> int:
        """Schedule until TERM (or a lost pipe) and the running deliveries are done."""
        self.pqstart()
        self.status()
        self.trigger_set()
        while not self.exitasap or not self.can_exit():
            self.turn()
        self.clean_collect(block=True)
        self.pqfinish()
        self.log.line(log.exiting())
        self.log.flush()
        return 0


def _number(value: bytes) -> int:
    """The leading decimal digits of a u/p record (0 if none)."""
    digits = b""
    for ch in value:
        if not 48 <= ch <= 57:
            break
        digits += bytes([ch])
    return int(digits) if digits else 0


def read_limits() -> list[int]:
    """One byte from each spawner (fds 2 and 4): its slot limit."""
    limits = []
    for fd in FD_FROM_SPAWN:
        while True:
            try:
                byte = os.read(fd, 1)
                break
            except InterruptedError:
                continue
            except OSError:
                byte = b""
                break
        if not byte:
            raise CannotStart("hath the daemon spawn no fire?")
        limits.append(byte[0])
    return limits


def lock_mutex() -> int:
    """Take lock/sendmutex (exclusive, non-blocking); the fd stays open for our lifetime."""
    try:
        fd = os.open("lock/sendmutex", os.O_WRONLY)
    except OSError:
        raise CannotStart("unable to open mutex")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise CannotStart("qmail-send is already running")
    return fd


def start(flags: Flags) -> QmailSend:
    """Everything before the loop; CannotStart on failure."""
    home = os.path.abspath(auto.home())
    os.environ["QMAILHOME"] = home  # control paths stay valid after chdir
    try:
        os.chdir(home)
    except OSError:
        raise CannotStart("unable to switch to home directory")
    try:
        controls = read_controls()
    except (ControlError, OSError):
        raise CannotStart("unable to read controls")
    try:
        os.chdir("queue")
    except OSError:
        raise CannotStart("unable to switch to queue directory")
    prot.set_umask(0o077)
    lock_mutex()
    limits = read_limits()
    concurrency = [min(controls.concurrency[c], limits[c]) for c in CHANNELS]
    return QmailSend(controls, concurrency, log.Log(FD_LOG, buffered=True), flags)


def main(argv: list[str] | None = None) -> int:
    """Run the scheduler on fds 0-6."""
    lg = log.Log(FD_LOG)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    # fds 1 and 2 are spawner pipes: nothing may ever print to them (print() to None is a no-op).
    sys.stdout = sys.stderr = None
    flags = Flags()
    flags.install()
    try:
        daemon = start(flags)
    except CannotStart as e:
        lg.alert(f"cannot start: {e}")
        return 111
    daemon.init_comm()
    try:
        return daemon.run()
    except Exception as e:  # a bug: say so, and let the supervisor restart us
        daemon.log.flush()
        lg.alert(f"oh no! internal error: {type(e).__name__}: {e}; exiting")
        return 111
