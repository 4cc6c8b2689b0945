"""qmail-qstat counts mess/* and todo/."""
from __future__ import annotations

import os

from conftest import run
from qpy import qmailq


def test_counts_queued_and_unprocessed(home):
    r = run(home, "qmail-qstat")
    assert r.stdout == b"messages in queue: 0\nmessages in queue but not yet preprocessed: 0\n"
    for i in range(3):
        assert qmailq.queue_message(b"Subject: %d\n\n" % i, b"a@b", [b"c@d"]) == ""
    # Pretend qmail-send preprocessed one: its todo entry is gone, its mess stays.
    os.unlink(home / "queue" / "todo" / os.listdir(home / "queue" / "todo")[0])
    r = run(home, "qmail-qstat")
    assert (r.returncode, r.stdout) == (0, b"messages in queue: 3\nmessages in queue but not yet preprocessed: 2\n")


def test_unreadable_queue_is_111(home):
    os.rename(home / "queue", home / "gone")
    r = run(home, "qmail-qstat")
    assert r.returncode == 111 and r.stderr.startswith(b"qmail-qstat: fatal:")
