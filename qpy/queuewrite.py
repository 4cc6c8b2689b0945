"""The queue writer behind qmail-queue (docs/queue.md §3), as a library.

``Writer(uid, pid, who, base)`` performs one insertion in the order of docs/queue.md §3:
pid file → link mess/ (S2) → Received line + message → fsync the file and mess/<split>
→ intd/<id> (S3) → fsync → link todo/<id> (S4: queued) → fsync todo/.  The caller
pulls the trigger.  ``run(msg_fd, env_fd)`` is qmail-queue's whole sequence on two
fds; ``queue(msg_fd, env_fd, uid, who)`` is that run with its cleanup, exit code and
trigger, as qmail-queue, qmail-queued and qmail-pickup call it under qmail-queue's
signals (``setup_signals()``).  ``begin()``/``commit()`` are the same steps for a
caller that already holds the envelope in memory (qpy.qmailq.DirectJob: a process
that owns the queue writes it itself instead of forking a qmail-queue).  Every failure raises
``QueueFail(code)`` with qmail-queue's exit code; ``remove_partial()`` then removes what
this insertion created (nothing that has a todo/ link).  Four fsyncs per message,
none skipped: a 0 exit / "" close means the message and its todo/ entry are on disk.
"""
from __future__ import annotations

import errno
import fcntl
import os
import signal
import time
from collections.abc import Callable

from qpy import auto, fdio, prot, received, spare, submit, trigger
from qpy.auto import SPLIT
from qpy.envelope import MAX_ADDR
from qpy.errors import QueueFail
from qpy.exitcodes import QQ

CHUNK = 65536


_sync_file_range = None


def start_writeback(fd: int) -> None:
    """Start writing a file's data out now, without waiting (Linux sync_file_range).

    Only a hint that changes no guarantee: each file is still fsync'd.  Started for
    every file of a batch before the first fsync, the block allocations of the whole
    batch land in one journal transaction, so one commit covers the batch instead of
    one per file.  A no-op where sync_file_range is missing.
    """
    if _sync_file_range is None:
        prepare()
    if _sync_file_range:
        _sync_file_range(fd, 0, 0, 2)     # SYNC_FILE_RANGE_WRITE


def prepare() -> None:
    """Look sync_file_range and renameat2 up now (ctypes, ~1 ms), e.g. in a parent before it forks."""
    global _sync_file_range
    spare.prepare()
    if _sync_file_range is not None:
        return
    try:
        import ctypes
        func = ctypes.CDLL(None, use_errno=True).sync_file_range
        func.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
        _sync_file_range = func
    except (ImportError, OSError, AttributeError):
        _sync_file_range = False


def special_uids(priv: bool) -> dict[int, bytes]:
    """uid → WHO for the accounts the Received line names (privileged mode only)."""
    table: dict[int, bytes] = {}
    if priv:
        for name, text in ((auto.QMAILS, b"for bounce"), (auto.QMAILD, b"from network"),
                           (auto.ALIAS, b"by alias")):
            acct = prot.lookup_user(name)
            if acct is not None:
                table[acct.uid] = text
    return table


def who_invoked(uid: int, priv: bool, table: dict[int, bytes] | None = None) -> bytes:
    """The WHO of the Received line: which account handed us the message."""
    table = special_uids(priv) if table is None else table
    return table.get(uid, b"by uid %d" % uid)


def privileged_instance(home: str = ".") -> bool:
    """True if the instance's queue belongs to the qmailq account (not root), whoever we are."""
    qmailq = prot.lookup_user(auto.QMAILQ)
    if qmailq is None or qmailq.uid == 0:
        return False
    try:
        return os.stat(os.path.join(home, "queue")).st_uid == qmailq.uid
    except OSError:
        return False


def _read(fd: int) -> bytes:
    """Read a chunk; a read error is exit 54."""
    try:
        return os.read(fd, CHUNK)
    except OSError:
        raise QueueFail(QQ.READ_ERROR)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    """Write everything; a write error (ENOSPC, EIO, EDQUOT…) is exit 53."""
    try:
        fdio.write_all(fd, data)
    except OSError:
        raise QueueFail(QQ.WRITE_ERROR)


def _fsync(fd: int) -> None:
    """fsync; failure is exit 53."""
    try:
        os.fsync(fd)
    except OSError:
        raise QueueFail(QQ.WRITE_ERROR)


def _fsync_dir(path: str, code: int) -> None:
    """Make a link in ``path`` durable; ``code`` if it cannot be opened, exit 53 if the fsync fails."""
    try:
        fdio.fsync_dir(path)
    except OSError as e:
        raise QueueFail(code if e.filename is not None else QQ.WRITE_ERROR)


def _copy_envelope(in_fd: int, out: bytearray, read: Callable[[], bytes] | None = None) -> None:
    """Check the envelope on ``in_fd`` record by record and append it to ``out``.

    Stops at the terminating empty record, which is not copied.  ``read`` (a
    callable returning the next chunk, b"" at the end) replaces reading ``in_fd``.
    """
    buf = b""
    pos = 0
    first = True
    while True:
        if pos < len(buf):
            lead = buf[pos:pos + 1]
            if first and lead != b"F":
                raise QueueFail(QQ.ENVELOPE)
            if not first and lead == b"\0":
                return
            if not first and lead != b"T":
                raise QueueFail(QQ.ENVELOPE)
            nul = buf.find(b"\0", pos)
            if (nul if nul != -1 else len(buf)) - pos - 1 > MAX_ADDR:
                raise QueueFail(QQ.ADDR_TOO_LONG)
            if nul != -1:
                out += buf[pos:nul + 1]
                pos = nul + 1
                first = False
                continue
        chunk = _read(in_fd) if read is None else read()
        if not chunk:
            raise QueueFail(QQ.READ_ERROR)
        buf = buf[pos:] + chunk
        pos = 0


class Writer:
    """One queue insertion; remembers what it created so failures can remove it."""

    def __init__(self, uid: int, pid: int, who: bytes, base: str = "") -> None:
        self.uid, self.pid, self.who = uid, pid, who
        self.base = base            # "" = the cwd is queue/; else a path ending in "/"
        self.msgid = 0
        self.made: list[str] = []
        self.spares = spare.pool(self.base + spare.SPAREQ)
        self.reused: set[int] = set()   # fds of spares (qpy.spare): trimmed before their fsync
        # An fd holding an exclusive flock on the mess file from before it is linked into
        # mess/ until todo/ is linked (or the insertion is given up): qmail-send's start-up
        # sweep removes an S2/S3 message only if no writer holds it (send_cleanup).
        self.lock_fd = -1

    def _create(self, name: str) -> int:
        """A spare renamed to ``name`` or a new file (O_EXCL, 0644 under umask 033)."""
        fd = self.spares.take(name, 0o644)
        if fd is None:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self.reused.add(fd)
        return fd

    def _trim(self, fd: int, length: int | None = None) -> None:
        """Cut a spare to what was written; a failure is exit 53."""
        if fd in self.reused:
            self.reused.discard(fd)
            try:
                spare.trim(fd, os.lseek(fd, 0, os.SEEK_CUR) if length is None else length)
            except OSError:
                raise QueueFail(QQ.WRITE_ERROR)

    def open_pid_file(self) -> tuple[int, str]:
        """Create pid/<pid>.<time>.<seq> exclusively (exit 63 if nine tries fail)."""
        now = int(time.time())
        for seq in range(1, 10):
            name = self.base + f"pid/{self.pid}.{now}.{seq}"
            try:
                return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), name
            except OSError:
                continue
        raise QueueFail(QQ.PID_DIR)

    def _messname(self, msgid: int) -> str:
        return self.base + f"mess/{msgid % SPLIT}/{msgid}"

    def begin(self, qp_is_id: bool = False) -> int:
        """pid file → mess link (S2) → Received line; return the mess fd (caller closes it).

        A spare (qpy.spare) goes straight to mess/: its name is its inode number, so
        it needs no pid file to learn its id, and it has its atime set to now first.

        ``qp_is_id``: the qp recorded (Received line, ``p`` record) is the message id
        instead of ``pid``: a writer inside a long-lived process (DirectJob) writes many
        messages, and each must keep a qp of its own, as each qmail-queue run has.
        """
        taken = self.spares.take_named(self._messname, 0o644, lock=True)
        if taken is not None:
            fd, self.msgid = taken
            self.lock_fd = os.dup(fd)
            self.reused.add(fd)
            self.made.append(self._messname(self.msgid))
            # S2: mess exists.
        else:
            fd = self._link_new_mess()
        try:
            if qp_is_id:
                self.pid = self.msgid
            _write_all(fd, received.queue_line(self.pid, self.who))
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _link_new_mess(self) -> int:
        """docs/queue.md §3 steps 2-3: a new pid file, linked to mess/<id> (S2); return its fd."""
        fd, pidname = self.open_pid_file()
        self.made.append(pidname)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)      # a new inode: nobody else can hold it
            self.lock_fd = os.dup(fd)
            self.msgid = os.fstat(fd).st_ino
            messname = self._messname(self.msgid)
            try:
                os.link(pidname, messname)
            except OSError:
                raise QueueFail(QQ.MESS_DIR)
            self.made.append(messname)
            try:
                os.unlink(pidname)
            except OSError:
                raise QueueFail(QQ.PID_DIR)
            self.made.remove(pidname)
            # S2: mess exists.
        except BaseException:
            os.close(fd)
            raise
        return fd

    def sync_mess(self, fd: int) -> None:
        """fsync the message, close it, and make its mess/ link durable."""
        try:
            self._trim(fd)
            _fsync(fd)
        finally:
            self.reused.discard(fd)
            os.close(fd)
        _fsync_dir(self.base + f"mess/{self.msgid % SPLIT}", QQ.MESS_DIR)

    def _write_intd(self, envelope: Callable[[bytearray], None]) -> int:
        """Create intd/<id> (S3) and write ``u…\0p…\0`` + the envelope; return its open fd.

        ``envelope(out)`` appends the checked envelope records (without the final
        empty one) to ``out``; it raises QueueFail.  The caller fsyncs and closes the fd.
        """
        intdname = self.base + f"intd/{self.msgid}"
        try:
            ifd = self._create(intdname)
        except OSError:
            raise QueueFail(QQ.INTD_DIR)
        self.made.append(intdname)
        try:
            # S3: intd exists.
            records = bytearray(b"u%d\0p%d\0" % (self.uid, self.pid))
            envelope(records)
            _write_all(ifd, records)
            self._trim(ifd, len(records))
        except BaseException:
            self.reused.discard(ifd)
            os.close(ifd)
            raise
        return ifd

    def _link_todo(self) -> int:
        """link intd/<id> to todo/<id> and fsync todo/ (S4); return the id."""
        try:
            os.link(self.base + f"intd/{self.msgid}", self.base + f"todo/{self.msgid}")
        except OSError:
            raise QueueFail(QQ.TODO_DIR)
        _fsync_dir(self.base + "todo", QQ.TODO_DIR)
        # S4: the message is queued at this instant.
        self.made.clear()
        self.unlock()
        return self.msgid

    def unlock(self) -> None:
        """Let go of the mess file's lock (S4 reached, or the insertion given up)."""
        if self.lock_fd >= 0:
            fdio.close_quietly(self.lock_fd)
            self.lock_fd = -1

    def finish(self, envelope: Callable[[bytearray], None]) -> int:
        """intd (S3) → envelope → fsync → todo link (S4) → fsync todo/; return the id."""
        ifd = self._write_intd(envelope)
        try:
            _fsync(ifd)
        finally:
            os.close(ifd)
        return self._link_todo()

    def commit(self, fd: int, envelope: Callable[[bytearray], None]) -> int:
        """``sync_mess(fd)`` + ``finish(envelope)`` for a caller holding the envelope already.

        The same files and the same fsyncs; only intd/<id> is created and written before
        the message's fsync instead of after it, and writeback of both files is started
        first, so one journal commit covers the message, its mess/ link and intd/<id>
        (two commits per message instead of three).  intd/<id> is invisible to
        qmail-send (S3, cleaned after 36 h like S2), so every crash state is one
        docs/queue.md §3 allows, and todo/<id> is still linked only after the message, its
        mess/ link and intd/<id> are all on disk.
        """
        try:
            ifd = self._write_intd(envelope)
            try:
                self._trim(fd)
                start_writeback(fd)
                start_writeback(ifd)
                _fsync(fd)
                _fsync(ifd)
            finally:
                os.close(ifd)
        finally:
            self.reused.discard(fd)
            os.close(fd)
        _fsync_dir(self.base + f"mess/{self.msgid % SPLIT}", QQ.MESS_DIR)
        return self._link_todo()

    def run(self, msg_fd: int, env_fd: int, flags: int = 0) -> int:
        """Queue the message read from ``msg_fd`` with the envelope on ``env_fd``; return the id.

        With ``flags`` (qpy.submit) the whole message is read first and the fields
        submit.prefix() makes (DKIM-Signature, an ARC set) go between the Received line
        and the message; without, the message streams to disk.  Either way the envelope
        passes through submit.envelope() (SRS).
        """
        head = b""
        if flags:
            message = b"".join(iter(lambda: _read(msg_fd), b""))
            head = submit.prefix(flags, message)
        fd = self.begin()
        try:
            if flags:
                _write_all(fd, head + message)
            else:
                while chunk := _read(msg_fd):
                    _write_all(fd, chunk)
        except BaseException:
            os.close(fd)
            raise
        self.sync_mess(fd)
        return self.finish(envelope_filler(env_fd, flags))

    def remove_partial(self) -> None:
        """Truncate and unlink what this run created (no todo link exists)."""
        for name in self.made:
            try:
                os.truncate(name, 0)
            except OSError:
                pass
            try:
                os.unlink(name)
            except OSError:
                pass
        self.unlock()


def envelope_filler(env_fd: int, flags: int, read: Callable[[], bytes] | None = None
                    ) -> Callable[[bytearray], None]:
    """finish()'s ``envelope``: the checked records from ``env_fd`` (or ``read``) after SRS."""
    def fill(out: bytearray) -> None:
        start = len(out)
        _copy_envelope(env_fd, out, read)
        out[start:] = submit.envelope(flags, bytes(out[start:]))
    return fill


def code_of(e: BaseException) -> int:
    """qmail-queue's exit code for an exception raised while writing; anything else is re-raised."""
    if isinstance(e, QueueFail):
        return e.exit_code
    if isinstance(e, MemoryError):
        return QQ.NOMEM
    if isinstance(e, OSError):
        return QQ.WRITE_ERROR if e.errno in (errno.ENOSPC, errno.EIO, errno.EDQUOT) else QQ.BUG
    raise e


def queue(msg_fd: int, env_fd: int, uid: int, who: bytes, pid: int | None = None,
          flags: int | None = None) -> int:
    """Run the whole qmail-queue sequence in the current directory (queue/); return the exit code.

    ``pid`` is the qp recorded in the Received line and the todo file (default: ours;
    qmail-queued passes its client's, so the caller's ``qp`` matches qmail-send's log).
    ``flags``: qpy.submit's, default those of this process's environment.
    """
    writer = Writer(uid, pid or os.getpid(), who)
    try:
        writer.run(msg_fd, env_fd, submit.from_env() if flags is None else flags)
    except (QueueFail, MemoryError, OSError) as e:
        writer.remove_partial()
        return code_of(e)
    trigger.pull()
    return QQ.OK


def read_envelope(fd: int) -> bytes:
    """Read and check the envelope on ``fd``; its records without the final NUL.  Raises QueueFail."""
    out = bytearray()
    _copy_envelope(fd, out)
    return bytes(out)


def become_owner(owner: os.stat_result) -> None:
    """As root, become queue/'s owner and group, as qmail's setuid qmailq would.  Raises."""
    if os.geteuid() != owner.st_uid:
        prot.drop_to(owner.st_uid, owner.st_gid)


# qmail-queue's signals.
ALARM = 86400


def alarm_seconds() -> int:
    """The suicide timer: 24 h, or $QPY_QUEUE_ALARM seconds."""
    return int(os.environ.get("QPY_QUEUE_ALARM") or ALARM)


def _on_alarm(signum: int, frame: object) -> None:
    raise QueueFail(QQ.TIMEOUT)


def _on_bug(signum: int, frame: object) -> None:
    raise QueueFail(QQ.BUG)


# qmail's sig_miscignore and sig_bugcatch: a terminal's ^C or a hangup must not cut a
# write in half; a file size limit turns into a write error; a fault signal is exit 81.
IGNORED = (signal.SIGPIPE, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGXFSZ,
           signal.SIGVTALRM, signal.SIGPROF)
BUGS = (signal.SIGILL, signal.SIGABRT, signal.SIGFPE, signal.SIGBUS, signal.SIGSEGV,
        signal.SIGSYS, signal.SIGTRAP)


def setup_signals() -> None:
    """qmail-queue's signals: ALRM is exit 52, a fault signal exit 81, the IGNORED ones ignored."""
    signal.signal(signal.SIGALRM, _on_alarm)
    for sig in IGNORED:
        signal.signal(sig, signal.SIG_IGN)
    for sig in BUGS:
        signal.signal(sig, _on_bug)
