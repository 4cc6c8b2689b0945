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
"""
from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator

from qpy import auto, queuedir
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

    def __init__(self, core: Core, comm: Comm) -> None:
        self.core = core
        self.comm = comm
        self.iter: Iterator[int] | None = None
        self.nextrun = core.recent
        self.first = True       # the first sweep since start-up: crash leftovers go too

    def orphan(self, msgid: int) -> bool:
        """True if neither info/<id> nor todo/<id> exists (S2 or S3)."""
        return not (queuedir.exists(queuedir.info(msgid)) or queuedir.exists(queuedir.todo(msgid)))

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
                self.foop(name)
        except OSError:
            pass    # a writer holds it, or a look failed: leave it
        finally:
            os.close(fd)

    def foop(self, name: str) -> None:
        """Ask qmail-clean to remove a leftover and wait for it."""
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
                self.foop(f"foop/{msgid}")
            elif self.first:
                self.clean_locked(msgid)
            if not self.comm.cleaner.alive:
                return
