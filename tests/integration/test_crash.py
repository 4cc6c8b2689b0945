"""Crash safety: messages keep flowing while qmail-send, or the whole daemon tree, is SIGKILLed.

A separate injector process queues 200 numbered messages through qmail-queue
while the test kills and restarts qmail-start at random moments.  Afterwards
every accepted message must be in the Maildir, complete, and nothing may have
bounced.  docs/queue.md §5 allows duplicates only for deliveries in flight when the
scheduler dies (done but not yet marked D), so each kill may duplicate at most
``concurrencylocal`` deliveries.
"""
from __future__ import annotations

import mailbox
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import control
from test_delivery import Daemons, add_user, wait_for

COUNT = 200
CONCURRENCY = 10

INJECTOR = r'''
import sys
from qpy import qmailq
count, out = int(sys.argv[1]), sys.argv[2]
with open(out, "a") as f:
    for n in range(count):
        if qmailq.queue_message(b"X-Seq: %d\nSubject: crash %d\n\n" % (n, n) + b"%d line\n" % n * 40,
                                b"joe@test.example", [b"joe@test.example"]) == "":
            f.write("%d\n" % n)
            f.flush()
'''


def expected_body(n: int) -> bytes:
    return b"X-Seq: %d\nSubject: crash %d\n\n" % (n, n) + b"%d line\n" % n * 40


def settled(home: Path) -> bool:
    """No message left to deliver: no todo/, info/, local/ or remote/ files."""
    q = home / "queue"
    return not any(os.listdir(q / d / str(i)) for d in ("info", "local", "remote")
                   for i in range(23)) and not os.listdir(q / "todo")


def leftovers(home: Path) -> list[Path]:
    """mess files still there (S2: a kill between ``end msg`` and qmail-clean's foop)."""
    return [p for i in range(23) for p in (home / "queue" / "mess" / str(i)).iterdir()]


def chaos(home: Path, tmp_path: Path, group: bool) -> None:
    control(home, "concurrencylocal", f"{CONCURRENCY}\n")
    joe = add_user(home, "joe")
    rng = random.Random(4242 if group else 1717)
    accepted = tmp_path / "accepted"
    injector = subprocess.Popen([sys.executable, "-c", INJECTOR, str(COUNT), str(accepted)],
                                env=dict(os.environ, QMAILHOME=str(home)))
    generations: list[Daemons] = []
    kills = 0
    try:
        def start() -> Daemons:
            work = tmp_path / f"gen{len(generations)}"
            work.mkdir()
            d = Daemons(home, work)
            generations.append(d)
            return d

        d = start()
        while injector.poll() is None or kills < 4:
            time.sleep(rng.uniform(0.05, 0.6))
            if group:
                os.killpg(d.proc.pid, signal.SIGKILL)
            else:
                d.proc.kill()
            d.proc.wait(timeout=30)
            kills += 1
            d = start()
        assert injector.wait(timeout=60) == 0
        d.wait_log(r"^status:")
        wait_for(lambda: settled(home), timeout=60)
        assert d.stop() == 0
        # S2 leftovers are removed by the periodic cleanup once 36 h old; age them and restart.
        # A kill can leave an S2 mess file for each foop/N request qmail-clean had not yet
        # answered (completions do not wait for the answer; THOUGHTS.md): only ever for a
        # message already delivered (checked below against the Received lines' qp).
        left = leftovers(home)
        left_ids = {int(p.name) for p in left}
        assert not os.listdir(home / "queue" / "intd")
        old = time.time() - 36 * 3600 - 60
        for p in left:
            os.utime(p, (old, old))
        d = start()
        d.wait_log(r"^status:")
        wait_for(lambda: not leftovers(home), timeout=60)
        assert d.stop() == 0
    finally:
        if injector.poll() is None:
            injector.kill()
        for g in generations:
            g.kill()

    seqs = [int(x) for x in accepted.read_text().split()]
    assert sorted(seqs) == list(range(COUNT))
    seen: dict[int, int] = {}
    delivered_ids: set[int] = set()
    for m in mailbox.Maildir(str(joe / "Maildir"), create=False):
        raw = m.as_bytes()
        delivered_ids.add(int(raw.split(b"Received: (qmail ", 1)[1].split(b" ", 1)[0]))  # qp = id
        assert m["Subject"] != "failure notice"
        assert raw.startswith(b"Return-Path: <joe@test.example>\nDelivered-To: joe@test.example\n"
                              b"Received: (qmail ")
        n = int(m["X-Seq"])
        assert raw.split(b"\n", 3)[3] == expected_body(n)  # complete, not truncated
        seen[n] = seen.get(n, 0) + 1
    assert sorted(seen) == list(range(COUNT))
    assert left_ids <= delivered_ids
    duplicates = sum(seen.values()) - COUNT
    assert duplicates <= kills * CONCURRENCY, (duplicates, kills)
    for g in generations:
        for line in g.log():
            assert not line.startswith(("bounce msg", "triple bounce")), line
            assert ": failure: " not in line, line


@pytest.mark.slow
def test_killing_qmail_send_loses_nothing(home, tmp_path):
    chaos(home, tmp_path, group=False)


@pytest.mark.slow
def test_killing_the_whole_daemon_tree_loses_nothing(home, tmp_path):
    chaos(home, tmp_path, group=True)
