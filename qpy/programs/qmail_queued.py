"""qmail-queued - the queue service: queue messages for callers who may not write the queue.

SYNOPSIS  qmail-queued [concurrency]
RUNS AS   qmailq, group qmail (privileged mode): started as root it becomes the queue's
          owner at once, before it creates anything; started as qmailq it stays so.
          In single-user mode the invoking user, who must own queue/.  cwd
          QMAILHOME/queue, umask 033.
LISTENS   on the Unix stream socket QMAILHOME/public/qmail-queued (mode 0666 in the
          0711 directory public/, which only qmailq can write: nobody else can put
          a socket there).  It flocks public/ so a second copy refuses to start.
PROTOCOL  client → service: one byte, the submission's flags (qpy.submit: 1 sign, 2
          forward; other bits ignored), carrying exactly two fds by SCM_RIGHTS,
          the client's fd 0 (message) and fd 1 (envelope).  service → client: one byte,
          the exit code of the queue writer, or 255 (busy: nothing was read, use
          maildrop/) before any fd is read.  A request without exactly two fds is
          closed without an answer (the client reports 81).
DOES      per connection: the uid from SO_PEERCRED (the kernel's word, never the
          client's), then a warm child that receives the fds (30 s limit) and runs
          qmail-queue's writer on them: ``queue(0, 1, uid, who, pid)`` with WHO
          as qmail-queue's for that uid and pid = the client's pid (its qp).
TRUSTS    nothing a client sends: the message is copied, the envelope checked by the
          writer, the uid and pid come from the kernel.  A client can only make it
          read the fds it passed (which it could read itself) and write one normal
          queue entry recording its own uid.
LIMITS    at most ``concurrency`` (default 200) submissions at once, and at most half
          of them from one uid; beyond that a client gets 255 and uses maildrop/.
          The parent never reads from a client, so a slow one holds only its child.
LOG       ``qmail-queued: warning: …`` / ``fatal: …`` lines on fd 2.
EXIT      0 after SIGTERM (running children finish their messages); 100 usage;
          111 if it cannot start (no instance, not the queue's owner, already running).
"""
from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import socket
import sys
import time

from qpy import auto, fdio, maildrop, prot, queuewrite, submit, warm
from qpy.errors import Exit

NAME = "qmail-queued"
CONCURRENCY = 200
BACKLOG = 128
HELLO_TIMEOUT = 30.0
BUSY = bytes([maildrop.BUSY])


def log(text: str) -> None:
    """One line on fd 2; a dead log is ignored."""
    try:
        os.write(2, f"{NAME}: {text}\n".encode("utf-8", "replace"))
    except OSError:
        pass


def become_owner() -> None:
    """As root, become queue/'s owner (qmailq, group qmail); otherwise we must be it."""
    try:
        queuewrite.become_owner(os.stat("queue"))
    except OSError as e:
        raise Exit(111, f"unable to stat queue: {e.strerror}")
    except prot.TempFail:
        raise Exit(111, "not the owner of queue")


def lock_public() -> int:
    """flock public/ (ours, not writable by anyone else); return the held fd."""
    try:
        fd = fdio.open_dir(maildrop.PUBLIC)
    except OSError as e:
        raise Exit(111, f"unable to open {maildrop.PUBLIC}: {e.strerror}")
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise Exit(111, f"{maildrop.PUBLIC} must be ours and writable by nobody else")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise Exit(111, "cannot start: qmail-queued is already running")
    return fd


def listen(path: str) -> socket.socket:
    """A listening socket, mode 0666, put in place at ``path`` (over a leftover one) only
    once it accepts connections."""
    tmp = path + ".new"
    fdio.unlink_missing_ok(tmp)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = prot.set_umask(0o111)
    try:
        sock.bind(tmp)
    finally:
        prot.set_umask(old)
    sock.listen(BACKLOG)
    sock.setblocking(False)
    os.rename(tmp, path)
    return sock


class Service:
    """The accept loop and its children."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.per_uid = max(1, concurrency // 2)
        self.children: dict[int, int] = {}  # pid → client uid
        self.stopping = False
        home = os.path.abspath(auto.home())
        try:
            os.chdir(home)
        except OSError as e:
            raise Exit(111, f"unable to chdir to {home}: {e.strerror}")
        self.priv = queuewrite.privileged_instance()
        become_owner()
        self.special = queuewrite.special_uids(self.priv)
        self.lock = lock_public()
        try:
            self.sock = listen(maildrop.SOCKET)
        except OSError as e:
            raise Exit(111, f"unable to listen on {maildrop.SOCKET}: {e.strerror}")
        try:
            os.chdir("queue")
        except OSError as e:
            raise Exit(111, f"unable to chdir to queue: {e.strerror}")
        os.umask(0o033)
        self.wake = fdio.SelfPipe()

    def stop(self, signum: int, frame: object) -> None:
        """SIGTERM: take no new connections."""
        self.stopping = True

    def serve(self) -> int:
        """Accept until SIGTERM; return 0."""
        self.wake.install()
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        try:
            while not self.stopping:
                ready, _, _ = select.select([self.sock, self.wake.r], [], [])
                if self.wake.r in ready:
                    self.wake.drain()
                self.reap()
                if self.sock in ready and not self.stopping:
                    self.accept()
        finally:
            try:    # ours: nobody else can bind there while we hold the lock
                os.unlink(os.path.join("..", maildrop.SOCKET))
            except OSError:
                pass
            self.sock.close()
        return 0

    def reap(self) -> None:
        """Collect finished children."""
        for pid, status in fdio.reap():
            uid = self.children.pop(pid, None)
            if os.WIFSIGNALED(status):
                log(f"warning: child {pid} (uid {uid}) killed by signal {os.WTERMSIG(status)}")

    def accept(self) -> None:
        """Take one connection and hand it to a child; nothing here waits for the client."""
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return
        except OSError as e:
            log(f"warning: accept failed: {e.strerror}")
            if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                time.sleep(1)
            return
        try:
            self.dispatch(conn)
        except Exception as e:
            log(f"warning: connection dropped: {e}")
        finally:
            conn.close()

    def dispatch(self, conn: socket.socket) -> None:
        """Fork the writer for this client, or tell it to use maildrop/."""
        pid, uid, _ = maildrop.peer(conn)
        mine = sum(1 for u in self.children.values() if u == uid)
        if len(self.children) >= self.concurrency or mine >= self.per_uid:
            log(f"warning: busy, uid {uid} sent to maildrop")
            conn.send(BUSY)
            return
        try:
            child = os.fork()
        except OSError as e:
            log(f"warning: unable to fork: {e.strerror}")
            conn.send(BUSY)
            return
        if child == 0:
            self.child(conn, pid, uid)
        self.children[child] = uid

    def child(self, conn: socket.socket, pid: int, uid: int) -> None:
        """In the child: take the fds, run the writer, answer with its code.  Never returns."""
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            self.sock.close()   # the listener and the lock stay with the parent alone
            for fd in (self.lock, self.wake.r, self.wake.w):
                os.close(fd)
            conn.settimeout(HELLO_TIMEOUT)
            hello, fds, msgflags, _ = socket.recv_fds(conn, 16, 3)
            if len(fds) != 2 or msgflags & socket.MSG_CTRUNC:
                warm.child_exit(0)   # every fd we got closes with us; no answer
            warm.place_fds({0: fds[0], 1: fds[1], 3: conn.detach()})
            queuewrite.setup_signals()
            signal.alarm(queuewrite.alarm_seconds())
            who = queuewrite.who_invoked(uid, self.priv, self.special)
            flags = hello[0] & submit.FLAGS if hello else 0
            code = queuewrite.queue(0, 1, uid, who, pid if pid > 0 else None, flags)
            signal.alarm(0)
            os.write(3, bytes([code]))
        except OSError:
            pass        # the client went away, or never sent its fds: no answer
        except BaseException as e:
            warm.report_crash(e)
        warm.child_exit(0)


def open_fds() -> None:
    """Make sure fds 0-2 are open, so no socket of ours lands on them."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)


def main(argv: list[str] | None = None) -> int:
    """qmail-queued [concurrency]."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) > 1 or (argv and not (argv[0].isdigit() and 0 < int(argv[0]) <= 100000)):
        log("usage: qmail-queued [concurrency]")
        return 100
    open_fds()
    try:
        service = Service(int(argv[0]) if argv else CONCURRENCY)
    except (Exit, OSError, prot.TempFail) as e:
        log(f"fatal: {e}")
        return 111
    submit.preload()        # each child signs without importing dkimpy again
    return service.serve()
