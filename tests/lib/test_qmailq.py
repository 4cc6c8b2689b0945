"""The caller side of qmail-queue: warm fork and exec give the same queue; qq texts."""
from __future__ import annotations

import os

from qpy import qmailq
from qpy.auto import SPLIT
from qpy.exitcodes import qq_text


def queued(home) -> list[tuple[bytes, bytes]]:
    out = []
    for name in sorted(os.listdir(home / "queue" / "todo")):
        n = int(name)
        mess = (home / "queue" / "mess" / str(n % SPLIT) / name).read_bytes()
        todo = (home / "queue" / "todo" / name).read_bytes()
        out.append((mess.split(b"\n", 1)[1], todo.split(b"\0", 2)[2]))
    return out


def test_warm_and_exec_paths_queue_identically(home, monkeypatch):
    msg = b"Subject: same\n\nbody\n"
    assert qmailq.queue_message(msg, b"s@x", [b"r@y"]) == ""
    monkeypatch.setenv("QPY_EXEC", "1")
    assert qmailq.queue_message(msg, b"s@x", [b"r@y"]) == ""
    a, b = queued(home)
    assert a == b == (msg, b"Fs@x\0Tr@y\0")


def test_qmailqueue_variable_runs_another_program(home, tmp_path, monkeypatch):
    prog = tmp_path / "fakeqq"
    prog.write_text("#!/bin/sh\ncat >/dev/null; cat <&1 >/dev/null; exit 31\n")
    prog.chmod(0o755)
    monkeypatch.setenv("QMAILQUEUE", str(prog))
    assert qmailq.queue_message(b"x\n", b"s@x", [b"r@y"]) == "Dmail server permanently rejected message (#5.3.0)"
    assert os.listdir(home / "queue" / "todo") == []


def test_unrunnable_program_is_a_temporary_failure(home, monkeypatch):
    monkeypatch.setenv("QMAILQUEUE", "/nonexistent/qq")
    assert qmailq.queue_message(b"x\n", b"s@x", [b"r@y"]) == "Zunable to exec qq (#4.3.0)"


def test_qq_texts():
    assert qq_text(0) == ""
    assert qq_text(53) == "Zqq write error or disk full (#4.3.0)"
    assert qq_text(11) == "Denvelope address too long for qq (#5.1.3)"
    assert qq_text(25) == "Dqq permanent problem (#5.3.0)"
    assert qq_text(99) == "Zqq temporary problem (#4.3.0)"
    assert qq_text(-9) == "Zqq crashed (#4.3.0)"
    assert qq_text(82, b"Dcustom refusal (#5.7.1)") == "Dcustom refusal (#5.7.1)"
