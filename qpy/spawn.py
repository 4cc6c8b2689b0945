"""The spawner driver shared by qmail-lspawn and qmail-rspawn (qmail's spawn.c).

PROTOCOL (docs/protocols.md §2), on the spawner's fds:

- at start, fd 1 gets one byte: the slot limit (auto.SPAWN_LIMIT = 120);
- fd 0 carries commands ``<slot:1 byte><split>/<inode>\\0<sender>\\0<recipient>\\0``
  (read non-blocking and buffered; the slot byte may itself be NUL);
- fd 1 gets one report per command, in any order: ``<slot><K|Z|D><text>\\0``.

Per command the driver checks, answering without starting anything:
slot ≥ limit → ``ZInternal error: delnum too big. (#4.3.5)``; slot busy →
``ZInternal error: delnum in use. (#4.3.5)``; message path not digits and ``/``
(or starting with ``/``) → ``DInternal error: messid has nonnumerics. (#5.3.5)``;
path of 100 bytes or more → ``… messid too long``; empty → ``… messid too short``;
recipient without ``@`` → ``DSorry, address must include host name. (#5.1.3)``;
the message (a path relative to queue/mess, the cwd) unopenable, not a regular
file, or not owned by the owner of the queue directory → ``Z…`` (#4.3.0 /
#4.3.5); pipe or fork failure → ``Z… (#4.3.0)``.  Then it forks one child per
command and, once the child's output hit EOF and the child was reaped, writes
the report the hooks make of it.  It exits 0 when fd 0 is at EOF and no child
is left; a report that cannot be written is dropped (qmail-send, gone, retries).

HOOK API.  A spawner program subclasses ``Hooks`` and calls ``run(hooks)`` after
``enter_queue()``:

``Hooks.child(self, sender: bytes, recipient: bytes, at: int) -> int``
    Runs in the forked child.  fd 0 = the message file (regular, seekable,
    offset 0), fds 1 and 2 = the report pipe, every other fd closed, signal
    dispositions at their defaults, cwd still queue/mess.  ``at`` is the index of
    the recipient's last ``@``.  Returns the child's exit code (or execs).  An
    exception escaping it becomes exit ``Hooks.crash_code``, after one line
    naming it on fd 2 (``warm.crash_line``).
``Hooks.report(self, status: int, output: bytes) -> bytes``
    Runs in the parent.  ``status`` = the child's exit code, or -signal if it
    was killed; ``output`` = what it wrote on fds 1/2 (capped, see below).
    Returns ``b"K…"``, ``b"Z…"`` or ``b"D…"``, without slot byte or NUL (the
    driver cuts the text at a NUL, if any).
``Hooks.truncreport: int``
    qmail's truncreport.  > 100: output longer than this is cut to
    ``truncreport - 34`` bytes plus ``\\nError report too long, sorry.\\n``
    (qmail-lspawn: 3000).  0: kept as is up to MAX_OUTPUT bytes, the rest is
    read and dropped (qmail-rspawn).
``Hooks.crash_code: int`` — exit code of a child whose hook raised (default 111).
``Hooks.workers: int`` — 0 (default): a fork per command.  N > 0: up to N
    long-lived *worker* children run commands one after another (see WORKERS).

WORKERS (PERFORMANCE).  A warm fork of a spawner costs ~3-4 ms of CPU here (the fork,
its copy-on-write faults and the exit), more than a whole Maildir delivery.  Where
every delivery runs under the same uid anyway (qmail-lspawn in single-user mode;
never where a child changes uid) the driver may hand a command to an idle worker: a
child forked once that receives the message fd and the report pipe over a Unix
socket (SCM_RIGHTS), sets up fds 0-2, signal dispositions and O_NONBLOCK exactly as
a fresh child gets them (plus its socket, close-on-exec), runs ``Hooks.child``
in-process, then closes every fd but its socket (so the report pipe reaches EOF and
nothing a delivery opened or locked survives it), restores cwd, umask and alarm, and
sends its exit code back as one byte.  A worker that dies
mid-command is reported like a child killed by a signal and is not reused; each
worker ends after WORKER_USES commands, and when the spawner's socket closes.  When
no worker is idle and N are busy the driver forks as before.  QPY_EXEC disables
workers (the child must exec).
"""
from __future__ import annotations

import array
import fcntl
import gc
import os
import select
import signal
import socket
import stat

from qpy import auto, fdio, warm
from qpy.errors import TempFail

MAX_OUTPUT = 65536
TRUNCMESS = b"\nError report too long, sorry.\n"
READ_CHUNK = 65536
MAX_MESSID = 100   # bytes including the NUL, as spawn.c counts
WORKER_USES = 1000 # commands a worker runs before it is replaced
CHILD_SIGNALS = warm.RESET + (signal.SIGXFSZ,)   # default in each delivery, as after spawn.c's exec


class Hooks:
    """Base class of a spawner's program-specific part (see the module docstring)."""

    truncreport = 0
    crash_code = 111
    workers = 0

    def child(self, sender: bytes, recipient: bytes, at: int) -> int:
        """Run one delivery in the forked child; return its exit code."""
        raise NotImplementedError

    def report(self, status: int, output: bytes) -> bytes:
        """Turn a finished child into ``K…``/``Z…``/``D…``."""
        raise NotImplementedError


class Delivery:
    """One running child: its pid, the read end of its output pipe, what it wrote."""

    __slots__ = ("pid", "fd", "output", "status", "eof", "worker")

    def __init__(self, pid: int, fd: int, worker: Worker | None = None) -> None:
        self.pid = pid
        self.fd = fd
        self.output = bytearray()
        self.status: int | None = None
        self.eof = False
        self.worker = worker


class Worker:
    """A long-lived child that runs commands one after another (see WORKERS)."""

    __slots__ = ("pid", "sock", "uses", "busy")

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        self.uses = 0
        self.busy: Delivery | None = None

    def close(self) -> None:
        """Drop our end; the worker sees EOF and exits."""
        try:
            self.sock.close()
        except OSError:
            pass


def enter_queue() -> None:
    """chdir to QMAILHOME/queue/mess, where message paths are relative to."""
    try:
        os.chdir(auto.home())
        os.chdir("queue/mess")
    except OSError as e:
        raise TempFail(f"unable to switch to the queue: {e.strerror}. (#4.3.0)") from e


def check_messid(messid: bytes) -> bytes | None:
    """spawn.c's messid checks: the D report for a bad path, or None if it is fine."""
    for i, ch in enumerate(messid):
        if (i == 0 or ch != 0x2F) and not 0x30 <= ch <= 0x39:
            return b"DInternal error: messid has nonnumerics. (#5.3.5)\n"
    if len(messid) + 1 > MAX_MESSID:
        return b"DInternal error: messid too long. (#5.3.5)\n"
    if not messid:
        return b"DInternal error: messid too short. (#5.3.5)\n"
    return None


def _noop(signum: int, frame: object) -> None:
    """SIGCHLD handler: its only job is to make the wakeup fd readable."""


class Spawner:
    """The slot table and the select loop."""

    def __init__(self, hooks: Hooks, fdin: int = 0, fdout: int = 1,
                 limit: int = auto.SPAWN_LIMIT, owner: int | None = None) -> None:
        self.hooks = hooks
        self.fdin, self.fdout = fdin, fdout
        self.limit = limit
        self.owner = owner if owner is not None else os.stat("..").st_uid
        self.slots: dict[int, Delivery] = {}
        self.buf = bytearray()
        self.reading = True
        self.writing = True
        self.max_workers = 0 if auto.force_exec() else hooks.workers
        self.workers: list[Worker] = []

    # -- output to qmail-send -------------------------------------------------

    def _write(self, data: bytes) -> None:
        """Write all of ``data`` to fd 1; after a failure stop writing (spawn.c's okwrite)."""
        view = memoryview(data)
        while view and self.writing:
            try:
                view = view[os.write(self.fdout, view):]
            except BlockingIOError:
                select.select([], [self.fdout], [])
            except OSError:
                self.writing = False

    def err(self, slot: int, text: bytes) -> None:
        """Report for a command that started nothing."""
        self._write(bytes([slot]) + text + b"\0")

    # -- commands -------------------------------------------------------------

    def read_commands(self) -> None:
        """Read what fd 0 has; run every complete command."""
        data = fdio.read_ready(self.fdin, READ_CHUNK)
        if data is None:
            return
        if not data:
            self.reading = False
            return
        self.buf += data
        buf = self.buf
        while buf:
            n1 = buf.find(b"\0", 1)
            n2 = buf.find(b"\0", n1 + 1) if n1 != -1 else -1
            n3 = buf.find(b"\0", n2 + 1) if n2 != -1 else -1
            if n3 == -1:
                break
            slot, messid = buf[0], bytes(buf[1:n1])
            sender, recipient = bytes(buf[n1 + 1:n2]), bytes(buf[n2 + 1:n3])
            del buf[:n3 + 1]
            self.command(slot, messid, sender, recipient)

    def command(self, slot: int, messid: bytes, sender: bytes, recipient: bytes) -> None:
        """Check one command and start its child (spawn.c's docmd)."""
        if slot >= self.limit:
            return self.err(slot, b"ZInternal error: delnum too big. (#4.3.5)\n")
        if slot in self.slots:
            return self.err(slot, b"ZInternal error: delnum in use. (#4.3.5)\n")
        bad = check_messid(messid)
        if bad:
            return self.err(slot, bad)
        at = recipient.rfind(b"@")
        if at == -1:
            return self.err(slot, b"DSorry, address must include host name. (#5.1.3)\n")
        try:
            fd = os.open(messid, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError:
            return self.err(slot, b"Zqmail-spawn unable to open message. (#4.3.0)\n")
        try:
            try:
                st = os.fstat(fd)
            except OSError:
                return self.err(slot, b"Zqmail-spawn unable to fstat message. (#4.3.0)\n")
            if not stat.S_ISREG(st.st_mode):
                return self.err(slot, b"ZSorry, message has wrong type. (#4.3.5)\n")
            if st.st_uid != self.owner:
                return self.err(slot, b"ZSorry, message has wrong owner. (#4.3.5)\n")
            try:
                r, w = os.pipe()
            except OSError:
                return self.err(slot, b"Zqmail-spawn unable to create pipe. (#4.3.0)\n")
            worker = self._idle_worker()
            if worker is not None:
                try:        # (not socket.send_fds: before 3.12 it drops the flags, and a
                            # dead idle worker would then kill us with SIGPIPE)
                    worker.sock.sendmsg([sender + b"\0" + recipient + b"\0%d" % at],
                                        [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                          array.array("i", [fd, w]))], socket.MSG_NOSIGNAL)
                except OSError:
                    self._drop_worker(worker)
                    worker = None
            if worker is not None:
                os.close(w)
                os.set_blocking(r, False)
                d = self.slots[slot] = Delivery(0, r, worker)
                worker.busy = d
                worker.uses += 1
                return None
            try:
                pid = os.fork()
            except OSError:
                os.close(r)
                os.close(w)
                return self.err(slot, b"Zqmail-spawn unable to fork. (#4.3.0)\n")
            if pid == 0:
                self._child(fd, w, sender, recipient, at)
            os.close(w)
            os.set_blocking(r, False)
            self.slots[slot] = Delivery(pid, r)
        finally:
            os.close(fd)

    # -- workers --------------------------------------------------------------

    def _idle_worker(self) -> Worker | None:
        """An idle worker, a new one if fewer than max_workers exist, else None (fork)."""
        for worker in self.workers:
            if worker.busy is None:
                return worker
        if len(self.workers) >= self.max_workers:
            return None
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError:
            return None
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            return None
        if pid == 0:
            ours.close()
            self._worker_main(theirs)
        theirs.close()
        worker = Worker(pid, ours)
        self.workers.append(worker)
        return worker

    def _drop_worker(self, worker: Worker) -> None:
        """Stop using a worker; its delivery (if any) is reported as crashed."""
        if worker in self.workers:
            self.workers.remove(worker)
        worker.close()
        if worker.busy is not None and worker.busy.status is None:
            worker.busy.status = -signal.SIGKILL
        worker.busy = None

    def worker_done(self, worker: Worker) -> None:
        """The worker's socket is readable: its exit code, or EOF (it died)."""
        try:
            data = worker.sock.recv(1)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop_worker(worker)
            return
        d, worker.busy = worker.busy, None
        if d is not None:
            d.status = data[0]
        if worker.uses >= WORKER_USES:
            self._drop_worker(worker)

    def _worker_main(self, sock: socket.socket) -> None:
        """In a worker: run commands until the spawner's end closes; never return."""
        code = 0
        try:
            signal.set_wakeup_fd(-1)
            keep = sock.fileno()
            null = os.open(os.devnull, os.O_RDWR)
            warm.place_fds({0: null, 1: null, 2: null, keep: keep}, keep=())
            os.set_inheritable(keep, False)     # nothing a delivery execs may reach it
            cwd = os.getcwd()
            mask = os.umask(0o077)
            os.umask(mask)
            while True:
                msg, fds, _, _ = socket.recv_fds(sock, 4096, 2)
                if not msg or len(fds) != 2:
                    break
                sender, recipient, at = msg.split(b"\0")
                code = self.hooks.crash_code
                try:
                    warm.reset_signals(CHILD_SIGNALS)
                    os.dup2(fds[0], 0)
                    os.dup2(fds[1], 1)
                    os.dup2(fds[1], 2)
                    os.close(fds[0])
                    os.close(fds[1])
                    flags = fcntl.fcntl(0, fcntl.F_GETFL)
                    fcntl.fcntl(0, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
                    code = self.hooks.child(sender, recipient, int(at))
                except BaseException as e:
                    warm.report_crash(e)
                # Leave nothing of this delivery behind: fds (and their locks), cwd, umask,
                # alarm, signal handlers.
                signal.alarm(0)
                null = os.open(os.devnull, os.O_RDWR)
                warm.place_fds({0: null, 1: null, 2: null, keep: keep}, keep=())
                os.set_inheritable(keep, False)
                os.chdir(cwd)
                os.umask(mask)
                sock.sendall(bytes([code & 0xFF]), socket.MSG_NOSIGNAL)
        except BaseException as e:
            warm.report_crash(e)
        warm.child_exit(0)

    def _child(self, msgfd: int, outfd: int, sender: bytes, recipient: bytes, at: int) -> None:
        """In the forked child: place the fds, run the hook, never return."""
        code = self.hooks.crash_code
        try:
            signal.set_wakeup_fd(-1)
            warm.reset_signals(CHILD_SIGNALS)
            warm.place_fds({0: msgfd, 1: outfd, 2: outfd}, keep=())
            flags = fcntl.fcntl(0, fcntl.F_GETFL)
            fcntl.fcntl(0, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
            code = self.hooks.child(sender, recipient, at)
        except BaseException as e:
            warm.report_crash(e)
        warm.child_exit(code)

    # -- children -------------------------------------------------------------

    def read_output(self, slot: int, d: Delivery) -> None:
        """Collect a child's output; note EOF."""
        data = fdio.read_ready(d.fd, READ_CHUNK)
        if data is None:
            return
        if not data:
            d.eof = True
            os.close(d.fd)
            d.fd = -1
            return
        trunc = self.hooks.truncreport
        if trunc > 100:
            d.output += data
            if len(d.output) > trunc:
                del d.output[trunc - len(TRUNCMESS) - 3:]
                d.output += TRUNCMESS
        elif len(d.output) < MAX_OUTPUT:
            d.output += data[:MAX_OUTPUT - len(d.output)]

    def reap(self) -> None:
        """Collect the exit status of every child that has ended."""
        for pid, wstat in fdio.reap():
            for d in self.slots.values():
                if d.pid == pid:
                    d.status = os.waitstatus_to_exitcode(wstat)
                    break

    def finish(self) -> None:
        """Report every delivery whose output ended and whose child was reaped."""
        for slot in [s for s, d in self.slots.items() if d.eof and d.status is not None]:
            d = self.slots.pop(slot)
            assert d.status is not None
            text = self.hooks.report(d.status, bytes(d.output))
            nul = text.find(b"\0")
            if nul != -1:
                text = text[:nul]
            self._write(bytes([slot]) + text + b"\0")

    def loop(self) -> int:
        """Serve commands until fd 0 is at EOF and every child is reported; return 0."""
        gc.freeze()     # a child's full GC must not touch (and copy) every page we share
        self._write(bytes([self.limit]))
        try:
            os.set_blocking(self.fdin, False)
        except OSError:
            self.reading = False
        wake = fdio.SelfPipe()
        wake.install()
        old_chld = signal.signal(signal.SIGCHLD, _noop)
        try:
            while True:
                self.reap()
                self.finish()
                if not self.reading and not self.slots:
                    return 0
                poller = select.poll()
                poller.register(wake.r, select.POLLIN)
                if self.reading:
                    poller.register(self.fdin, select.POLLIN)
                byfd = {}
                for slot, d in self.slots.items():
                    if not d.eof:
                        poller.register(d.fd, select.POLLIN)
                        byfd[d.fd] = slot
                workers = {}
                for worker in self.workers:
                    if worker.busy is not None:
                        poller.register(worker.sock.fileno(), select.POLLIN)
                        workers[worker.sock.fileno()] = worker
                for fd, _ in poller.poll():
                    if fd == wake.r:
                        wake.drain()
                    elif fd == self.fdin:
                        self.read_commands()
                    elif fd in byfd:
                        slot = byfd[fd]
                        self.read_output(slot, self.slots[slot])
                    elif fd in workers:
                        self.worker_done(workers[fd])
        finally:
            for worker in list(self.workers):
                self._drop_worker(worker)
            signal.signal(signal.SIGCHLD, old_chld)
            wake.close()


def run(hooks: Hooks, fdin: int = 0, fdout: int = 1, limit: int = auto.SPAWN_LIMIT) -> int:
    """Run the spawner loop with ``hooks`` in the current directory (queue/mess)."""
    return Spawner(hooks, fdin, fdout, limit).loop()
