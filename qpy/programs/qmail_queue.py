"""qmail-queue - put one message into the queue.

SYNOPSIS  qmail-queue
RUNS AS   whoever calls it.  It writes the queue itself when it may: as the queue's
          owner (qmailq; the invoking user in single-user mode), or as root, which
          first becomes the queue's owner as qmail's setuid bit would.  Anyone else
          (privileged mode: qmaild, qmails, alias, local users) is a thin client:
          it passes fds 0 and 1 to qmail-queued on the socket public/qmail-queued
          and exits with the code the service sends back; if the service is not
          running or is busy, it writes the submission into maildrop/ for
          qmail-pickup instead (qpy.maildrop; SECURITY.md).  umask 033.
READS     the message on fd 0 (raw bytes, copied verbatim), then the envelope on fd 1:
          ``F<sender>\\0T<rcpt>\\0…\\0`` (docs/protocols.md §1).
WRITES    nothing on any fd.  mess/<id%23>/<id> = its own Received line + the message;
          intd/<id> and todo/<id> = ``u<uid>\\0p<pid>\\0F…\\0T…\\0``.  As a client
          that falls back: one file maildrop/d<32 hex>, owned by the caller.
TRUSTS    nothing on fd 0 or fd 1: the message is never parsed, the envelope is checked.
          A client checks that the socket's peer is the queue's owner and that
          maildrop/ is the queue owner's sticky directory before handing anything over.
ORDER     pid file → link mess → write+fsync → intd → fsync → link todo (queued) → trigger.
          A crash before the todo link leaves nothing qmail-send treats as a message.
          Drop: temporary file → write → fsync → rename to the final name → fsync the
          file and its directory → exit 0, so 0 always means the message is on disk.
EXIT      0 queued; 11 address too long; 51 out of memory; 52 timeout (24 h, or
          $QPY_QUEUE_ALARM seconds); 53 write error or disk full; 54 read error or
          envelope cut short; 61 home; 62 queue (or maildrop/ unusable); 63 pid; 64 mess;
          65 intd; 66 todo; 81 internal bug (also: the service went away mid-message);
          91 envelope format error.  Through the service: the writer's code, unchanged.
"""
from __future__ import annotations

import os
import signal
import stat

from qpy import auto, maildrop, submit, trigger
from qpy.errors import QueueFail
from qpy.exitcodes import QQ
from qpy.queuewrite import (_fsync, _fsync_dir, _read, _write_all, alarm_seconds, become_owner,
                            privileged_instance, queue, read_envelope, setup_signals,
                            who_invoked)


# The thin client (privileged mode, caller is not the queue's owner).
CONNECT_TIMEOUT = 10.0
CLIENT_MARGIN = 300     # the client outwaits the service's own suicide timer


def via_service(owner: int) -> int | None:
    """Hand fds 0 and 1 to qmail-queued; its exit code, or None if it took nothing."""
    import socket
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(maildrop.SOCKET)
            if maildrop.peer(sock)[1] != owner:
                return None     # not the queue's owner at the other end: hand it nothing
            sock.settimeout(None)
            # the one byte that carries fds 0 and 1: the submission's flags
            socket.send_fds(sock, [bytes([submit.from_env()])], [0, 1])
        except OSError:
            return None         # no service (or it died before taking the fds)
        signal.alarm(alarm_seconds() + CLIENT_MARGIN)
        try:
            reply = sock.recv(1)
        except OSError:
            reply = b""
    finally:
        sock.close()
    if not reply:
        return QQ.BUG           # the service took the message and went away
    return None if reply[0] == maildrop.BUSY else reply[0]


def _syncfs(fd: int) -> None:
    """Flush the file system holding ``fd`` (syncfs(2); sync(2) where that is missing)."""
    try:
        import ctypes
        rc = ctypes.CDLL(None, use_errno=True).syncfs(fd)
    except (ImportError, OSError, AttributeError):
        os.sync()
        return
    if rc != 0:
        raise QueueFail(QQ.WRITE_ERROR)


def _sync_dir(path: str, fd: int) -> None:
    """Make a rename in ``path`` durable; its writers may not open it (maildrop/ is 03733)."""
    try:
        _fsync_dir(path, QQ.QUEUE_DIR)
    except QueueFail as e:
        if e.exit_code != QQ.QUEUE_DIR:
            raise
        _syncfs(fd)


def drop(owner: int) -> int:
    """Write message and envelope into maildrop/ for qmail-pickup; 0 only once it is on disk."""
    try:
        dirst = os.stat(maildrop.DIR)
    except OSError:
        return QQ.QUEUE_DIR
    if dirst.st_uid != owner or not dirst.st_mode & stat.S_ISVTX:
        return QQ.QUEUE_DIR     # not the queue owner's sticky directory: hand it nothing
    name = os.path.join(maildrop.DIR, maildrop.temp_name())
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
    except OSError:
        return QQ.QUEUE_DIR
    try:
        os.fchmod(fd, 0o640)
        if os.fstat(fd).st_gid != dirst.st_gid:
            raise QueueFail(QQ.QUEUE_DIR)    # qmail-pickup could not read it
        _write_all(fd, maildrop.header(0, submit.from_env()))
        msglen = 0
        while chunk := _read(0):
            _write_all(fd, chunk)
            msglen += len(chunk)
        _write_all(fd, read_envelope(1) + b"\0")
        try:
            os.pwrite(fd, maildrop.header(msglen, submit.from_env()), 0)
        except OSError:
            raise QueueFail(QQ.WRITE_ERROR)
        _fsync(fd)
        final = os.path.join(maildrop.DIR, maildrop.final_name())
        try:
            os.rename(name, final)
        except OSError:
            raise QueueFail(QQ.QUEUE_DIR)
        name = final
        _fsync(fd)              # on a journalling file system this also commits the rename
        _sync_dir(maildrop.DIR, fd)
    except BaseException:
        try:
            os.unlink(name)
        except OSError:
            pass
        raise
    finally:
        os.close(fd)
    trigger.pull(".", maildrop.TRIGGER)
    return QQ.OK


def hand_over(owner: int) -> int:
    """We may not write the queue: through qmail-queued, else into maildrop/."""
    for fd in (0, 1):
        try:
            os.fstat(fd)
        except OSError:
            return QQ.READ_ERROR
    code = via_service(owner)
    return drop(owner) if code is None else code


def main(argv: list[str] | None = None) -> int:
    """Queue the message on fd 0 with the envelope on fd 1."""
    os.umask(0o033)
    setup_signals()
    try:
        signal.alarm(alarm_seconds())
        try:
            os.chdir(auto.home())
        except OSError:
            return QQ.HOME
        try:
            owner = os.stat("queue")
        except OSError:
            return QQ.QUEUE_DIR
        uid = os.getuid()
        if os.geteuid() not in (owner.st_uid, 0):
            return hand_over(owner.st_uid)
        priv = privileged_instance()
        try:
            become_owner(owner)
        except Exception:
            return QQ.QUEUE_DIR
        try:
            os.chdir("queue")
        except OSError:
            return QQ.QUEUE_DIR
        return queue(0, 1, uid, who_invoked(uid, priv))
    except QueueFail as e:
        return e.exit_code
    except MemoryError:
        return QQ.NOMEM
    except Exception:
        return QQ.BUG
    finally:
        signal.alarm(0)
