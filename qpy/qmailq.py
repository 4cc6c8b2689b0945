"""The caller's side of qmail-queue (qmail.c's qmail_open/qmail_put/qmail_close).

``QueueJob()`` starts the queue program with fd 0 = message pipe, fd 1 =
envelope pipe, fd 6 = error pipe.  It is ``$QMAILQUEUE`` if set (fork+exec),
``QMAILHOME/bin/qmail-queue`` when ``QPY_EXEC`` forces exec, and otherwise a
warm fork that runs qpy.programs.qmail_queue.main() without an exec.
``close()`` returns qmail_close()'s text: empty for success, else ``Z…``/``D…``.
"""
from __future__ import annotations

import os
import signal

from qpy import auto, envelope, warm
from qpy.exitcodes import QQ, qq_text


class QueueJob:
    """One running qmail-queue."""

    def __init__(self, program: str | None = None) -> None:
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
                code = _run_child(program)
            except BaseException:
                pass
            warm.child_exit(code)
        os.close(msg_r)
        os.close(env_r)
        os.close(err_w)
        self._msg, self._env, self._err = msg_w, env_w, err_r

    def put(self, data: bytes) -> None:
        """Write message bytes; after a write error the rest is discarded."""
        if self.error or self._msg < 0:
            return
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._msg, view):]
            except InterruptedError:
                continue
            except OSError:
                self.error = True
                return

    def close(self, sender: bytes, recipients: list[bytes]) -> str:
        """Finish the message, send the envelope, wait; return qmail_close()'s text."""
        os.close(self._msg)
        self._msg = -1
        data = envelope.encode(sender, recipients)
        view = memoryview(data)
        while view and not self.error:
            try:
                view = view[os.write(self._env, view):]
            except InterruptedError:
                continue
            except OSError:
                self.error = True
        os.close(self._env)
        fd6 = b""
        while len(fd6) < 255:
            try:
                chunk = os.read(self._err, 255 - len(fd6))
            except InterruptedError:
                continue
            except OSError:
                break
            if not chunk:
                break
            fd6 += chunk
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
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._msg = self._env = self._err = -1
        try:
            os.kill(self.pid, signal.SIGTERM)
        except OSError:
            pass
        _wait(self.pid)


def _wait(pid: int) -> int:
    """Return the exit code, or -signal if the child was killed."""
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
        except ChildProcessError:
            return -1
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


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
    job = QueueJob()
    job.put(message)
    return job.close(sender, recipients)


def queue_fd(fd: int, sender: bytes, recipients: list[bytes], head: bytes = b"") -> tuple[str, int]:
    """Queue ``head`` + everything readable from ``fd``; return (qmail_close text, qp).

    A read error on ``fd`` kills the queue program (nothing is queued) and raises OSError.
    """
    job = QueueJob()
    if head:
        job.put(head)
    while True:
        try:
            data = os.read(fd, 65536)
        except InterruptedError:
            continue
        except OSError:
            job.abort()
            raise
        if not data:
            return job.close(sender, recipients), job.pid
        job.put(data)
