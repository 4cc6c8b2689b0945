"""qmail-clean - remove queue files on request from qmail-send.

SYNOPSIS  qmail-clean    (started by qmail-start)
RUNS AS   qmailq, group qmail; cwd QMAILHOME/queue.
PROTOCOL  in on fd 0: ``foop/<id>\\0`` (unlink intd/<id>, then mess/<id%23>/<id>) or
          ``todo/<id>\\0`` (unlink intd/<id>, then todo/<id>); a missing file is fine.
          The last file of each request, the inode's last link, is moved into
          queue/spareq for reuse instead of unlinked (qpy.spare), which for the
          queue is the same step.
          out on fd 1, one byte per request: ``+`` done, ``!`` an unlink failed,
          ``x`` malformed (shorter than 7 or longer than 100 bytes with its NUL, id not
          all digits, unknown prefix).  (docs/protocols.md §6)
ALSO      before the first request and every 30 requests, unlinks pid/* files whose
          atime is at least 36 h old: leftovers of a qmail-queue that died (its own
          suicide timer is 24 h, so no live qmail-queue owns them).
TRUSTS    qmail-send on fd 0 to name ids; the names it builds can only be
          intd/<digits>, todo/<digits> or mess/<n>/<digits>.
EXIT      0 at EOF on fd 0; 100 if a reply cannot be written; 111 if QMAILHOME/queue
          is unreachable.
"""
from __future__ import annotations

import os
import signal
import time

from qpy import auto, queuedir, spare
from qpy.schedule import OSSIFIED

CLEANUP_EVERY = 30
MIN_LEN, MAX_LEN = 7, 100   # request length including its NUL


def cleanup_pid(now: float) -> None:
    """Unlink pid/* files whose atime is at least OSSIFIED seconds old."""
    try:
        names = os.listdir("pid")
    except OSError:
        return
    for name in names:
        path = f"pid/{name}"
        try:
            if now < os.stat(path).st_atime + OSSIFIED:
                continue
            os.unlink(path)
        except OSError:
            continue


def _remove(intd: str, last: str) -> bool:
    """Unlink ``intd``, then give ``last`` to the spares; ENOENT is success; stop at a failure."""
    try:
        os.unlink(intd)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    try:
        spare.pool(spare.SPAREQ).give(last)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True


def handle(request: bytes) -> bytes:
    """Answer one request (without its NUL): b"+", b"!" or b"x"."""
    if not MIN_LEN <= len(request) + 1 <= MAX_LEN:
        return b"x"
    prefix, digits = request[:5], request[5:]
    if not digits.isdigit():
        return b"x"
    msgid = int(digits)
    if prefix == b"foop/":
        last = queuedir.mess(msgid)
    elif prefix == b"todo/":
        last = queuedir.todo(msgid)
    else:
        return b"x"
    return b"+" if _remove(queuedir.intd(msgid), last) else b"!"


def _reply(fd: int, byte: bytes) -> bool:
    """Write one reply byte; False if it could not be written (qmail-send is gone)."""
    try:
        return os.write(fd, byte) == 1
    except OSError:
        return False


def serve(fd_in: int, fd_out: int) -> int:
    """Answer requests until EOF; return the exit code."""
    buf = b""
    countdown = 0
    while True:
        if countdown:
            countdown -= 1
        else:
            cleanup_pid(time.time())
            countdown = CLEANUP_EVERY
        while b"\0" not in buf:
            try:
                chunk = os.read(fd_in, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                return 0  # EOF (a partial request at EOF is dropped)
            buf += chunk
        request, buf = buf.split(b"\0", 1)
        if not _reply(fd_out, handle(request)):
            return 100


def main(argv: list[str] | None = None) -> int:
    """Serve qmail-send on fds 0 and 1."""
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        os.chdir(auto.home())
        os.chdir("queue")
    except OSError:
        return 111
    return serve(0, 1)
