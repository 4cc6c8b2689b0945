"""qpy.tcpto: qmail's lock/tcpto records and rules, plus the IPv6 file."""
from __future__ import annotations

import struct

from qpy import tcpto
from qpy.tcpto import Tcpto

T0 = 1_700_000_000


def raw(home, name="tcpto") -> bytes:
    return (home / "queue" / "lock" / name).read_bytes()


def v4_record(data: bytes, i: int) -> tuple[bytes, int, int]:
    rec = data[16 * i:16 * (i + 1)]
    return rec[:4], rec[4], struct.unpack("<I", rec[8:12])[0]


class Clock:
    def __init__(self, t: int = T0) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


def test_files_exist_with_their_sizes(home):
    assert raw(home) == bytes(1024)
    assert raw(home, "tcpto6") == bytes(2048)


def test_first_timeout_makes_a_record_in_qmail_format(home):
    Tcpto(clock=Clock()).result("127.0.0.2", True)
    data = raw(home)
    assert v4_record(data, 0) == (bytes([127, 0, 0, 2]), 1, T0)
    assert data[16:] == bytes(1024 - 16) and data[5:8] == b"\0\0\0" and data[12:16] == bytes(4)


def test_skip_needs_two_timeouts_more_than_120_s_apart_and_expires(home):
    clock = Clock()
    t = Tcpto(clock=clock, pid=0)          # skip window: (60 + 0) * 64 = 3840 s
    t.result("127.0.0.2", True)
    clock.t += 60
    t.result("127.0.0.2", True)            # within 120 s: not counted
    assert v4_record(raw(home), 0)[1] == 1
    assert not Tcpto(clock=clock, pid=0).skip("127.0.0.2")
    clock.t += 61
    t.result("127.0.0.2", True)
    assert v4_record(raw(home), 0)[1:] == (2, T0 + 121)
    assert Tcpto(clock=clock, pid=0).skip("127.0.0.2")
    clock.t += 3839
    assert Tcpto(clock=clock, pid=0).skip("127.0.0.2")
    clock.t += 1
    assert not Tcpto(clock=clock, pid=0).skip("127.0.0.2")
    assert Tcpto(clock=clock, pid=31).skip("127.0.0.2")   # (60 + 31) * 64 = 5824 s


def test_count_is_capped_at_ten(home):
    clock = Clock()
    t = Tcpto(clock=clock)
    for _ in range(15):
        t.result("127.0.0.2", True)
        clock.t += 200
    assert v4_record(raw(home), 0)[1] == 10


def test_success_resets_only_a_host_seen_in_this_run(home):
    clock = Clock()
    t = Tcpto(clock=clock)
    t.result("127.0.0.2", True)
    Tcpto(clock=clock).result("127.0.0.2", False)     # this run never looked it up
    assert v4_record(raw(home), 0)[1] == 1
    t2 = Tcpto(clock=clock)
    assert not t2.skip("127.0.0.2")
    t2.result("127.0.0.2", False)
    assert v4_record(raw(home), 0) == (bytes([127, 0, 0, 2]), 0, T0)
    Tcpto(clock=clock).result("127.0.0.9", False)     # unknown host, no timeout: nothing written
    assert raw(home)[16:] == bytes(1024 - 16)


def test_full_table_replaces_smallest_time_plus_count_times_1024(home):
    clock = Clock()
    for i in range(64):
        Tcpto(clock=clock).result(f"10.0.0.{i}", True)
        clock.t += 10
    # Record 5 gets count 2 (time + 2048); record 0 stays the oldest by time + count*1024.
    clock.t += 200
    Tcpto(clock=clock).result("10.0.0.5", True)
    Tcpto(clock=clock).result("10.0.0.200", True)
    assert v4_record(raw(home), 0) == (bytes([10, 0, 0, 200]), 1, clock.t)
    clock.t += 1
    Tcpto(clock=clock).result("10.0.0.201", True)     # next: record 1 (time T0+10)
    assert v4_record(raw(home), 1)[0] == bytes([10, 0, 0, 201])


def test_free_record_is_reused_first(home):
    clock = Clock()
    for ip in ("127.0.0.2", "127.0.0.3"):
        Tcpto(clock=clock).result(ip, True)
    t = Tcpto(clock=clock)
    t.skip("127.0.0.2")
    t.result("127.0.0.2", False)                      # count 0: record 0 is free again
    Tcpto(clock=clock).result("127.0.0.4", True)
    assert v4_record(raw(home), 0)[:2] == (bytes([127, 0, 0, 4]), 1)


def test_ipv6_goes_to_tcpto6(home):
    clock = Clock()
    Tcpto(clock=clock).result("::1", True)
    data = raw(home, "tcpto6")
    assert data[:16] == bytes(15) + b"\1" and data[16] == 1
    assert struct.unpack("<Q", data[24:32])[0] == T0
    assert data[32:] == bytes(2048 - 32) and data[17:24] == bytes(7)
    assert raw(home) == bytes(1024)
    assert tcpto.entries() == [tcpto.Entry("::1", 1, T0)]


def test_missing_files_mean_nothing_known(home):
    (home / "queue" / "lock" / "tcpto6").unlink()
    t = Tcpto()
    assert not t.skip("::1")
    t.result("::1", True)
    assert not (home / "queue" / "lock" / "tcpto6").exists()
    tcpto.clear()
    assert tcpto.entries() == []


def test_entries_and_clear(home):
    clock = Clock()
    Tcpto(clock=clock).result("127.0.0.2", True)
    Tcpto(clock=clock).result("::1", True)
    assert [e.ip for e in tcpto.entries()] == ["127.0.0.2", "::1"]
    tcpto.clear()
    assert raw(home) == bytes(1024) and raw(home, "tcpto6") == bytes(2048)
    assert tcpto.entries() == []
