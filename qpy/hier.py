"""The instance layout as data (qmail's hier.c): directories, files, owners, modes.

Used by ``qpy init`` to build an instance, by tests to check one, and by the
layout test to keep bin/, console_scripts and qpy/programs/ in step.
"""
from __future__ import annotations

import keyword
import os
import stat
import sys
from dataclasses import dataclass

from qpy import auto, controlfiles, prot, srs

# Owner "root" is the invoking user in single-user mode, as every other account is.
ROOT = auto.ROOT


@dataclass(frozen=True)
class Entry:
    """One directory or file of an instance."""

    path: str
    kind: str       # "d" directory, "z" zero-filled file of `size` bytes, "p" FIFO,
                    # "f" a file the administrator provides (only its owner and mode are set)
    owner: str
    group: str      # "qmail", or "" for the owner's own primary group
    mode: int
    size: int = 0


def _split(path: str, owner: str, mode: int) -> list[Entry]:
    entries = [Entry(path, "d", owner, auto.GROUP_QMAIL, mode)]
    entries += [Entry(f"{path}/{n}", "d", owner, auto.GROUP_QMAIL, mode) for n in range(auto.SPLIT)]
    return entries


Q = auto.GROUP_QMAIL
DIRS: list[Entry] = [
    Entry("", "d", ROOT, Q, 0o755),
    Entry("control", "d", ROOT, Q, 0o755),
    Entry("users", "d", ROOT, Q, 0o755),
    Entry("bin", "d", ROOT, Q, 0o755),
    Entry("alias", "d", auto.ALIAS, Q, 0o2755),
    Entry("queue", "d", auto.QMAILQ, Q, 0o750),
    Entry("queue/pid", "d", auto.QMAILQ, Q, 0o700),
    Entry("queue/intd", "d", auto.QMAILQ, Q, 0o700),
    Entry("queue/todo", "d", auto.QMAILQ, Q, 0o750),
    Entry("queue/bounce", "d", auto.QMAILS, Q, 0o700),
    *_split("queue/mess", auto.QMAILQ, 0o750),
    *_split("queue/info", auto.QMAILS, 0o700),
    *_split("queue/local", auto.QMAILS, 0o700),
    *_split("queue/remote", auto.QMAILS, 0o700),
    Entry("queue/lock", "d", auto.QMAILQ, Q, 0o750),
    # qpy: finished queue inodes kept for reuse (qpy.spare): qmailq's and qmail-send's.
    Entry("queue/spareq", "d", auto.QMAILQ, Q, 0o700),
    Entry("queue/spares", "d", auto.QMAILS, Q, 0o700),
    # qpy: messages whose queue files are corrupt, moved aside by qmail-send (send_cleanup).
    Entry("queue/quarantine", "d", auto.QMAILS, Q, 0o750),
    Entry("queue/lock/tcpto", "z", auto.QMAILR, Q, 0o644, 1024),
    Entry("queue/lock/tcpto6", "z", auto.QMAILR, Q, 0o644, 2048),   # qpy: IPv6 records (qpy.tcpto)
    Entry("queue/lock/sendmutex", "z", auto.QMAILS, Q, 0o600, 0),
    Entry("queue/lock/trigger", "p", auto.QMAILS, Q, 0o622),
    # qpy: user submission without setuid (qpy.maildrop, SECURITY.md): the qmail-queued
    # socket lives in public/; maildrop/ takes files while the service is down.
    Entry("public", "d", auto.QMAILQ, Q, 0o711),
    Entry("public/qmail-pickup", "p", auto.QMAILQ, Q, 0o622),
    Entry("maildrop", "d", auto.QMAILQ, Q, 0o3733),
]

# Files the administrator provides; install (qpy init, qpy install) sets their owner and mode
# when they exist.  qmail-smtpd reads the STARTTLS certificate and key as qmaild (tcpserver
# -u/-g drops to qmaild before it runs, in qpy run and in the supervised service alike), so
# qmaild owns them and nobody else may read them.  The SRS secrets (qpy.srs, made by
# install when missing) are read by qmail-smtpd/qmail-qmtpd as qmaild to check RCPT and by
# the queue writer (qmailq, group qmail) to sign and reverse: qmaild's, group qmail, 0440.
# A symbolic link is left alone.  In single-user mode the group and other bits are dropped
# (the user is every account).
PROVIDED: list[Entry] = [
    Entry("control/servercert.pem", "f", auto.QMAILD, "", 0o400),
    Entry("control/srs_secrets", "f", auto.QMAILD, Q, 0o440),
]

# Every program: bin/<name> ↔ qpy/programs/<module>.py ↔ one console_scripts line.
# The second field is the account it runs as (documentation and install ownership).
PROGRAMS: dict[str, str] = {
    "qpy": "admin",
    "qmail-queue": auto.QMAILQ,
    "qmail-newu": ROOT,
    "qmail-newmrh": ROOT,
    "qmail-qstat": ROOT,
    "qmail-remote": auto.QMAILR,
    "qmail-tcpto": ROOT,
    "qmail-tcpok": ROOT,
    "qmail-inject": "user",
    "qmail-send": auto.QMAILS,
    "qmail-clean": auto.QMAILQ,
    "qmail-start": ROOT,
    "sendmail": "user",
    "qmail-smtpd": auto.QMAILD,
    "predate": "user",
    "datemail": "user",
    "mailsubj": "user",
    "qmail-lspawn": ROOT,
    "qmail-rspawn": auto.QMAILR,
    "qmail-local": "recipient",
    "qmail-getpw": auto.QMAILP,
    "forward": "recipient",
    "condredirect": "recipient",
    "bouncesaying": "recipient",
    "except": "recipient",
    "preline": "recipient",
    "tcpserver": ROOT,
    "tcprules": "admin",
    "tcprulescheck": "admin",
    "rblsmtpd": auto.QMAILD,
    "qmail-qmtpd": auto.QMAILD,
    "qmail-qmqpd": auto.QMAILD,
    "qmail-qmqpc": "user",
    "qmail-qread": ROOT,
    "qmail-showctl": "user",
    "qmail-pw2u": ROOT,
    "maildirmake": "user",
    "maildir2mbox": "user",
    "splogger": auto.QMAILL,
    "qmail-queued": auto.QMAILQ,
    "qmail-pickup": auto.QMAILQ,
    "newaliases": ROOT,
    "fastforward": "recipient",
    "dot-forward": "recipient",
}

CONTROL_FROM_ME = ("me", "locals", "rcpthosts", "srs_domain")
# written only when the instance is new (no control/me yet): SRS is on by default for a new
# instance, never switched on by repairing an old one (its secret is made either way)
NEW_ONLY = ("srs_domain",)
# int files a new instance states explicitly: their declared initial value, else the default
CONTROL_FROM_DEFAULT = ("concurrencylocal", "concurrencyremote", "queuelifetime", "databytes",
                        "timeoutsmtpd", "timeoutremote", "timeoutconnect", "rcptcheck", "maxrcpt")


def module_name(program: str) -> str:
    """qmail-foo → qmail_foo; a Python keyword gets a trailing _ (except → except_), as in warm."""
    name = program.replace("-", "_")
    return name + "_" if keyword.iskeyword(name) else name


def initial(name: str) -> int:
    """What a new instance's control/<name> says: the declared initial value, else the default."""
    f = controlfiles.entry(name)
    value = f.initial if f.initial is not None else f.default
    assert isinstance(value, int), name
    return value


def control_defaults(me: bytes) -> dict[str, bytes]:
    """The control files of a new instance: me-derived ones plus the int files."""
    files = {name: me + b"\n" for name in CONTROL_FROM_ME}
    files.update({name: b"%d\n" % initial(name) for name in CONTROL_FROM_DEFAULT})
    return files


def shim(program: str, python: str | None = None) -> str:
    """The text of bin/<program> in an instance."""
    return (f"#!{python or sys.executable} -I\n"
            f"import sys\nfrom qpy.programs.{module_name(program)} import main\n"
            f"sys.exit(main(sys.argv[1:]))\n")


class Owners:
    """Resolves account names to uid/gid for one mode."""

    def __init__(self, priv: bool) -> None:
        self.priv = priv

    def ids(self, owner: str, group: str) -> tuple[int, int]:
        """Return (uid, gid) for an entry's owner and group."""
        if not self.priv:
            return os.getuid(), os.getgid()
        acct = prot.lookup_user(owner)
        if acct is None:
            raise prot.TempFail(f"account {owner} does not exist")
        gid = prot.lookup_group(group) if group else acct.gid
        return acct.uid, gid if gid is not None else acct.gid


def _make(full: str, entry: Entry) -> None:
    """Create one entry if it is missing."""
    if entry.kind == "d":
        os.makedirs(full, exist_ok=True)
    elif entry.kind == "p":
        if not os.path.exists(full):
            os.mkfifo(full)
    elif not os.path.exists(full):
        fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"\0" * entry.size)
            os.fsync(fd)
        finally:
            os.close(fd)


def install(home: str, me: bytes, priv: bool) -> None:
    """Create or repair an instance at ``home``.  Existing control files are kept."""
    owners = Owners(priv)
    new = not os.path.exists(os.path.join(home, "control", "me"))
    for entry in DIRS:
        full = os.path.join(home, entry.path) if entry.path else home
        _make(full, entry)
        uid, gid = owners.ids(entry.owner, entry.group)
        if priv:
            os.chown(full, uid, gid)
        os.chmod(full, entry.mode)
    uid, gid = owners.ids(ROOT, auto.GROUP_QMAIL)
    for name, data in control_defaults(me).items():
        if new or name not in NEW_ONLY:
            _write_new(os.path.join(home, "control", name), data, uid, gid, 0o644, priv)
    secret = os.path.join(home, "control", "srs_secrets")
    if not os.path.lexists(secret):     # created 0400; PROVIDED below makes it qmaild's
        _write_file(secret, srs.new_secret(), uid, gid, 0o400, priv)
    for program in PROGRAMS:
        _write_file(os.path.join(home, "bin", program), shim(program).encode(), uid, gid, 0o755, priv)
    for entry in PROVIDED:
        full = os.path.join(home, entry.path)
        if os.path.isfile(full) and not os.path.islink(full):
            uid, gid = owners.ids(entry.owner, entry.group)
            if priv:
                os.chown(full, uid, gid)
            os.chmod(full, provided_mode(entry, priv))


def provided_mode(entry: Entry, priv: bool) -> int:
    """A provided file's mode: as declared, without group and other bits in single-user mode."""
    return entry.mode if priv else entry.mode & 0o700


def _write_new(full: str, data: bytes, uid: int, gid: int, mode: int, priv: bool) -> None:
    """Write a file only if it does not exist yet."""
    if not os.path.exists(full):
        _write_file(full, data, uid, gid, mode, priv)


def _write_file(full: str, data: bytes, uid: int, gid: int, mode: int, priv: bool) -> None:
    """Write a file atomically with the given owner and mode."""
    tmp = full + ".tmp"
    if os.path.lexists(tmp):            # a crashed install's: its mode is not ours
        os.unlink(tmp)
    # 0600 until the chmod below: a secret is never readable by others, not even briefly
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if priv:
        os.chown(tmp, uid, gid)
    os.chmod(tmp, mode)
    os.rename(tmp, full)


def check(home: str, priv: bool) -> list[str]:
    """Return a line for every entry whose type, owner or mode is wrong."""
    owners = Owners(priv)
    problems = []
    for entry in DIRS + PROVIDED:
        full = os.path.join(home, entry.path) if entry.path else home
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            if entry.kind != "f":
                problems.append(f"{entry.path or '.'}: missing")
            continue
        if entry.kind == "f" and stat.S_ISLNK(st.st_mode):
            continue
        want_type = {"d": stat.S_ISDIR, "p": stat.S_ISFIFO, "z": stat.S_ISREG,
                     "f": stat.S_ISREG}[entry.kind]
        if not want_type(st.st_mode):
            problems.append(f"{entry.path}: wrong type")
        mode = provided_mode(entry, priv) if entry.kind == "f" else entry.mode
        if stat.S_IMODE(st.st_mode) != mode:
            problems.append(f"{entry.path}: mode {stat.S_IMODE(st.st_mode):o} != {mode:o}")
        uid, gid = owners.ids(entry.owner, entry.group)
        if (st.st_uid, st.st_gid) != (uid, gid):
            problems.append(f"{entry.path}: owner {st.st_uid}:{st.st_gid} != {uid}:{gid}")
    return problems
