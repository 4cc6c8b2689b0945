"""qmail-send PRIORITY QUEUES: when each channel of each message is next due.

``chan[c]`` holds messages with a channel-c file to pass over, ``done`` messages
whose recipients are all finished (completion), ``fail`` messages whose files could
not be looked at (retried after SLEEP_SYSFAIL).  At start-up ``start`` scans info/
(docs/queue.md §6): a preprocessed message's channels are due at their files' mtimes,
which ``finish`` sets to each channel's next retry time at exit.
"""
from __future__ import annotations

import os
import time

from qpy import auto, queuedir
from qpy.schedule import CHANNELS, SLEEP_SYSFAIL, TimedQueue
from qpy.send_core import Core, Wait


class Queues:
    """The section: three kinds of timed queue and the start-up scan."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.chan = [TimedQueue(), TimedQueue()]
        self.done = TimedQueue()
        self.fail = TimedQueue()

    def add(self, msgid: int) -> None:
        """Schedule a preprocessed message found on disk: channels at their mtimes."""
        path = queuedir.info(msgid)
        try:
            if not queuedir.exists(path):
                return
            path = queuedir.todo(msgid)
            if queuedir.exists(path):
                return  # preprocessing will be redone
            due: list[int | None] = []
            for c in CHANNELS:
                path = queuedir.channel(c, msgid)
                try:
                    due.append(int(os.stat(path).st_mtime))
                except FileNotFoundError:
                    due.append(None)
        except OSError:
            self.core.log.warning(f"unable to stat {path}; will try again later")
            self.fail.add(msgid, int(time.time()) + SLEEP_SYSFAIL)
            return
        for c in CHANNELS:
            if due[c] is not None:
                self.chan[c].add(msgid, due[c])
        if due == [None, None]:
            self.done.add(msgid, int(time.time()))

    def start(self) -> None:
        """Scan info/*/* at startup."""
        for n in range(auto.SPLIT):
            while True:
                try:
                    names = os.listdir(f"info/{n}")
                    break
                except FileNotFoundError:
                    names = []
                    break
                except OSError:
                    self.core.pause(f"unable to opendir info/{n}, sleeping...")
            for name in names:
                msgid = queuedir.parse_id(name)
                if msgid is not None:
                    self.add(msgid)

    def finish(self) -> None:
        """At exit: each scheduled channel's next retry time goes into its file's times."""
        for c in CHANNELS:
            for due, msgid in self.chan[c]:
                path = queuedir.channel(c, msgid)
                try:
                    os.utime(path, (due, due))
                except OSError:
                    self.core.log.warning(f"unable to utime {path}; message will be retried too soon")

    def run_all(self) -> None:
        """ALRM: every channel is due now."""
        for q in self.chan:
            q.run_all(self.core.recent)

    def prep(self, wait: Wait) -> None:
        """Wake up for due retries of failed looks (completions: send_done)."""
        wait.at(self.fail.next_due())

    def do(self) -> None:
        """Look again at messages whose files could not be looked at."""
        while (msgid := self.fail.pop_due(self.core.recent)) is not None:
            self.add(msgid)
