"""except (module except_): success becomes a bounce, failure becomes success."""
from __future__ import annotations

import subprocess


def test_exit_codes_are_reversed(home):
    ex = str(home / "bin" / "except")
    cases = [(["true"], 100), (["false"], 0), (["sh", "-c", "exit 111"], 111),
             (["sh", "-c", "exit 100"], 0), (["sh", "-c", "kill -9 $$"], 111)]
    for args, code in cases:
        r = subprocess.run([ex, *args], input=b"", capture_output=True, timeout=60)
        assert r.returncode == code, (args, r.stderr)


def test_program_sees_the_message(home):
    r = subprocess.run([str(home / "bin" / "except"), "grep", "-q", "^Subject: hit"],
                       input=b"Subject: hit\n\n", capture_output=True, timeout=60)
    assert r.returncode == 100


def test_usage(home):
    r = subprocess.run([str(home / "bin" / "except")], capture_output=True, timeout=60)
    assert (r.returncode, r.stderr) == (100, b"except: usage: except program [ arg ... ]\n")
