"""Maildir delivery (docs/control.md §5): tmp/ → write → fsync → close → link into new/.

``deliver(maildir, head, msg_fd)`` writes ``head`` (Return-Path and Delivered-To
lines) and the message from ``msg_fd``'s current offset to EOF into
``tmp/<time>.<pid>.<host>`` (exclusive create; on a name clash it sleeps 2 s
and tries again, 3 tries), fsyncs and closes it, links it to ``new/`` under the
same name, unlinks the tmp name and fsyncs ``new/``.  A second delivery by the
same process uses ``<time>.<pid>_<n>.<host>``.  No From_ line, no quoting.
Every failure is a TempFail and removes the tmp file.
"""
from __future__ import annotations

import os
import time

from qpy import fdio
from qpy.errors import TempFail, temporary_errno

TRIES = 3
RETRY_SLEEP = 2
CHUNK = 65536

_deliveries = 0


class NoMaildir(TempFail):
    """Unable to chdir to maildir. (#4.2.1)"""


class MaildirError(TempFail):
    """Temporary error on maildir delivery. (#4.3.0)"""


class ReadError(TempFail):
    """Unable to read message. (#4.3.0)"""


def hostname() -> bytes:
    """This host's name, at most 64 bytes, with ``/`` and ``:`` escaped as maildir readers expect."""
    name = os.fsencode(os.uname().nodename)[:64]
    return name.replace(b"/", b"\\057").replace(b":", b"\\072")


def unique_name(now: int | None = None) -> bytes:
    """``<time>.<pid>.<host>``; later deliveries of this process add ``_<n>`` to the pid."""
    global _deliveries
    _deliveries += 1
    pid = b"%d" % os.getpid()
    if _deliveries > 1:
        pid += b"_%d" % _deliveries
    return b"%d.%s.%s" % (int(time.time()) if now is None else now, pid, hostname())


def _copy(msg_fd: int, out_fd: int) -> None:
    """Copy msg_fd to EOF into out_fd; ReadError if reading fails."""
    while True:
        try:
            chunk = os.read(msg_fd, CHUNK)
        except OSError as e:
            raise ReadError() from e
        if not chunk:
            return
        fdio.write_all(out_fd, chunk)


def _unlink(name: bytes, dfd: int) -> None:
    try:
        os.unlink(name, dir_fd=dfd)
    except OSError:
        pass


def deliver(maildir: bytes, head: bytes, msg_fd: int) -> bytes:
    """Deliver into the maildir at ``maildir`` (relative to the cwd); return the new/ name."""
    try:
        dfd = fdio.open_dir(maildir)
    except OSError as e:
        raise (MaildirError() if temporary_errno(e.errno) else NoMaildir()) from e
    try:
        start = os.lseek(msg_fd, 0, os.SEEK_CUR)
        for attempt in range(TRIES):
            name = unique_name()
            tmp, new = b"tmp/" + name, b"new/" + name
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dfd)
            except FileExistsError:
                if attempt == TRIES - 1:
                    raise MaildirError() from None
                time.sleep(RETRY_SLEEP)
                continue
            except OSError as e:
                raise MaildirError() from e
            try:
                try:
                    os.lseek(msg_fd, start, os.SEEK_SET)
                    fdio.write_all(fd, head)
                    _copy(msg_fd, fd)
                    os.fsync(fd)
                finally:
                    os.close(fd)   # NFS reports write errors at close
                os.link(tmp, new, src_dir_fd=dfd, dst_dir_fd=dfd)
            except FileExistsError:
                _unlink(tmp, dfd)
                if attempt == TRIES - 1:
                    raise MaildirError() from None
                time.sleep(RETRY_SLEEP)
                continue
            except TempFail:
                _unlink(tmp, dfd)
                raise
            except OSError as e:
                _unlink(tmp, dfd)
                raise MaildirError() from e
            except BaseException:
                _unlink(tmp, dfd)
                raise
            _unlink(tmp, dfd)
            try:
                fdio.fsync_dir(b"new", dir_fd=dfd)
            except OSError as e:
                raise MaildirError() from e
            return name
        raise MaildirError()
    finally:
        os.close(dfd)
