"""condredirect: forwards (exit 99) when its program exits 0, with qmail-local's environment."""
from __future__ import annotations

import os
import subprocess

from conftest import unsrs

MESSAGE = b"Subject: cond\n\nbody\n"
LOCAL_ENV = {"SENDER": "orig@sender.example", "NEWSENDER": "new@sender.example",
             "RECIPIENT": "joe@test.example", "DTLINE": "Delivered-To: joe@test.example\n"}


def deliver(home, tmp_path, args, env=None, drop=()):
    full = {"PATH": os.environ["PATH"], "QMAILHOME": str(home), **LOCAL_ENV, **(env or {})}
    for name in drop:
        del full[name]
    msg = tmp_path / "msg"
    msg.write_bytes(MESSAGE)
    with open(msg, "rb") as f:
        return subprocess.run([str(home / "bin" / "condredirect"), *args], stdin=f, env=full,
                              capture_output=True, timeout=60)


def todo_files(home):
    return [(home / "queue" / "todo" / n).read_bytes() for n in os.listdir(home / "queue" / "todo")]


def test_program_exit_0_forwards_the_whole_message_and_exits_99(home, tmp_path):
    # The program reads the message first: condredirect must rewind before forwarding.
    r = deliver(home, tmp_path, ["other@x.y", "sh", "-c", "grep -q cond"])
    assert r.returncode == 99 and r.stderr.startswith(b"condredirect: qp ")
    [todo] = todo_files(home)
    fields = todo.split(b"\0")[2:]
    assert unsrs(fields[0][1:]) == b"orig@sender.example" and fields[1:] == [b"Tother@x.y", b""]
    n = int(os.listdir(home / "queue" / "todo")[0])
    mess = (home / "queue" / "mess" / str(n % 23) / str(n)).read_bytes()
    assert mess.split(b"\n", 1)[1] == b"Delivered-To: joe@test.example\n" + MESSAGE


def test_other_exit_codes(home, tmp_path):
    r = deliver(home, tmp_path, ["other@x.y", "sh", "-c", "exit 1"])
    assert (r.returncode, r.stderr) == (0, b"")
    r = deliver(home, tmp_path, ["other@x.y", "sh", "-c", "exit 111"])
    assert (r.returncode, r.stderr) == (111, b"condredirect: fatal: temporary child error\n")
    r = deliver(home, tmp_path, ["other@x.y", "sh", "-c", "kill -9 $$"])
    assert (r.returncode, r.stderr) == (111, b"condredirect: fatal: child crashed\n")
    r = deliver(home, tmp_path, ["other@x.y", "/nonexistent/program"])
    assert r.returncode == 0  # could not run it: treated as "not 0", deliver normally
    assert todo_files(home) == []


def test_usage_and_missing_sender(home, tmp_path):
    r = deliver(home, tmp_path, ["only-address"])
    assert r.returncode == 100 and r.stderr.startswith(b"condredirect: usage:")
    r = deliver(home, tmp_path, ["other@x.y", "true"], drop=("SENDER",))
    assert (r.returncode, r.stderr) == (100, b"condredirect: fatal: SENDER not set\n")
