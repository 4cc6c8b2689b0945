"""qpy.schedule: qmail-send's retry formula, lifetime and timed queues (docs/queue.md §7)."""
from __future__ import annotations

from qpy import schedule
from qpy.schedule import LOCAL, REMOTE, TimedQueue, dying, next_retry


def on_time_attempts(channel: int, count: int) -> list[int]:
    """Offsets from birth of the first ``count`` passes when each retry starts on time."""
    birth, recent, out = 1_000_000, 1_000_000, []
    for _ in range(count):
        out.append(recent - birth)
        recent = next_retry(birth, recent, channel)
    return out


def test_local_attempts_fall_on_squares_of_multiples_of_ten():
    assert on_time_attempts(LOCAL, 7) == [0, 100, 400, 900, 1600, 2500, 3600]


def test_remote_attempts_fall_on_squares_of_multiples_of_twenty():
    assert on_time_attempts(REMOTE, 7) == [0, 400, 1600, 3600, 6400, 10000, 14400]


def test_a_late_pass_schedules_from_the_square_root_of_its_age():
    birth = 5000
    assert next_retry(birth, birth + 99, LOCAL) == birth + (9 + 10) ** 2
    assert next_retry(birth, birth + 100, LOCAL) == birth + (10 + 10) ** 2
    assert next_retry(birth, birth + 577600, REMOTE) == birth + 780 ** 2


def test_birth_in_the_future_counts_as_age_zero():
    assert next_retry(2000, 1000, LOCAL) == 2100
    assert next_retry(2000, 1000, REMOTE) == 2400


def test_dying_only_strictly_after_the_lifetime():
    assert not dying(0, 604800, 604800)
    assert dying(0, 604801, 604800)
    # with the default lifetime the try at 780^2 s is the first dying one
    assert not dying(0, 760 ** 2, schedule.LIFETIME)
    assert dying(0, 780 ** 2, schedule.LIFETIME)


def test_timed_queue_orders_by_due_time_and_runs_all_on_alarm():
    q = TimedQueue()
    q.add(7, 300)
    q.add(8, 100)
    q.add(9, 200)
    assert len(q) == 3 and q.next_due() == 100
    assert q.pop_due(99) is None
    assert q.pop_due(150) == 8
    q.run_all(50)
    assert sorted(q) == [(50, 7), (50, 9)]
    assert q.pop() == (50, 7) and q.pop() == (50, 9)
    assert q.next_due() is None


def test_ossified_exceeds_the_queue_writer_suicide_timer():
    assert schedule.OSSIFIED == 129600 > 86400
