"""The caller's side of qmail-queue (qmail.c's qmail_open/qmail_put/qmail_close).

``QueueJob()`` starts the queue program with fd 0 = message pipe, fd 1 =
envelope pipe, fd 6 = error pipe.  It is ``$QMAILQUEUE`` if set (fork+exec, or
a warm fork when it names one of our programs: qpy.shim),
``QMAILHOME/bin/qmail-queue`` when ``QPY_EXEC`` forces exec, and otherwise a
warm fork that runs qpy.programs.qmail_queue.main() without an exec.
``close()`` returns qmail_close()'s text: empty for success, else ``Z…``/``D…``.

``start()`` is what callers use: a ``DirectJob`` when this process may write the
queue itself, else a ``QueueJob``.  DirectJob (same put/close/fail/abort/pid) runs
qmail-queue's own writer (qpy.queuewrite) in this process, saving a fork per
message (PERFORMANCE: a warm fork costs ~1.5-4 ms of CPU here, more than the
whole insertion).  It is used only when nothing would differ but the process:
no QMAILQUEUE, no QPY_EXEC, and this process's real and effective uid own
QMAILHOME/queue of an instance that is not privileged (single-user mode, or root
running a root-owned instance), i.e. exactly when qmail-queue would write
directly without changing uid.  The Received line (``invoked by uid N``), the
todo records, the 24 h limit (checked at close: exit 52), the exit codes and the
four fsyncs are qmail-queue's.  The qp (Received line, todo ``p`` record, the caller's
``qp`` reply) is the message id: a process writes many messages, and each keeps a qp
of its own that links the caller's reply to qmail-send's ``info msg`` log line.  A process that dies
mid-message leaves S2/S3 files for the 36 h cleanup, as a killed qmail-queue does.
"""
from __future__ import annotations

import os
import signal
import time

from qpy import auto, envelope, fdio, queuewrite, submit, trigger, warm
from qpy.exitcodes import QQ, qq_text


class QueueJob:
    """One running qmail-queue."""

    def __init__(self, program: str | None = None, flags: int | None = None) -> None:
        self.error = False
        msg_r, msg_w = os.pipe()
        env_r, env_w = os.pipe()
        err_r, err_w = os.pipe()
        program = program if program is not None else os.environ.get("QMAILQUEUE")
        self.pid = os.fork()
        if self.pid == 0:  # child
            code = QQ.CANT_EXEC
            try:
                warm.place_fds({0: msg_r, 1: env_r, 6: err_w})
                if flags is not None:
                    submit.set_env(os.environb, flags)
                code = _run_child(program)
            except BaseException as e:
                warm.report_crash(e)
            warm.child_exit(code)
        os.close(msg_r)
        os.close(env_r)
        os.close(err_w)
        self._msg, self._env, self._err = msg_w, env_w, err_r

    def put(self, data: bytes) -> None:
        """Write message bytes; after a write error the rest is discarded."""
        if self.error or self._msg < 0:
            return
        if not fdio.write_quietly(self._msg, data):
            self.error = True

    def close(self, sender: bytes, recipients: list[bytes]) -> str:
        """Finish the message, send the envelope, wait; return qmail_close()'s text."""
        os.close(self._msg)
        self._msg = -1
        if not self.error and not fdio.write_quietly(self._env, envelope.encode(sender, recipients)):
            self.error = True
        os.close(self._env)
        try:
            fd6 = fdio.read_all(self._err, limit=255)
        except OSError:
            fd6 = b""
        os.close(self._err)
        status = _wait(self.pid)
        if status < 0:
            return qq_text(status)
        if status == 0:
            return "Zqq read error (#4.3.0)" if self.error else ""
        return qq_text(status, fd6)

    def fail(self) -> None:
        """qmail_fail(): discard the rest; close() then sends no envelope, so nothing is queued."""
        self.error = True

    def abort(self) -> None:
        """Kill the queue program without queueing anything."""
        for fd in (self._msg, self._env, self._err):
            if fd >= 0:
                fdio.close_quietly(fd)
        self._msg = self._env = self._err = -1
        try:
            os.kill(self.pid, signal.SIGTERM)
        except OSError:
            pass
        _wait(self.pid)


def _wait(pid: int) -> int:
    """Return the exit code, or -signal if the child was killed."""
    try:
        return os.waitstatus_to_exitcode(fdio.wait_status(pid))
    except ChildProcessError:
        return -1


def _run_child(program: str | None) -> int:
    """In the child: exec the configured program, or run qmail-queue warm."""
    try:
        os.chdir(auto.home())
    except OSError:
        return QQ.HOME
    try:
        return warm.run_or_exec("qmail-queue", [], program)
    except OSError:
        return QQ.CANT_EXEC


def queue_message(message: bytes, sender: bytes, recipients: list[bytes]) -> str:
    """Queue a complete message in one call; return qmail_close()'s text."""
    job = start()
    job.put(message)
    return job.close(sender, recipients)


def queue_fd(fd: int, sender: bytes, recipients: list[bytes], head: bytes = b"",
             flags: int | None = None) -> tuple[str, int]:
    """Queue ``head`` + everything readable from ``fd``; return (qmail_close text, qp).

    A read error on ``fd`` kills the queue program (nothing is queued) and raises OSError.
    ``flags`` as for start().
    """
    job = QueueJob(flags=flags)
    if head:
        job.put(head)
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            job.abort()
            raise
        if not data:
            return job.close(sender, recipients), job.pid
        job.put(data)


class DirectJob:
    """One queue insertion written by this process (see the module docstring)."""

    def __init__(self, queue_dir: str, flags: int = 0) -> None:
        self.pid = os.getpid()
        self.error = False
        self.flags = flags
        self._held: list[bytes] = []     # the message, kept while flags need all of it
        self._dir = queue_dir
        self._born = time.monotonic()
        uid = os.getuid()
        self._writer = queuewrite.Writer(uid, self.pid, b"by uid %d" % uid, queue_dir + "/")
        self._fd = -1
        self._code = 0
        old = os.umask(0o033)
        try:
            self._fd = self._writer.begin(qp_is_id=True)
            self.pid = self._writer.pid
        except BaseException as e:
            self._code = queuewrite.code_of(e)
            self._writer.remove_partial()
        finally:
            os.umask(old)

    def put(self, data: bytes) -> None:
        """Append message bytes to the mess file; after an error the rest is discarded."""
        if self.error or self._code or self._fd < 0:
            return
        if self.flags:
            self._held.append(data)
            return
        try:
            queuewrite._write_all(self._fd, data)
        except BaseException as e:
            self._code = queuewrite.code_of(e)

    def close(self, sender: bytes, recipients: list[bytes]) -> str:
        """Sync the message, write intd/todo, pull the trigger; return qmail_close()'s text."""
        if self.error and not self._code:
            self._code = QQ.READ_ERROR      # qmail-queue saw no envelope
        if not self._code and time.monotonic() - self._born > _alarm_seconds():
            self._code = QQ.TIMEOUT
        if self._code:
            self.abort()
            return qq_text(self._code)
        if self.flags:
            message = b"".join(self._held)
            try:
                queuewrite._write_all(self._fd, submit.prefix(self.flags, message) + message)
            except BaseException as e:
                self._code = queuewrite.code_of(e)
                self.abort()
                return qq_text(self._code)
        data = envelope.encode(sender, recipients)
        chunks = [data]
        old = os.umask(0o033)
        try:
            fd, self._fd = self._fd, -1
            self._writer.commit(fd, queuewrite.envelope_filler(
                -1, self.flags, lambda: chunks.pop() if chunks else b""))
        except BaseException as e:
            self._code = queuewrite.code_of(e)
            self._writer.remove_partial()
            return qq_text(self._code)
        finally:
            os.umask(old)
        trigger.pull(self._dir)
        return ""

    def fail(self) -> None:
        """qmail_fail(): discard the rest; close() then queues nothing."""
        self.error = True

    def abort(self) -> None:
        """Remove what was written; nothing is queued."""
        if self._fd >= 0:
            fdio.close_quietly(self._fd)
            self._fd = -1
        self._writer.remove_partial()


def _alarm_seconds() -> int:
    """qmail-queue's suicide timer: 24 h, or $QPY_QUEUE_ALARM seconds."""
    try:
        return int(os.environ.get("QPY_QUEUE_ALARM") or 86400)
    except ValueError:
        return 86400


_direct: dict[tuple[str, int, int], bool] = {}


def direct_queue() -> str | None:
    """QMAILHOME/queue (absolute) if this process may write it itself, else None."""
    if os.environ.get("QMAILQUEUE") or auto.force_exec():
        return None
    qdir = os.path.abspath(auto.path("queue"))
    uid, euid = os.getuid(), os.geteuid()
    key = (qdir, uid, euid)
    ok = _direct.get(key)
    if ok is None:
        try:
            owner = os.stat(qdir).st_uid
        except OSError:
            return None     # let qmail-queue report it
        ok = uid == euid == owner and not queuewrite.privileged_instance(os.path.dirname(qdir))
        _direct[key] = ok
    return qdir if ok else None


def start(flags: int | None = None) -> QueueJob | DirectJob:
    """A job for one message: written by this process when it may (DirectJob), else qmail-queue.

    ``flags`` (qpy.submit: SIGN, FORWARD) say where the message comes from; None leaves
    it to this process's environment ($DKIMSIGN, $QPY_FORWARD).
    """
    qdir = direct_queue()
    if qdir is not None:
        return DirectJob(qdir, submit.from_env() if flags is None else flags)
    return QueueJob(flags=flags)
