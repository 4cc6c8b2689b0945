"""qmail-send CLEANUPS (docs/queue.md §6): remove mess/ files that belong to no message.

A qmail-queue that crashed (or was killed) before linking todo/ leaves S2 or S3.
Every SLEEP_CLEANUP seconds mess/ is swept, CLEANUP_BATCH entries per loop turn, and
a mess file older than OSSIFIED (36 h, beyond the writer's 24 h limit) with neither
info/<id> nor todo/<id> goes to qmail-clean as ``foop/<id>``.
"""
from __future__ import annotations

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

    def ossified(self, msgid: int) -> bool:
        """True if mess/<id> is older than OSSIFIED and belongs to no message."""
        try:
            if self.core.recent <= os.stat(queuedir.mess(msgid)).st_atime + OSSIFIED:
                return False
            return not (queuedir.exists(queuedir.info(msgid))
                        or queuedir.exists(queuedir.todo(msgid)))
        except OSError:
            return False

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
                self.nextrun = self.core.recent + SLEEP_CLEANUP
                return
            if not self.ossified(msgid):
                continue
            name = f"foop/{msgid}"
            replies = self.comm.clean([name])
            if replies is None:
                return
            if replies != b"+":
                self.core.log.warning(f"qmail-clean unable to clean up {name}")
