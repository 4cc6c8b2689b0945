"""File-descriptor plumbing shared by every program: whole writes and reads, copies,
directory fsyncs, the signal self-pipe and reaping children.

All calls are on raw fds (``os.read``/``os.write``); none buffers.  System calls
interrupted by a signal are retried by Python itself (PEP 475), so nothing here
handles EINTR.  Failures are OSError, except where a function says otherwise.
"""
from __future__ import annotations

import os
import signal

CHUNK = 65536


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data`` to a blocking ``fd``; OSError (EPIPE included) on trouble."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def feed(fd: int, data: bytes | bytearray | memoryview) -> bool:
    """Write all of ``data``; False (and stop) if the reader went away (EPIPE)."""
    try:
        write_all(fd, data)
    except BrokenPipeError:
        return False
    return True


def write_quietly(fd: int, data: bytes | bytearray | memoryview) -> bool:
    """Write all of ``data``; False (and stop) on any error (a dead log or report pipe)."""
    try:
        write_all(fd, data)
    except OSError:
        return False
    return True


def read_all(fd: int, chunk: int = CHUNK, limit: int | None = None) -> bytes:
    """Read ``fd`` to EOF, or until ``limit`` bytes (if given) have arrived."""
    parts = []
    got = 0
    while limit is None or got < limit:
        data = os.read(fd, chunk if limit is None else min(chunk, limit - got))
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def read_ready(fd: int, chunk: int = CHUNK) -> bytes | None:
    """One read of a non-blocking ``fd`` that poll() found readable: the data; b"" at EOF
    or on an error (the peer is gone either way); None if nothing is there after all."""
    try:
        return os.read(fd, chunk)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def read_file(path: str, with_mtime: bool = False) -> tuple[bytes, int]:
    """The whole file and (if ``with_mtime``) its mtime, else 0; OSError on trouble."""
    fd = os.open(path, os.O_RDONLY)
    try:
        mtime = int(os.fstat(fd).st_mtime) if with_mtime else 0
        return read_all(fd), mtime
    finally:
        os.close(fd)


def copy(src: int, dst: int, chunk: int = CHUNK) -> bool:
    """Copy ``src`` to EOF into ``dst``; False if the reader of ``dst`` went away.

    A read error raises OSError (callers report "unable to read").
    """
    while data := os.read(src, chunk):
        if not feed(dst, data):
            return False
    return True


def open_dir(path: str | bytes, dir_fd: int | None = None) -> int:
    """An fd on the directory ``path`` (to fsync, flock or use as a ``dir_fd``)."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY, dir_fd=dir_fd)


def fsync_dir(path: str | bytes, dir_fd: int | None = None) -> None:
    """fsync the directory ``path`` itself (so a link, rename or unlink in it is durable).

    OSError; its ``filename`` is set only when the directory could not be opened.
    """
    fd = open_dir(path, dir_fd)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink_missing_ok(path: str) -> None:
    """unlink ``path``; a missing file is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def close_quietly(fd: int) -> None:
    """close ``fd``, ignoring errors (cleanup paths)."""
    try:
        os.close(fd)
    except OSError:
        pass


class SelfPipe:
    """The signal self-pipe: a handler's signal makes the read end readable, so a
    select()/poll() loop wakes up for it (signal.set_wakeup_fd)."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        os.set_blocking(self.w, False)
        self.installed = False

    def install(self) -> None:
        """Route signal wakeups into this pipe from now on (close() restores the previous fd)."""
        self.old = signal.set_wakeup_fd(self.w, warn_on_full_buffer=False)
        self.installed = True

    def drain(self) -> None:
        """Empty the pipe (after select() found it readable)."""
        try:
            while os.read(self.r, 512):
                pass
        except OSError:
            pass

    def close(self) -> None:
        """Uninstall (the previous wakeup fd comes back) and close both ends."""
        if self.installed:
            signal.set_wakeup_fd(self.old)
            self.installed = False
        close_quietly(self.r)
        close_quietly(self.w)


class Suspended:
    """``with Suspended():`` no signal wakeup fd inside (a forked child must not write a
    parent's wakeups into an fd it reuses); the previous one is restored after."""

    def __enter__(self) -> Suspended:
        self.old = signal.set_wakeup_fd(-1)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.set_wakeup_fd(self.old)


def reap() -> list[tuple[int, int]]:
    """Every child that has exited, without blocking: ``[(pid, wait status), …]``."""
    done = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        done.append((pid, status))
    return done


def wait_status(pid: int) -> int:
    """Wait for child ``pid``; its wait status."""
    return os.waitpid(pid, 0)[1]


def exit_code(status: int) -> int | None:
    """A wait status's exit code, or None if a signal killed the process."""
    return None if os.WIFSIGNALED(status) else os.waitstatus_to_exitcode(status)
