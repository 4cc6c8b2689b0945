"""predate: a local-time Date line in front of the child's input; the child's exit code."""
from __future__ import annotations

import os
import re
import subprocess
import time

from qpy.programs import predate


def run_predate(home, args, tz="UTC", message=b"Subject: x\n\nbody\n"):
    return subprocess.run([str(home / "bin" / "predate"), *args], input=message,
                          capture_output=True, timeout=60,
                          env={"PATH": os.environ["PATH"], "TZ": tz})


def test_date_line_then_input(home):
    r = run_predate(home, ["cat"], tz="EST5")
    assert r.returncode == 0
    m = re.fullmatch(rb"Date: (\d{1,2}) ([A-Z][a-z]{2}) (\d{4}) (\d\d):(\d\d):(\d\d) -0500\n"
                     rb"Subject: x\n\nbody\n", r.stdout)
    assert m, r.stdout
    assert m.group(1)[:1] != b"0"


def test_offset_rounding_and_format():
    os.environ["TZ"] = "NPT-5:45"  # Nepal, +0545
    time.tzset()
    try:
        assert predate.date_line(0) == b"Date: 1 Jan 1970 05:45:00 +0545\n"
    finally:
        del os.environ["TZ"]
        time.tzset()


def test_child_exit_code_and_failures(home):
    assert run_predate(home, ["sh", "-c", "cat >/dev/null; exit 3"]).returncode == 3
    r = run_predate(home, ["/nonexistent"])
    assert r.returncode == 111 and r.stderr.startswith(b"predate: fatal: unable to run /nonexistent: ")
    r = run_predate(home, [])
    assert (r.returncode, r.stderr) == (100, b"predate: usage: predate child\n")
