"""qmail-send TODO: preprocessing of todo/ entries (docs/queue.md §4), S4 → S5.

todo/ is scanned when the trigger fires, every SLEEP_TODO seconds, and at start-up,
TODO_BATCH entries per loop turn.  Each entry gets info/<id> and its channel files
(taken from the spares or created O_EXCL), written but not yet synced.

DURABILITY OF BATCHED PREPROCESSING.  docs/queue.md §4 promises that a message leaves
todo/ (S4 → S5) only once its info and channel files are on disk, so a crash at any
instant either redoes preprocessing from todo/<id> (which first unlinks any
half-written info/local/remote) or finds complete files.  ``commit`` fsyncs each
file of the batch, then every directory that gained one of those entries (the link
itself must be durable, which a file fsync does not promise on every file system),
and only for the messages whose fsyncs all succeeded asks qmail-clean to remove
todo/<id>.  Until that request the message is still in S4 for crash recovery
(todo/<id> exists; start-up skips an info/<id> with a todo/<id>), so no guarantee
depends on the batch size; batching only lets one journal commit cover many
messages.  Writeback of every file of the batch is started (sync_file_range) before
the first fsync; every fsync is still made and checked.

docs/queue.md §4 step 2 (unlink leftovers of an earlier attempt) is needed only for ids
in todo/ when this process started, all of which the first full scan meets, and for
ids whose preprocessing here did not reach S5; an O_EXCL/NOREPLACE create that
still meets a leftover falls back to it.

PREP_AHEAD: preprocessing waits while that many preprocessed messages wait for their
first local pass (the messages stay safely in todo/), so info/ and channel files are
taken from the spares that finished deliveries give back.  Only the local channel
counts: slow remote deliveries must never hold back local mail.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterator

from qpy import fdio, log, queuedir, scan, spare, trigger
from qpy.queuewrite import start_writeback
from qpy.schedule import CHANNELS, SLEEP_TODO
from qpy.send_comm import Comm
from qpy.send_core import SLEEP_PAUSE, Core, Wait
from qpy.send_info import Corrupt, Messages
from qpy.send_queues import Queues

TODO_BATCH = 32         # todo/ entries preprocessed per loop turn
CHUNK = 65536           # bytes read from todo/ and buffered per written file, at most
PREP_AHEAD = 2 * TODO_BATCH  # preprocessed local channel files whose first pass has not begun, at most


@dataclass(eq=False)
class Prep:
    """A todo/ entry being written out, not yet synced: its open files by path, and for
    each what is buffered and how much is written (memory stays bounded by CHUNK per
    file, however many recipients the message has)."""

    msgid: int
    files: dict[str, int] = field(default_factory=dict)
    channels: list[bool] = field(default_factory=lambda: [False, False])
    info: tuple[bytes, int] | None = None     # (sender, birth) as info/<id> holds them
    reused: set[int] = field(default_factory=set)   # fds of spares: trimmed after writing
    pending: dict[str, bytearray] = field(default_factory=dict)
    written: dict[str, int] = field(default_factory=dict)

    def put(self, path: str, data: bytes) -> None:
        """Append to ``path``'s bytes, writing out every CHUNK; OSError on trouble."""
        buf = self.pending.setdefault(path, bytearray())
        buf += data
        if len(buf) >= CHUNK:
            self.write(path)

    def write(self, path: str) -> None:
        """Write out what is buffered for ``path``; OSError on trouble."""
        buf = self.pending.setdefault(path, bytearray())
        fdio.write_all(self.files[path], buf)
        self.written[path] = self.written.get(path, 0) + len(buf)
        buf.clear()

    def finish(self) -> str | None:
        """Write out everything and cut reused spares to length; the path that failed, if any."""
        for path in list(self.pending):
            try:
                self.write(path)
                if self.files[path] in self.reused:
                    spare.trim(self.files[path], self.written[path])
            except OSError:
                return path
        return None

    def close(self) -> None:
        """Close every file still open."""
        for fd in self.files.values():
            fdio.close_quietly(fd)
        self.files = {}


def records_of(fd: int) -> Iterator[bytes]:
    """The NUL-terminated records of a file, read CHUNK bytes at a time (a trailing
    partial record is dropped); OSError on a read error."""
    rest = b""
    while chunk := os.read(fd, CHUNK):
        parts = (rest + chunk).split(b"\0")
        rest = parts.pop()
        yield from parts


def complete(fd: int) -> bool:
    """True if the file is empty or ends with a NUL; OSError on trouble."""
    size = os.fstat(fd).st_size
    return size == 0 or os.pread(fd, 1, size - 1) == b"\0"


class Todo:
    """The section: the todo/ scan, preprocessing and the batch commit."""

    def __init__(self, core: Core, comm: Comm, queues: Queues, messages: Messages) -> None:
        self.core = core
        self.comm = comm
        self.queues = queues
        self.messages = messages
        self.scanned = False            # the first full scan of todo/ is over
        self.open: set[int] = set()     # ids whose preprocessing here has not reached S5
        self.trigger_fd: int | None = None
        self.iter: Iterator[os.DirEntry[str]] | None = None
        self.nextrun = core.recent

    # -- preprocessing of one entry
    def create(self, prep: Prep, path: str) -> None:
        """Open ``path`` for ``prep`` as a spare (qpy.spare) or a new file (O_EXCL, 0600)."""
        fd = self.core.spares.take(path, 0o600)
        if fd is None:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        else:
            prep.reused.add(fd)
        prep.files[path] = fd

    def create_info(self, prep: Prep, leftovers: bool) -> bool:
        """Steps 2 and 3: unlink leftovers if needed, create info/<id>; False on trouble."""
        msgid = prep.msgid
        while True:
            if leftovers:
                path = ""
                try:
                    for path in (queuedir.local(msgid), queuedir.remote(msgid), queuedir.info(msgid)):
                        fdio.unlink_missing_ok(path)  # leftovers of an earlier attempt
                except OSError:
                    self.core.log.warning(f"unable to unlink {path}")
                    return False
            path = queuedir.info(msgid)
            try:
                self.create(prep, path)
                return True
            except FileExistsError:
                if leftovers:
                    self.core.log.warning(f"unable to create {path}")
                    return False
                leftovers = True    # an earlier attempt left files after all: do step 2
            except OSError:
                self.core.log.warning(f"unable to create {path}")
                return False

    def preprocess(self, msgid: int) -> Prep | None:
        """Write info/<id> and the channel files from todo/<id>; nothing is synced yet."""
        leftovers = not self.scanned or msgid in self.open
        self.open.add(msgid)      # until S5 is reached (commit)
        todo = queuedir.todo(msgid)
        try:
            fd = os.open(todo, os.O_RDONLY)
        except OSError:
            self.core.log.warning(f"unable to open {todo}")
            return None
        try:
            prep = self.prepare(msgid, fd, leftovers)
        finally:
            os.close(fd)
        if prep is None:
            return None
        failed = prep.finish()
        if failed is not None:
            self.core.log.warning(f"trouble writing to {failed}")
            prep.close()
            return None
        if prep.info is not None:
            try:
                birth = int(os.fstat(prep.files[queuedir.info(msgid)]).st_mtime)
            except OSError:
                prep.info = None
            else:
                prep.info = (prep.info[0], birth)
        return prep

    def prepare(self, msgid: int, fd: int, leftovers: bool) -> Prep | None:
        """Steps 1-4 for the open todo/<id>: a Prep with every record handed out, or None
        after a warning (its files closed)."""
        lg = self.core.log
        path = queuedir.mess(msgid)
        try:
            size = os.stat(path).st_size  # just for the log
        except OSError:
            lg.warning(f"unable to stat {path}")
            return None
        prep = Prep(msgid)
        if not self.create_info(prep, leftovers):
            return None
        lg.line(log.new_msg(msgid))
        prep.pending[queuedir.info(msgid)] = bytearray()
        todo = queuedir.todo(msgid)
        try:
            if not complete(fd):
                raise Corrupt(f"{todo} ends inside a record")
            ok = self.records(prep, fd, size)
        except OSError:
            lg.warning(f"trouble reading {todo}")
            ok = False
        except Corrupt as e:
            prep.close()
            self.core.quarantine(msgid, e.text)
            return None
        if not ok:
            prep.close()
            return None
        return prep

    def records(self, prep: Prep, fd: int, size: int) -> bool:
        """Step 4: each todo record into info/<id> and the channel files (created on first
        use); False after a warning on trouble.  OSError if todo/<id> cannot be read,
        Corrupt if it holds a record of no known type."""
        msgid = prep.msgid
        lg = self.core.log
        uid = pid = 0
        for record in records_of(fd):
            kind, value = record[:1], record[1:]
            if kind == b"u":
                uid = scan.ulong(value)
            elif kind == b"p":
                pid = scan.ulong(value)
            elif kind in (b"F", b"T"):
                if kind == b"F":
                    path, data = queuedir.info(msgid), record + b"\0"
                    if prep.info is None:
                        prep.info = (value, 0)
                    lg.line(log.info_msg(msgid, size, value, pid, uid))
                else:
                    c, address = self.core.rewriter.rewrite(value)
                    path, data = queuedir.channel(c, msgid), b"T" + address + b"\0"
                    if not prep.channels[c]:
                        try:
                            self.create(prep, path)
                        except OSError:
                            lg.warning(f"unable to create {path}")
                            return False
                        prep.channels[c] = True
                try:
                    prep.put(path, data)
                except OSError:
                    lg.warning(f"trouble writing to {path}")
                    return False
            else:
                raise Corrupt(f"unknown record type in {queuedir.todo(msgid)}")
        return True

    # -- the batch
    def sync(self, preps: list[Prep]) -> list[Prep]:
        """Step 5 for a batch: fsync every file, then every directory; the preps that made it."""
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
                self.core.log.warning(f"trouble fsyncing {path}")
                prep.close()
                continue
            for path in prep.files:
                dirs.setdefault(os.path.dirname(path), []).append(prep)
            prep.close()
            synced.append(prep)
        failed: set[int] = set()
        for path, users in dirs.items():
            try:
                fdio.fsync_dir(path)
            except OSError:
                self.core.log.warning(f"trouble fsyncing {path}")
                failed.update(p.msgid for p in users)
        return [p for p in synced if p.msgid not in failed]

    def commit(self, preps: list[Prep]) -> None:
        """fsync the batch, then S4 -> S5 through qmail-clean, then schedule (steps 5-7)."""
        synced = self.sync(preps)
        # Waited for: the answer decides whether the batch is scheduled in this turn.
        replies = self.comm.clean([f"todo/{p.msgid}" for p in synced])
        if replies is None:
            return
        # Due at this turn's time, so the passes later in the same turn start them even
        # when the batch's fsyncs ran into the next second.
        now = self.core.recent
        local_on = bool(self.comm.spawners[0].concurrency)
        for prep, reply in zip(synced, replies):
            if reply != ord("+"):
                self.core.log.warning(f"qmail-clean unable to clean up todo/{prep.msgid}")
                continue
            # S4 -> S5: the message is preprocessed.
            self.open.discard(prep.msgid)
            if prep.info is not None:
                self.messages.add(prep.msgid, *prep.info,
                                  local_waiting=prep.channels[0] and local_on)
            for c in CHANNELS:
                if prep.channels[c]:
                    self.queues.chan[c].add(prep.msgid, now)
            if not any(prep.channels):
                self.queues.done.add(prep.msgid, now)

    def paused(self) -> bool:
        """True while PREP_AHEAD preprocessed messages wait for their first local pass."""
        return self.messages.local_waiting >= PREP_AHEAD

    # -- the scan
    def trigger_set(self) -> None:
        """(Re)open the trigger FIFO; without it we still scan every 25 minutes."""
        if self.trigger_fd is not None:
            fdio.close_quietly(self.trigger_fd)
            self.trigger_fd = None
        try:
            self.trigger_fd = trigger.open_listen()
        except OSError:
            self.trigger_fd = None

    def prep(self, wait: Wait) -> None:
        """Watch the trigger (unless paused mid-scan); wake at once to go on with a scan."""
        paused = self.paused()
        if self.trigger_fd is not None and not (paused and self.iter is not None):
            wait.rfds.append(self.trigger_fd)
        if self.iter is not None and not paused:
            wait.at(0)
        wait.at(self.nextrun)

    def do(self, readable: set[int]) -> None:
        """Scan todo/ when triggered or due, a batch of entries per turn."""
        if self.core.exitasap:
            return
        recent = self.core.recent
        if self.iter is None:
            if self.trigger_fd not in readable and recent < self.nextrun:
                return
            self.trigger_set()
            try:
                self.iter = os.scandir("todo")
            except OSError:
                self.core.log.alert("unable to opendir todo, sleeping...")
                self.nextrun = recent + SLEEP_PAUSE
                return
            self.nextrun = recent + SLEEP_TODO
        if self.paused():
            return
        ids: list[int] = []
        scanned = False
        while len(ids) < TODO_BATCH:
            try:
                entry = next(self.iter)
            except (StopIteration, OSError) as e:
                self.iter.close()
                self.iter = None
                scanned = isinstance(e, StopIteration)
                break
            msgid = queuedir.parse_id(entry.name)
            if msgid is not None:
                ids.append(msgid)
        preps = [p for p in map(self.preprocess, ids) if p is not None]
        # Only now: the last batch of the first full scan still gets step 2.
        self.scanned = self.scanned or scanned
        self.commit(preps)

