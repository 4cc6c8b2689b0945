"""mailsubj: Subject and To lines in front of stdin, queued through qmail-inject."""
from __future__ import annotations

import os

from conftest import run


def test_builds_subject_and_to_and_queues(home):
    r = run(home, "mailsubj", ["Weekly report", "a@x.y", "bob"], input=b"all good\n",
            env={"USER": "joe"})
    assert r.returncode == 0, r.stderr
    [name] = os.listdir(home / "queue" / "todo")
    mess = (home / "queue" / "mess" / str(int(name) % 23) / name).read_bytes()
    assert mess.endswith(b"From: joe@test.example\nSubject: Weekly report\n"
                         b"To: a@x.y, bob@test.example\n\nall good\n")
    todo = (home / "queue" / "todo" / name).read_bytes()
    assert todo.split(b"\0")[2:] == [b"Fjoe@test.example", b"Tbob@test.example", b"Ta@x.y", b""]


def test_usage(home):
    r = run(home, "mailsubj", ["only subject"])
    assert (r.returncode, r.stderr) == (100, b"mailsubj: usage: mailsubj subject recip ...\n")
