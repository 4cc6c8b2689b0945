"""qmail-tcpto prints the timeout table in qmail's format."""
from __future__ import annotations

import os
import re
import struct
import time

from conftest import run
from qpy.tcpto import Tcpto


def test_empty_table_prints_nothing(home):
    r = run(home, "qmail-tcpto")
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")


def test_prints_qmail_lines_for_both_families(home):
    now = int(time.time())
    Tcpto(clock=lambda: now - 100).result("127.0.0.2", True)
    Tcpto(clock=lambda: now - 7).result("2001:db8::5", True)
    # a zero-count record (host reset) is not printed
    rec = bytes([10, 0, 0, 1, 0, 0, 0, 0]) + struct.pack("<I", now) + bytes(4)
    with open(home / "queue" / "lock" / "tcpto", "r+b") as f:
        f.seek(16)
        f.write(rec)
    r = run(home, "qmail-tcpto")
    assert r.returncode == 0
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 2
    m = re.fullmatch(r"127\.0\.0\.2 timed out (\d+) seconds ago; # recent timeouts: 1", lines[0])
    assert m and 100 <= int(m.group(1)) <= 160
    m = re.fullmatch(r"2001:db8::5 timed out (\d+) seconds ago; # recent timeouts: 1", lines[1])
    assert m and 7 <= int(m.group(1)) <= 67


def test_missing_table_is_111(home):
    os.unlink(home / "queue" / "lock" / "tcpto")
    r = run(home, "qmail-tcpto")
    assert r.returncode == 111 and r.stderr.startswith(b"qmail-tcpto: fatal: unable to read tcpto:")
