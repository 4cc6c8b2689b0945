"""qmail-send CLEANUPS (docs/queue.md §6): remove mess/ files that belong to no message.

A qmail-queue that crashed (or was killed) before linking todo/ leaves S2 or S3, and
so does a crash between a completion's S5 → S2 and qmail-clean's ``foop/<id>``.
Every SLEEP_CLEANUP seconds mess/ is swept, CLEANUP_BATCH entries per loop turn, and
a mess file older than OSSIFIED (36 h, beyond the writer's 24 h limit) with neither
info/<id> nor todo/<id> goes to qmail-clean as ``foop/<id>``.

The first sweep after start-up also removes younger S2/S3 leftovers, but only those
no writer holds: qpy's queue writer keeps an exclusive flock on the mess file from
before its mess/ link exists until todo/<id> is linked (or it gives up).  So if
this process gets the lock (non-blocking) and then still finds neither todo/<id> nor
info/<id>, the message is garbage and stays so: no writer is inserting it (its
sender got no 0 exit, or it was already delivered and completed), nothing but a
writer links todo/, and only todo/<id> leads to info/<id>; the inode, hence the id,
cannot be reused while mess/<id> exists.  Ids with a ``foop`` request already
outstanding (a completion of this process) are left to it.

QUARANTINE.  A message whose queue file is not in its format (todo/<id> ending inside
a record or holding an unknown record, info/<id> without its F record) would be retried
forever.  ``quarantine`` moves it aside instead, never deleting it: first
quarantine/<id> (the reason, fsync'd), then info/, local/, remote/, bounce/<id> renamed
to quarantine/<id>.info … and a copy of todo/<id> as quarantine/<id>.todo (fsync'd)
before qmail-clean removes intd/ and todo/; the mess file stays where it is, and the
sweeps leave alone every id that has quarantine/<id>.  A crash half-way leaves the
marker, so the mess file is kept, and todo/<id> if it was not yet removed, so the next
start quarantines it again.  The queue tools count quarantine/ (``qpy status``).
"""
from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator

from qpy import auto, fdio, queuedir
from qpy.schedule import OSSIFIED, SLEEP_CLEANUP
from qpy.send_comm import Comm
from qpy.send_core import Core, Wait

CLEANUP_BATCH = 256     # mess/ entries looked at per loop turn


def mess_ids() -> Iterator[int]:
    """Every id in mess/*/, one split directory at a time."""
    for n in range(auto.SPLIT):
        try:
            names = os.listdir(f"mess/{n}")
        except OSError:
            continue
        for name in names:
            msgid = queuedir.parse_id(name)
            if msgid is not None:
                yield msgid


class Cleanup:
    """The section: a bounded slice of the mess/ sweep per turn."""

    def __init__(self, core: Core, comm: Comm, quarantined: set[int] | None = None) -> None:
        self.core = core
        self.comm = comm
        self.messages_quarantined = quarantined if quarantined is not None else set()
        core.quarantine = self.quarantine
        self.iter: Iterator[int] | None = None
        self.nextrun = core.recent
        self.first = True       # the first sweep since start-up: crash leftovers go too

    def orphan(self, msgid: int) -> bool:
        """True if neither info/<id> nor todo/<id> exists (S2 or S3) and it is not quarantined."""
        return not any(queuedir.exists(path) for path in (
            queuedir.info(msgid), queuedir.todo(msgid), queuedir.quarantine(msgid)))

    def quarantine(self, msgid: int, reason: str) -> None:
        """Move a message with a corrupt queue file aside (see QUARANTINE above)."""
        lg = self.core.log
        mark = queuedir.quarantine(msgid)
        try:
            fd = os.open(mark, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            try:
                fdio.write_all(fd, reason.encode() + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            for kind in ("info", "local", "remote", "bounce"):
                path = getattr(queuedir, kind)(msgid)
                if queuedir.exists(path):
                    os.rename(path, f"{mark}.{kind}")
            todo = queuedir.todo(msgid)
            if queuedir.exists(todo):
                data, _ = fdio.read_file(todo)
                fd = os.open(f"{mark}.todo", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
                try:
                    fdio.write_all(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            fdio.fsync_dir(os.path.dirname(mark))
        except OSError as e:
            lg.warning(f"unable to quarantine message {msgid} ({reason}): {e.strerror}")
            return
        self.messages_quarantined.add(msgid)
        lg.warning(f"quarantined message {msgid}: {reason}")
        if queuedir.exists(todo):
            self.clean_wait(f"todo/{msgid}")

    def ossified(self, msgid: int) -> bool:
        """True if mess/<id> is older than OSSIFIED and belongs to no message."""
        try:
            if self.core.recent <= os.stat(queuedir.mess(msgid)).st_atime + OSSIFIED:
                return False
            return self.orphan(msgid)
        except OSError:
            return False

    def clean_locked(self, msgid: int) -> None:
        """First sweep: foop/<id> for an S2/S3 leftover no writer holds (see above)."""
        name = f"foop/{msgid}"
        if any(n == name for n, _ in self.comm.cleaner.waiting):
            return
        try:
            if not self.orphan(msgid):
                return
            fd = os.open(queuedir.mess(msgid), os.O_RDONLY)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if self.orphan(msgid):
                self.clean_wait(name)
        except OSError:
            pass    # a writer holds it, or a look failed: leave it
        finally:
            os.close(fd)

    def clean_wait(self, name: str) -> None:
        """Ask qmail-clean to remove a leftover (or a todo/ entry) and wait for it."""
        replies = self.comm.clean([name])
        if replies is not None and replies != b"+":
            self.core.log.warning(f"qmail-clean unable to clean up {name}")

    def prep(self, wait: Wait) -> None:
        """Wake at once to go on with a sweep, else when the next one is due."""
        if self.iter is not None:
            wait.at(0)
        wait.at(self.nextrun)

    def do(self) -> None:
        """Look at the next CLEANUP_BATCH mess/ entries."""
        if self.core.exitasap or not self.comm.cleaner.alive:
            return
        if self.iter is None:
            if self.core.recent < self.nextrun:
                return
            self.iter = mess_ids()
        for _ in range(CLEANUP_BATCH):
            msgid = next(self.iter, None)
            if msgid is None:
                self.iter = None
                self.first = False
                self.nextrun = self.core.recent + SLEEP_CLEANUP
                return
            if self.ossified(msgid):
                self.clean_wait(f"foop/{msgid}")
            elif self.first:
                self.clean_locked(msgid)
            if not self.comm.cleaner.alive:
                return
