"""qmail-send BOUNCES and completion (docs/queue.md §5, §8).

A ``D`` report appends its recipient's block to bounce/<id>.  Once every recipient
of a message is finished (both channel files gone), completion injects the bounce
(one per message; a failed bounce goes to postmaster, a failed double bounce is
dropped), logs ``end msg``, gives info/<id> back (S5 → S2) and asks qmail-clean to
remove the rest (S2 → S1).  A message with a ``send_info.Message`` record was
preprocessed here, and its files are then known without looking at them.
"""
from __future__ import annotations

import os
import time

from qpy import bounce, fdio, log, queuedir
from qpy.schedule import SLEEP_SYSFAIL
from qpy.send_comm import Comm
from qpy.send_core import Core, Wait
from qpy.send_info import Corrupt, Message, Messages
from qpy.send_queues import Queues

DONE_BATCH = 64         # completions per loop turn


class Completion:
    """The section: bounce appends, and finishing messages whose recipients are done."""

    def __init__(self, core: Core, comm: Comm, queues: Queues, messages: Messages) -> None:
        self.core = core
        self.comm = comm
        self.queues = queues
        self.messages = messages

    def addbounce(self, msgid: int, recip: bytes, report: bytes) -> None:
        """Append the failure to bounce/<id>; retried every SLEEP_PAUSE seconds until it works."""
        data = bounce.block(bounce.strip_vdom_prepend(recip, self.core.rewriter.virtualdomains),
                            report)
        while True:
            try:
                bounce.append(queuedir.bounce(msgid), data)
                break
            except OSError:
                self.core.pause("unable to append to bounce message; HELP! sleeping...")
        m = self.messages.get(msgid)
        if m is not None:
            m.bounced = True

    def injectbounce(self, msgid: int, m: Message | None) -> bool:
        """Send the bounce for a finished message if there is one; False to retry later."""
        if m is not None and not m.bounced:
            return True
        path = queuedir.bounce(msgid)
        try:
            if not queuedir.exists(path):
                return True
        except OSError:
            self.core.log.warning(f"unable to stat {path}")
            return False
        try:
            info = self.messages.info(msgid)
        except Corrupt as e:
            self.core.quarantine(msgid, e.text)
            return False
        if info is None:
            self.core.log.warning(f"trouble reading {queuedir.info(msgid)}; will try again later")
            return False
        if bounce.original_sender(info[0]) == bounce.DOUBLE_BOUNCE_SENDER:
            self.core.log.line(log.triple_bounce(msgid))
        else:
            # The queue child must not write our signal wakeups into an fd it reuses.
            try:
                with fdio.Suspended():
                    qp = bounce.inject(path, queuedir.mess(msgid), info[0],
                                       self.core.controls.bounce, arrival=info[1])
            except bounce.StartError:
                self.core.log.warning("unable to start qmail-queue, will try later")
                return False
            except bounce.InjectError:
                self.core.log.warning("trouble injecting bounce message, will try later")
                return False
            self.core.log.line(log.bounce_msg(msgid, qp or 0))
        try:
            os.unlink(path)
        except OSError:
            self.core.log.warning(f"unable to unlink {path}")
            return False
        if m is not None:
            m.bounced = False
        return True

    def busy(self, msgid: int) -> bool | None:
        """For a message without a record: True if a channel file or todo/<id> still exists,
        or info/<id> does not; None if a stat failed (it is retried later)."""
        path = ""
        try:
            for path in (queuedir.local(msgid), queuedir.remote(msgid), queuedir.todo(msgid)):
                if queuedir.exists(path):
                    return True  # still busy, or to be preprocessed again
            path = queuedir.info(msgid)
            return not queuedir.exists(path)
        except OSError:
            self.core.log.warning(f"unable to stat {path}; will try again later")
            return None

    def messdone(self, msgid: int) -> None:
        """Every recipient is finished: bounce, ``end msg``, give info back, clean foop/<id>."""
        m = self.messages.get(msgid)
        if m is None:
            busy = self.busy(msgid)
            if busy is None:
                self.queues.done.add(msgid, int(time.time()) + SLEEP_SYSFAIL)
            if busy is not False:
                return
        if not self.injectbounce(msgid, m):
            self.queues.done.add(msgid, int(time.time()) + SLEEP_SYSFAIL)
            return
        self.core.log.line(log.end_msg(msgid))
        info = queuedir.info(msgid)
        try:
            self.core.spares.give(info)
        except OSError:
            self.core.log.warning(f"unable to unlink {info}; will try again later")
            self.queues.done.add(msgid, int(time.time()) + SLEEP_SYSFAIL)
            return
        self.messages.forget(msgid)
        # S5 -> S2 -> S1: info is gone; qmail-clean removes intd and mess.  Not waited
        # for: the answer only decides a warning, and until qmail-clean has unlinked
        # mess/N no new message can get the id N (the inode is still in use).
        self.comm.clean_async([f"foop/{msgid}"], self.cleaned)

    def cleaned(self, name: str, reply: int) -> None:
        """qmail-clean's answer to a ``foop/N`` request."""
        if reply != ord("+"):
            self.core.log.warning(f"qmail-clean unable to clean up {name}")

    def prep(self, wait: Wait) -> None:
        """Wake up when the next completion is due."""
        wait.at(self.queues.done.next_due())

    def do(self) -> None:
        """Due completions.  They run even after TERM: they start no delivery, and a message
        whose last delivery just ended is then not left queued until the next start."""
        for _ in range(DONE_BATCH):
            msgid = self.queues.done.pop_due(self.core.recent) if self.comm.cleaner.alive else None
            if msgid is None:
                break
            self.messdone(msgid)
