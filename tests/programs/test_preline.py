"""preline: UFLINE/RPLINE/DTLINE in front of the message, flags to drop each."""
from __future__ import annotations

import os
import subprocess

ENV = {"UFLINE": "From s@x.y Thu Jan  1 00:00:00 1970\n", "RPLINE": "Return-Path: <s@x.y>\n",
       "DTLINE": "Delivered-To: joe@test.example\n"}
MESSAGE = b"Subject: p\n\nbody\n"


def preline(home, args, env=ENV, message=MESSAGE):
    return subprocess.run([str(home / "bin" / "preline"), *args], input=message,
                          capture_output=True, timeout=60,
                          env={"PATH": os.environ["PATH"], **env})


def test_all_three_lines_then_the_message(home):
    r = preline(home, ["cat"])
    assert r.returncode == 0
    assert r.stdout == (b"From s@x.y Thu Jan  1 00:00:00 1970\nReturn-Path: <s@x.y>\n"
                        b"Delivered-To: joe@test.example\n" + MESSAGE)


def test_flags_drop_and_restore_lines(home):
    assert preline(home, ["-f", "cat"]).stdout == (
        b"Return-Path: <s@x.y>\nDelivered-To: joe@test.example\n" + MESSAGE)
    assert preline(home, ["-dr", "cat"]).stdout == b"From s@x.y Thu Jan  1 00:00:00 1970\n" + MESSAGE
    assert preline(home, ["-frd", "-D", "cat"]).stdout == b"Delivered-To: joe@test.example\n" + MESSAGE


def test_exit_code_of_the_command(home):
    assert preline(home, ["sh", "-c", "cat >/dev/null; exit 42"]).returncode == 42
    r = preline(home, ["sh", "-c", "kill -9 $$"])
    assert (r.returncode, r.stderr) == (111, b"preline: fatal: child crashed\n")


def test_command_that_stops_reading_early(home):
    r = preline(home, ["sh", "-c", "exit 100"], message=b"x" * (4 << 20))
    assert r.returncode == 100


def test_usage_and_missing_command(home):
    r = preline(home, ["cat"], env={"UFLINE": "x\n", "RPLINE": "y\n"})
    assert (r.returncode, r.stderr) == (100, b"preline: usage: preline cmd [ arg ... ]\n")
    assert preline(home, []).returncode == 100
    r = preline(home, ["/nonexistent/cmd"])
    assert r.returncode == 100
    assert r.stderr.startswith(b"preline: fatal: unable to run /nonexistent/cmd: ")
