"""qmail-queue - put one message into the queue.

SYNOPSIS  qmail-queue
RUNS AS   qmailq (privileged mode: started by the queue service); the invoking user in
          single-user mode.  cwd QMAILHOME/queue, umask 033.
READS     the message on fd 0 (raw bytes, copied verbatim), then the envelope on fd 1:
          ``F<sender>\\0T<rcpt>\\0…\\0`` (protocols.md §1).
WRITES    nothing on any fd.  mess/<id%23>/<id> = its own Received line + the message;
          intd/<id> and todo/<id> = ``u<uid>\\0p<pid>\\0F…\\0T…\\0``.
TRUSTS    nothing on fd 0 or fd 1: the message is never parsed, the envelope is checked.
ORDER     pid file → link mess → write+fsync → intd → fsync → link todo (queued) → trigger.
          A crash before the todo link leaves nothing qmail-send treats as a message.
EXIT      0 queued; 11 address too long; 51 out of memory; 52 timeout (24 h, or
          $QPY_QUEUE_ALARM seconds); 53 write error or disk full; 54 read error or
          envelope cut short; 61 home; 62 queue; 63 pid; 64 mess; 65 intd; 66 todo;
          81 internal bug; 91 envelope format error.
"""
from __future__ import annotations

import errno
import os
import signal
import time

from qpy import auto, prot, received, trigger
from qpy.auto import SPLIT
from qpy.envelope import MAX_ADDR
from qpy.exitcodes import QQ

ALARM = 86400
CHUNK = 65536


class Exit(Exception):
    """Leave with a qmail-queue exit code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def who_invoked(uid: int, priv: bool) -> bytes:
    """The WHO of the Received line: which account handed us the message."""
    if priv:
        for name, text in ((auto.ALIAS, b"by alias"), (auto.QMAILD, b"from network"),
                           (auto.QMAILS, b"for bounce")):
            acct = prot.lookup_user(name)
            if acct is not None and acct.uid == uid:
                return text
    return b"by uid %d" % uid


def _read(fd: int) -> bytes:
    """Read a chunk; a read error is exit 54."""
    while True:
        try:
            return os.read(fd, CHUNK)
        except InterruptedError:
            continue
        except OSError:
            raise Exit(QQ.READ_ERROR)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    """Write everything; a write error (ENOSPC, EIO, EDQUOT…) is exit 53."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except InterruptedError:
            continue
        except OSError:
            raise Exit(QQ.WRITE_ERROR)
        view = view[n:]


def _fsync(fd: int) -> None:
    """fsync; failure is exit 53."""
    try:
        os.fsync(fd)
    except OSError:
        raise Exit(QQ.WRITE_ERROR)


def _fsync_dir(path: str, code: int) -> None:
    """Make a link in ``path`` durable; failure is ``code``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        raise Exit(code)
    try:
        os.fsync(fd)
    except OSError:
        raise Exit(QQ.WRITE_ERROR)
    finally:
        os.close(fd)


def _copy_envelope(in_fd: int, out: bytearray) -> None:
    """Check the envelope on ``in_fd`` record by record and append it to ``out``.

    Stops at the terminating empty record, which is not copied.
    """
    buf = b""
    pos = 0
    first = True
    while True:
        if pos < len(buf):
            lead = buf[pos:pos + 1]
            if first and lead != b"F":
                raise Exit(QQ.ENVELOPE)
            if not first and lead == b"\0":
                return
            if not first and lead != b"T":
                raise Exit(QQ.ENVELOPE)
            nul = buf.find(b"\0", pos)
            if (nul if nul != -1 else len(buf)) - pos - 1 > MAX_ADDR:
                raise Exit(QQ.ADDR_TOO_LONG)
            if nul != -1:
                out += buf[pos:nul + 1]
                pos = nul + 1
                first = False
                continue
        chunk = _read(in_fd)
        if not chunk:
            raise Exit(QQ.READ_ERROR)
        buf = buf[pos:] + chunk
        pos = 0


class Writer:
    """One queue insertion; remembers what it created so failures can remove it."""

    def __init__(self, uid: int, pid: int, who: bytes) -> None:
        self.uid, self.pid, self.who = uid, pid, who
        self.made: list[str] = []

    def open_pid_file(self) -> tuple[int, str]:
        """Create pid/<pid>.<time>.<seq> exclusively (exit 63 if nine tries fail)."""
        now = int(time.time())
        for seq in range(1, 10):
            name = f"pid/{self.pid}.{now}.{seq}"
            try:
                return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), name
            except OSError:
                continue
        raise Exit(QQ.PID_DIR)

    def run(self, msg_fd: int, env_fd: int) -> int:
        """Queue the message; return the id.  Raises Exit on failure."""
        line = received.queue_line(self.pid, self.who)
        fd, pidname = self.open_pid_file()
        self.made.append(pidname)
        try:
            msgid = os.fstat(fd).st_ino
            messname = f"mess/{msgid % SPLIT}/{msgid}"
            try:
                os.link(pidname, messname)
            except OSError:
                raise Exit(QQ.MESS_DIR)
            self.made.append(messname)
            try:
                os.unlink(pidname)
            except OSError:
                raise Exit(QQ.PID_DIR)
            self.made.remove(pidname)
            # S2: mess exists.
            _write_all(fd, line)
            while True:
                chunk = _read(msg_fd)
                if not chunk:
                    break
                _write_all(fd, chunk)
            _fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(f"mess/{msgid % SPLIT}", QQ.MESS_DIR)
        intdname = f"intd/{msgid}"
        try:
            ifd = os.open(intdname, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError:
            raise Exit(QQ.INTD_DIR)
        self.made.append(intdname)
        try:
            # S3: intd exists.
            records = bytearray(b"u%d\0p%d\0" % (self.uid, self.pid))
            _copy_envelope(env_fd, records)
            _write_all(ifd, records)
            _fsync(ifd)
        finally:
            os.close(ifd)
        try:
            os.link(intdname, f"todo/{msgid}")
        except OSError:
            raise Exit(QQ.TODO_DIR)
        _fsync_dir("todo", QQ.TODO_DIR)
        # S4: the message is queued at this instant.
        self.made.clear()
        return msgid

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


def _on_alarm(signum: int, frame: object) -> None:
    raise Exit(QQ.TIMEOUT)


def queue(msg_fd: int, env_fd: int, uid: int, who: bytes) -> int:
    """Run the whole qmail-queue sequence in the current directory (queue/); return the exit code."""
    writer = Writer(uid, os.getpid(), who)
    try:
        writer.run(msg_fd, env_fd)
    except Exit as e:
        writer.remove_partial()
        return e.code
    except MemoryError:
        writer.remove_partial()
        return QQ.NOMEM
    except OSError as e:
        writer.remove_partial()
        return QQ.WRITE_ERROR if e.errno in (errno.ENOSPC, errno.EIO, errno.EDQUOT) else QQ.BUG
    trigger.pull()
    return QQ.OK


def _on_bug(signum: int, frame: object) -> None:
    raise Exit(QQ.BUG)


# qmail's sig_miscignore and sig_bugcatch: a terminal's ^C or a hangup must not cut a
# write in half; a file size limit turns into a write error; a fault signal is exit 81.
IGNORED = (signal.SIGPIPE, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGXFSZ,
           signal.SIGVTALRM, signal.SIGPROF)
BUGS = (signal.SIGILL, signal.SIGABRT, signal.SIGFPE, signal.SIGBUS, signal.SIGSEGV,
        signal.SIGSYS, signal.SIGTRAP)


def main(argv: list[str] | None = None) -> int:
    """Queue the message on fd 0 with the envelope on fd 1."""
    os.umask(0o033)
    signal.signal(signal.SIGALRM, _on_alarm)
    for sig in IGNORED:
        signal.signal(sig, signal.SIG_IGN)
    for sig in BUGS:
        signal.signal(sig, _on_bug)
    try:
        signal.alarm(int(os.environ.get("QPY_QUEUE_ALARM") or ALARM))
        try:
            os.chdir(auto.home())
        except OSError:
            return QQ.HOME
        try:
            os.chdir("queue")
        except OSError:
            return QQ.QUEUE_DIR
        uid = os.getuid()
        return queue(0, 1, uid, who_invoked(uid, prot.privileged("..")))
    except Exit as e:
        return e.code
    except MemoryError:
        return QQ.NOMEM
    except Exception:
        return QQ.BUG
    finally:
        signal.alarm(0)
