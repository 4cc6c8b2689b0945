"""mbox delivery (docs/control.md §6): append under flock, ``>From `` quoting, truncate back on error.

``deliver(path, head, msg_fd)`` opens ``path`` with O_APPEND|O_CREAT (0600),
takes an exclusive flock within ``lock_timeout`` seconds (timeout → TempFail
"File has been locked for 30 seconds straight."; any other lock error → go on
unlocked), remembers the end offset, writes ``head`` (From_, Return-Path and
Delivered-To lines), the message with ``>`` before every line matching
``^>*From ``, a newline if the last line lacks one, one empty line, and fsyncs.
On a read or write error a locked file is truncated back to the remembered
offset; every failure is a TempFail.
"""
from __future__ import annotations

import fcntl
import os
import signal

from qpy import errstr, fdio
from qpy.errors import TempFail

LOCK_TIMEOUT = 30
CHUNK = 65536


class LockTimeout(Exception):
    """The alarm rang while waiting for the lock."""


def is_from(line: bytes) -> bool:
    """qmail's gfrom: the line matches ``^>*From ``."""
    return line.lstrip(b">").startswith(b"From ")


def quote(lines: bytes) -> bytes:
    """Prefix ``>`` to every line of ``lines`` (complete lines only) that matches ``^>*From ``."""
    if b"From " not in lines:
        return lines
    parts = lines.split(b"\n")
    return b"\n".join(b">" + p if is_from(p) else p for p in parts)


def _on_alarm(signum: int, frame: object) -> None:
    raise LockTimeout()


def lock(fd: int, timeout: int = LOCK_TIMEOUT) -> bool:
    """flock(LOCK_EX) within ``timeout`` seconds: True locked, False lock failed (go on)."""
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(timeout)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    except LockTimeout:
        raise TempFail(f"File has been locked for {timeout} seconds straight. (#4.3.0)") from None
    except OSError:
        return False
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


class _ReadError(Exception):
    pass


def _body(msg_fd: int, fd: int, out: bytearray) -> None:
    """Copy the message, quoted, after ``out``; end with a newline and an empty line."""
    carry = b""
    while True:
        try:
            chunk = os.read(msg_fd, CHUNK)
        except OSError as e:
            raise _ReadError(errstr.text(e)) from e
        if not chunk:
            break
        data = carry + chunk
        nl = data.rfind(b"\n")
        if nl == -1:
            carry = data
            continue
        out += quote(data[:nl + 1])
        carry = data[nl + 1:]
        if len(out) >= CHUNK:
            fdio.write_all(fd, out)
            out.clear()
    if carry:
        out += (b">" if is_from(carry) else b"") + carry + b"\n"
    out += b"\n"
    fdio.write_all(fd, out)


def _truncate(fd: int, pos: int, locked: bool) -> None:
    """Cut a partial delivery off again, but only if we held the lock (else we might cut
    another writer's message)."""
    if locked:
        try:
            os.ftruncate(fd, pos)
        except OSError:
            pass


def deliver(path: bytes, head: bytes, msg_fd: int, lock_timeout: int = LOCK_TIMEOUT) -> None:
    """Append the message on ``msg_fd`` (from its current offset) to the mbox at ``path``."""
    shown = os.fsdecode(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o600)
    except OSError as e:
        raise TempFail(f"Unable to open {shown}: {errstr.text(e)}. (#4.2.1)") from e
    try:
        locked = lock(fd, lock_timeout)
        pos = os.lseek(fd, 0, os.SEEK_END)
        try:
            _body(msg_fd, fd, bytearray(head))
            os.fsync(fd)
        except _ReadError as e:
            _truncate(fd, pos, locked)
            raise TempFail(f"Unable to read message: {e}. (#4.3.0)") from None
        except OSError as e:
            _truncate(fd, pos, locked)
            raise TempFail(f"Unable to write {shown}: {errstr.text(e)}. (#4.3.0)") from e
    finally:
        os.close(fd)
