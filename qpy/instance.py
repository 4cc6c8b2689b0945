"""Operations on a whole instance that the ``qpy`` command offers: users, status, logs.

Virtual users (single-user mode) are users/assign entries whose home is
``QMAILHOME/users/<name>``, each with a ``Maildir/``; the assign file is rebuilt
into users/cdb with qmail-newu's record format.
"""
from __future__ import annotations

import fcntl
import os
import pwd
import re
from dataclasses import dataclass

from qpy import cdb, queuedir, users
from qpy.errors import FormatError, TempFail

NAME = re.compile(rb"^[a-z0-9][a-z0-9._]{0,31}$")
LOG = "log/current"


def maildirmake(path: str) -> None:
    """Create a Maildir (tmp, new, cur) with mode 700; existing parts are kept."""
    old = os.umask(0o077)
    try:
        for sub in ("", "tmp", "new", "cur"):
            os.makedirs(os.path.join(path, sub), mode=0o700, exist_ok=True)
    finally:
        os.umask(old)


def _assign_lines(home: str) -> list[bytes]:
    """The entries of users/assign, without the final '.' line."""
    try:
        with open(os.path.join(home, "users", "assign"), "rb") as f:
            text = f.read()
    except FileNotFoundError:
        return []
    lines = []
    for line in text.split(b"\n"):
        if line.startswith(b"."):
            break
        if line:
            lines.append(line)
    return lines


def list_users(home: str) -> list[bytes]:
    """Names with an exact (=) entry in users/assign."""
    return [line[1:line.index(b":")] for line in _assign_lines(home)
            if line.startswith(b"=") and b":" in line]


def add_user(home: str, name: bytes, uid: int | None = None, gid: int | None = None) -> str:
    """Add a virtual user with a Maildir under the instance; rebuild users/cdb; return its home."""
    name = name.lower()
    if not NAME.match(name):
        shown = name.decode("utf-8", "replace")
        raise FormatError(f"bad user name {shown!r}: use a-z, 0-9, '.', '_' (at most 32)")
    uid = os.getuid() if uid is None else uid
    gid = os.getgid() if gid is None else gid
    try:
        account = pwd.getpwuid(uid).pw_name.encode()
    except KeyError:
        account = str(uid).encode()
    user_home = os.path.join(home, "users", name.decode())
    os.makedirs(user_home, mode=0o755, exist_ok=True)
    os.chmod(user_home, 0o755)
    maildirmake(os.path.join(user_home, "Maildir"))
    lines = [line for line in _assign_lines(home)
             if not line.startswith((b"=" + name + b":", b"+" + name + b"-:"))]
    home_b = user_home.encode()
    lines.append(b"=%s:%s:%d:%d:%s:::" % (name, account, uid, gid, home_b))
    lines.append(b"+%s-:%s:%d:%d:%s:-::" % (name, account, uid, gid, home_b))
    text = b"".join(line + b"\n" for line in lines) + b".\n"
    records = users.compile_assign(text)
    tmp = os.path.join(home, "users", "assign.tmp")
    with open(tmp, "wb") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, os.path.join(home, "users", "assign"))
    cdb.rebuild(os.path.join(home, "users", "cdb"), records)
    return user_home


ROLE_ACCOUNTS = (b"postmaster", b"mailer-daemon", b"root")


def alias_to(home: str, address: bytes) -> list[str]:
    """Make postmaster, mailer-daemon and root forward to ``address`` (~alias/.qmail-*).

    Existing .qmail files are kept; returns the role names that were set up.
    """
    return alias_roles(home, b"&" + address)


def alias_roles(home: str, line: bytes) -> list[str]:
    """Give postmaster, mailer-daemon and root the .qmail ``line`` (qmail's INSTALL.alias).

    Existing .qmail files are kept; returns the role names that were set up.
    """
    made = []
    for role in ROLE_ACCOUNTS:
        path = os.path.join(home, "alias", ".qmail-" + role.decode())
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        with os.fdopen(fd, "wb") as f:
            f.write(line + b"\n")
        made.append(role.decode())
    return made


@dataclass
class Status:
    """What ``qpy status`` reports."""

    running: bool
    queued: int
    unprocessed: int
    recent: list[str]
    quarantined: int = 0    # messages moved aside for corrupt queue files (queue/quarantine)


def send_running(home: str) -> bool:
    """True if some qmail-send holds queue/lock/sendmutex."""
    try:
        fd = os.open(os.path.join(home, "queue", "lock", "sendmutex"), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def send_pid(home: str, locks: str = "/proc/locks") -> int | None:
    """The pid of the qmail-send holding queue/lock/sendmutex, or None if none does.

    The holder of a flock is found in /proc/locks (``1: FLOCK ADVISORY WRITE <pid>
    <major>:<minor>:<inode> 0 EOF``, device numbers in hex) by the mutex's device and
    inode; a holder outside our pid namespace shows as pid 0, which is None here too.
    """
    try:
        st = os.stat(os.path.join(home, "queue", "lock", "sendmutex"))
        with open(locks, "rb") as f:
            table = f.read()
    except OSError:
        return None
    want = b"%02x:%02x:%d" % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    for line in table.splitlines():
        fields = line.split()        # a blocked waiter's line has "->" before FLOCK
        if len(fields) >= 6 and fields[1] == b"FLOCK" and fields[5] == want:
            pid = int(fields[4]) if fields[4].isdigit() else 0
            return pid or None
    return None


def status(home: str, lines: int = 10) -> Status:
    """Collect running state, queue counts and the last delivery log lines."""
    queue = os.path.join(home, "queue")
    try:
        mess = set(queuedir.scan_split(queue, "mess"))
        unprocessed = len(queuedir.scan_flat(queue, "todo"))
        try:
            quarantined = set(queuedir.scan_flat(queue, "quarantine"))
        except FileNotFoundError:       # an instance made before quarantine/
            quarantined = set()
    except OSError as e:
        raise TempFail(f"unable to read {queue}: {e.strerror}") from e
    recent: list[str] = []
    try:
        with open(os.path.join(home, LOG), "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            text = f.read().decode("utf-8", "replace")
        recent = [line for line in text.splitlines() if "delivery " in line][-lines:]
    except FileNotFoundError:
        pass
    return Status(send_running(home), len(mess - quarantined), unprocessed, recent,
                  len(quarantined))
