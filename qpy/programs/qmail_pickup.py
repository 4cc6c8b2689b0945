"""qmail-pickup - queue the submissions local users left in maildrop/ while qmail-queued was down.

SYNOPSIS  qmail-pickup [once]
RUNS AS   qmailq, group qmail (privileged mode): started as root it becomes the queue's
          owner at once; maildrop/ must belong to that account.  In single-user mode the
          invoking user, who owns queue/ and maildrop/.  cwd QMAILHOME (its children:
          QMAILHOME/queue), umask 033.
READS     maildrop/d<32 hex> files in qpy.maildrop's format: a 32-byte header with the
          message length, the message, the envelope.  Scans at start, when
          public/qmail-pickup (a FIFO anyone may write) is poked, and every 300 s.
          ``once``: one scan, then exit.
DOES      per file, in a warm child (killed after an hour): open with O_NOFOLLOW and
          O_NONBLOCK; refuse anything but a regular file with one link whose group is
          maildrop/'s (files made there inherit it; a hard link to somebody else's file
          keeps its own); check header and envelope; run qmail-queue's writer with the
          message and envelope on fds and the SENDER UID = THE FILE'S OWNER (st_uid of
          the open file: a user cannot give away a file); unlink the file only after
          the writer exited 0.  Other names are removed when 36 h old (a client that
          died while writing).
TRUSTS    the file's owner and nothing in it: the format is checked, the message is
          copied, the envelope is checked again by the writer.
REMOVES   (with a log line) symlinks, non-regular files, hard links, files of another
          group, files it may not read, and files our client cannot have written
          (bad header, bad envelope, truncated).  A writer failure (disk full, queue
          trouble) keeps the file; it is retried after 300 s.  A file queued whose
          unlink then fails is queued again later (a duplicate, never a loss).
LOG       ``qmail-pickup: …`` lines on fd 2 (``warning:`` for removals and failures).
EXIT      0 after SIGTERM, or after ``once`` left nothing behind; 111 if ``once`` left
          files to retry, or if it cannot start (already running, not the owner).
"""
from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import stat
import sys
import threading
import time

from qpy import auto, fdio, maildrop, prot, queuewrite, trigger, warm
from qpy.errors import Exit, QueueFail
from qpy.exitcodes import qq_text

NAME = "qmail-pickup"
SCAN_INTERVAL = 300
MIN_GAP = 1.0           # pokes of the FIFO cannot make us scan more than once a second
RETRY_GAP = 300
FILE_TIMEOUT = 3600
CHUNK = 65536
PICKED, REMOVED, RETRY, GONE = 0, 1, 2, 3
REMOVE_ERRNOS = (errno.ELOOP, errno.ENXIO, errno.EACCES, errno.EPERM)


def log(text: str) -> None:
    """One line on fd 2; a dead log is ignored."""
    try:
        os.write(2, f"{NAME}: {text}\n".encode("utf-8", "replace"))
    except OSError:
        pass


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    """Read exactly ``size`` bytes at ``offset``, or Malformed if the file is shorter now."""
    out = bytearray()
    while len(out) < size:
        chunk = os.pread(fd, min(CHUNK, size - len(out)), offset + len(out))
        if not chunk:
            raise maildrop.Malformed("file shrank")
        out += chunk
    return bytes(out)


def refusal(st: os.stat_result, gid: int) -> str:
    """Why a drop file must not be queued, or ''."""
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_nlink != 1:
        return f"hard link ({st.st_nlink} links)"
    if st.st_gid != gid:
        return f"group {st.st_gid} is not maildrop's"
    return ""


def envelope_fd(fd: int, size: int) -> tuple[int, int, int]:
    """Check a drop file's header and envelope; return (message length, fd with the envelope,
    the submission's flags)."""
    msglen, flags = maildrop.parse_header(os.pread(fd, maildrop.HEADER_LEN, 0), size)
    start = maildrop.HEADER_LEN + msglen
    env = _pread_all(fd, size - start, start)
    efd = os.memfd_create("envelope")
    with open(efd, "wb", closefd=False) as f:
        f.write(env)
    os.lseek(efd, 0, os.SEEK_SET)
    try:
        records = queuewrite.read_envelope(efd)
    except QueueFail:
        raise maildrop.Malformed("bad envelope")
    if records + b"\0" != env:
        raise maildrop.Malformed("data after the envelope")
    os.lseek(efd, 0, os.SEEK_SET)
    return msglen, efd, flags


def copy_message(fd: int, out: int, msglen: int) -> None:
    """Feed the message bytes of a drop file into a pipe (a thread beside the writer).

    If the file cannot be read to the end, the whole child goes at once: the writer
    must never see a short message as a complete one.
    """
    offset, left = maildrop.HEADER_LEN, msglen
    try:
        while left:
            n = os.sendfile(out, fd, offset, left)
            if n == 0:
                raise OSError(errno.EIO, "file shrank")
            offset += n
            left -= n
    except BrokenPipeError:
        pass        # the writer stopped reading; it reports its own code
    except OSError as e:
        log(f"warning: read error in a drop file: {e.strerror}; will try again later")
        warm.child_exit(RETRY)
    os.close(out)


class Pickup:
    """maildrop/ and what we know about it."""

    def __init__(self) -> None:
        home = os.path.abspath(auto.home())
        try:
            os.chdir(home)
            owner = os.stat("queue")
        except OSError as e:
            raise Exit(111, f"unable to reach {home}/queue: {e.strerror}")
        self.priv = queuewrite.privileged_instance()
        try:
            queuewrite.become_owner(owner)
        except prot.TempFail:
            raise Exit(111, "not the owner of queue")
        self.special = queuewrite.special_uids(self.priv)
        try:
            self.drop = fdio.open_dir(maildrop.DIR)
        except OSError as e:
            raise Exit(111, f"unable to open {maildrop.DIR}: {e.strerror}")
        st = os.fstat(self.drop)
        if st.st_uid != os.geteuid() or not st.st_mode & stat.S_ISVTX:
            raise Exit(111, f"{maildrop.DIR} must be ours and sticky")
        self.gid = st.st_gid
        try:
            fcntl.flock(self.drop, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise Exit(111, "cannot start: qmail-pickup is already running")
        try:
            self.trigger: int | None = trigger.open_listen(".", maildrop.TRIGGER)
        except OSError as e:
            log(f"warning: unable to open {maildrop.TRIGGER}: {e.strerror}; scanning every "
                f"{SCAN_INTERVAL} s only")
            self.trigger = None
        os.umask(0o033)
        self.retry_at: dict[str, float] = {}
        self.stopping = False

    # The parent: scanning and children.

    def scan(self) -> int:
        """One pass over maildrop/; return how many files wait for a retry."""
        try:
            names = os.listdir(self.drop)
        except OSError as e:
            log(f"warning: unable to list {maildrop.DIR}: {e.strerror}")
            return 1
        now = time.time()
        self.retry_at = {n: t for n, t in self.retry_at.items() if n in names}
        waiting = 0
        for name in sorted(names):
            if self.stopping:
                break
            if not maildrop.FINAL.match(name):
                self.clean(name, now)
            elif self.retry_at.get(name, 0) > now:
                waiting += 1
            elif self.run_child(name) == RETRY:
                self.retry_at[name] = time.time() + RETRY_GAP
                waiting += 1
            else:
                self.retry_at.pop(name, None)
        return waiting

    def clean(self, name: str, now: float) -> None:
        """Remove a file that is not a submission (a client died while writing) at 36 h."""
        try:
            st = os.stat(name, dir_fd=self.drop, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode) and now - st.st_mtime > maildrop.STALE:
                os.unlink(name, dir_fd=self.drop)
                log(f"warning: removed stale {maildrop.DIR}/{name} (uid {st.st_uid})")
        except OSError:
            pass

    def run_child(self, name: str) -> int:
        """Handle one file in a child; its result, RETRY if it crashed or hung."""
        r, w = os.pipe()    # EOF on r = the child is gone: a wait with a timeout
        try:
            pid = os.fork()
        except OSError as e:
            os.close(r)
            os.close(w)
            log(f"warning: unable to fork: {e.strerror}")
            return RETRY
        if pid == 0:
            code = RETRY
            try:
                os.close(r)
                code = self.pick(name)
            except BaseException as e:
                log(f"warning: {maildrop.DIR}/{name}: {e!r}; will try again later")
            warm.child_exit(code)
        os.close(w)
        try:
            ready, _, _ = select.select([r], [], [], FILE_TIMEOUT)
            if not ready:
                log(f"warning: {maildrop.DIR}/{name}: no result after {FILE_TIMEOUT} s; killed")
                os.kill(pid, signal.SIGKILL)
        finally:
            os.close(r)
        status = fdio.wait_status(pid)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) in (PICKED, REMOVED, RETRY, GONE):
            return os.WEXITSTATUS(status)
        log(f"warning: {maildrop.DIR}/{name}: child crashed (status {status}); will try again later")
        return RETRY

    # The child: one file.

    def pick(self, name: str) -> int:
        """Check one drop file and queue it as its owner; PICKED, REMOVED, RETRY or GONE."""
        signal.set_wakeup_fd(-1)
        queuewrite.setup_signals()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY,
                         dir_fd=self.drop)
        except FileNotFoundError:
            return GONE
        except OSError as e:
            if e.errno in REMOVE_ERRNOS:
                return self.remove(name, None, f"cannot open: {e.strerror}")
            log(f"warning: unable to open {maildrop.DIR}/{name}: {e.strerror}; will try again later")
            return RETRY
        st = os.fstat(fd)
        reason = refusal(st, self.gid)
        if reason:
            return self.remove(name, st, reason)
        try:
            msglen, efd, flags = envelope_fd(fd, st.st_size)
        except maildrop.Malformed as e:
            return self.remove(name, st, str(e))
        except OSError as e:
            log(f"warning: unable to read {maildrop.DIR}/{name}: {e.strerror}; will try again later")
            return RETRY
        r, w = os.pipe()
        threading.Thread(target=copy_message, args=(fd, w, msglen), daemon=True).start()
        os.chdir("queue")
        uid = st.st_uid
        code = queuewrite.queue(r, efd, uid, queuewrite.who_invoked(uid, self.priv, self.special),
                                flags=flags)
        os.chdir("..")
        if code != 0:
            log(f"warning: {maildrop.DIR}/{name} (uid {uid}): {qq_text(code)}; will try again later")
            return RETRY
        self.unlink_same(name, st)
        log(f"queued {maildrop.DIR}/{name} (uid {uid})")
        return PICKED

    def remove(self, name: str, st: os.stat_result | None, reason: str) -> int:
        """Remove a drop entry that must not be queued, with a log line."""
        who = f"uid {st.st_uid}, {st.st_size} bytes" if st is not None else "unopened"
        try:
            try:
                os.unlink(name, dir_fd=self.drop)
            except IsADirectoryError:
                os.rmdir(name, dir_fd=self.drop)
        except OSError as e:
            log(f"warning: refused {maildrop.DIR}/{name} ({who}): {reason}; unable to remove it: "
                f"{e.strerror}")
            return RETRY
        log(f"warning: removed {maildrop.DIR}/{name} ({who}): {reason}")
        return REMOVED

    def unlink_same(self, name: str, st: os.stat_result) -> None:
        """Unlink the queued file, unless its owner replaced it meanwhile."""
        try:
            now = os.stat(name, dir_fd=self.drop, follow_symlinks=False)
            if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                os.unlink(name, dir_fd=self.drop)
        except FileNotFoundError:
            pass
        except OSError as e:
            log(f"warning: queued {maildrop.DIR}/{name} but unable to remove it ({e.strerror}): "
                "it will be queued again")

    # The loop.

    def stop(self, signum: int, frame: object) -> None:
        """SIGTERM: finish the current file, then exit."""
        self.stopping = True

    def poked(self) -> None:
        """Empty the FIFO; reopen it when its last writer has gone (else it stays readable)."""
        assert self.trigger is not None
        try:
            while os.read(self.trigger, 4096):
                pass
            self.trigger = trigger.rearm(self.trigger, ".", maildrop.TRIGGER)
        except BlockingIOError:
            pass
        except OSError as e:
            log(f"warning: trouble with {maildrop.TRIGGER}: {e.strerror}")

    def run(self) -> int:
        """Scan at start, on pokes and every SCAN_INTERVAL until SIGTERM."""
        wake = fdio.SelfPipe()
        wake.install()
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        last = time.monotonic()
        self.scan()
        while not self.stopping:
            fds = [wake.r] + ([self.trigger] if self.trigger is not None else [])
            ready, _, _ = select.select(fds, [], [], max(0.0, last + SCAN_INTERVAL - time.monotonic()))
            if wake.r in ready:
                wake.drain()
            if self.stopping:
                break
            if self.trigger is not None and self.trigger in ready:
                self.poked()
            time.sleep(max(0.0, last + MIN_GAP - time.monotonic()))
            last = time.monotonic()
            self.scan()
        return 0


def main(argv: list[str] | None = None) -> int:
    """qmail-pickup [once]."""
    argv = sys.argv[1:] if argv is None else argv
    if argv not in ([], ["once"]):
        log("usage: qmail-pickup [once]")
        return 100
    try:
        pickup = Pickup()
    except (Exit, OSError) as e:
        log(f"fatal: {e}")
        return 111
    if argv == ["once"]:
        return 0 if pickup.scan() == 0 else 111
    return pickup.run()
