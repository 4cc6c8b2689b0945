"""qmail-send's clock (docs/queue.md §7): retry times, queue lifetime, and its timed queues.

Times are whole seconds since the epoch, as in qmail.  A message is *born*
when it is preprocessed (the mtime of info/<id>); a pass over channel ``c``
that starts at ``recent`` schedules the next one at
``birth + (floor(sqrt(recent - birth)) + CHANSKIP[c])**2``, so on-time retries
fall at birth + (10k)² s locally and birth + (20k)² s remotely.
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Iterator

LOCAL, REMOTE = 0, 1
CHANNELS = (LOCAL, REMOTE)
CHANSKIP = (10, 20)

SLEEP_TODO = 1500        # scan todo/ at least every 25 minutes
SLEEP_FUZZ = 1           # added to every select() timeout against Zeno's paradox
SLEEP_FOREVER = 86400    # the longest select() sleep
SLEEP_CLEANUP = 76431    # between two sweeps of mess/ for leftovers
SLEEP_SYSFAIL = 123      # retry delay after a stat/open/unlink trouble
OSSIFIED = 129600        # 36 h: must exceed qmail-queue's 24 h suicide timer
LIFETIME = 604800        # default control/queuelifetime


def next_retry(birth: int, recent: int, channel: int) -> int:
    """When to try a channel again after a pass that started at ``recent``."""
    n = 0 if birth > recent else math.isqrt(recent - birth)
    n += CHANSKIP[channel]
    return birth + n * n


def dying(birth: int, recent: int, lifetime: int) -> bool:
    """True when a pass starting at ``recent`` is the message's last chance."""
    return recent > birth + lifetime


class TimedQueue:
    """A priority queue of message ids keyed by the time they are due (qmail's prioq)."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """(due, id) pairs in no particular order."""
        return iter(list(self._heap))

    def add(self, msgid: int, due: int) -> None:
        """Schedule ``msgid`` at ``due``."""
        heapq.heappush(self._heap, (due, msgid))

    def next_due(self) -> int | None:
        """The earliest due time, or None when empty."""
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: int) -> int | None:
        """Remove and return the earliest id if it is due by ``now``."""
        if self._heap and self._heap[0][0] <= now:
            return heapq.heappop(self._heap)[1]
        return None

    def pop(self) -> tuple[int, int]:
        """Remove and return the earliest (due, id)."""
        return heapq.heappop(self._heap)

    def run_all(self, now: int) -> None:
        """Make every entry due at ``now`` (SIGALRM)."""
        self._heap = [(min(due, now), msgid) for due, msgid in self._heap]
        heapq.heapify(self._heap)
