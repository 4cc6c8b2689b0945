"""forward: requeues the message with DTLINE, sender NEWSENDER (run as qmail-local runs it)."""
from __future__ import annotations

import os
import subprocess

from conftest import unsrs

MESSAGE = b"From: a@b.c\nSubject: fw\n\nforwarded body\n"
LOCAL_ENV = {"SENDER": "orig@sender.example", "NEWSENDER": "new@sender.example",
             "RECIPIENT": "joe@test.example", "LOCAL": "joe", "HOST": "test.example", "USER": "joe",
             "EXT": "", "DTLINE": "Delivered-To: joe@test.example\n",
             "RPLINE": "Return-Path: <orig@sender.example>\n",
             "UFLINE": "From orig@sender.example Thu Jan  1 00:00:00 1970\n"}


def deliver(home, tmp_path, args, env=None, drop=(), message=MESSAGE):
    """Run bin/forward as qmail-local would: message as a file on fd 0, its environment."""
    full = {"PATH": os.environ["PATH"], "QMAILHOME": str(home), **LOCAL_ENV, **(env or {})}
    for name in drop:
        del full[name]
    msg = tmp_path / "msg"
    msg.write_bytes(message)
    with open(msg, "rb") as f:
        return subprocess.run([str(home / "bin" / "forward"), *args], stdin=f, env=full,
                              capture_output=True, timeout=60)


def queued(home):
    out = []
    for name in os.listdir(home / "queue" / "todo"):
        n = int(name)
        mess = (home / "queue" / "mess" / str(n % 23) / name).read_bytes()
        out.append((mess.split(b"\n", 1)[1], (home / "queue" / "todo" / name).read_bytes()))
    return out


def test_forwards_with_dtline_and_newsender(home, tmp_path):
    r = deliver(home, tmp_path, ["a@x.y", "b@x.y"])
    assert r.returncode == 0
    assert r.stderr.startswith(b"forward: qp ") and r.stderr[12:-1].isdigit()
    [(body, todo)] = queued(home)
    assert body == b"Delivered-To: joe@test.example\n" + MESSAGE
    fields = todo.split(b"\0")[2:]
    assert unsrs(fields[0][1:]) == b"new@sender.example"
    assert fields[1:] == [b"Ta@x.y", b"Tb@x.y", b""]


def test_missing_variables_are_permanent(home, tmp_path):
    r = deliver(home, tmp_path, ["a@x.y"], drop=("NEWSENDER",))
    assert (r.returncode, r.stderr) == (100, b"forward: fatal: NEWSENDER not set\n")
    r = deliver(home, tmp_path, ["a@x.y"], drop=("DTLINE",))
    assert (r.returncode, r.stderr) == (100, b"forward: fatal: DTLINE not set\n")
    assert queued(home) == []


def test_empty_newsender_forwards_a_bounce(home, tmp_path):
    r = deliver(home, tmp_path, ["a@x.y"], env={"NEWSENDER": ""})
    assert r.returncode == 0
    [(_, todo)] = queued(home)
    assert todo.split(b"\0")[2:] == [b"F", b"Ta@x.y", b""]


def test_queue_failures_map_to_100_and_111(home, tmp_path):
    fake = tmp_path / "qq"
    fake.write_text("#!/bin/sh\ncat >/dev/null\nexit 31\n")
    fake.chmod(0o755)
    r = deliver(home, tmp_path, ["a@x.y"], env={"QMAILQUEUE": str(fake)})
    assert (r.returncode, r.stderr) == (
        100, b"forward: fatal: mail server permanently rejected message (#5.3.0)\n")
    fake.write_text("#!/bin/sh\ncat >/dev/null\nexit 71\n")
    r = deliver(home, tmp_path, ["a@x.y"], env={"QMAILQUEUE": str(fake)})
    assert (r.returncode, r.stderr) == (
        111, b"forward: fatal: mail server temporarily rejected message (#4.3.0)\n")
