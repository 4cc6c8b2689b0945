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


def leftovers(home) -> list[str]:
    q = home / "queue"
    names = [f"{d}/{n}" for d in ("pid", "intd", "todo") for n in os.listdir(q / d)]
    return names + [f"mess/{s}/{n}" for s in range(SPLIT) for n in os.listdir(q / "mess" / str(s))]


def test_direct_warm_and_exec_paths_queue_identically(home, monkeypatch):
    msg = b"Subject: same\n\nbody\n"
    direct = qmailq.start()
    assert isinstance(direct, qmailq.DirectJob)     # single-user instance, queue is ours
    direct.put(msg)
    assert direct.close(b"s@x", [b"r@y", b"q@z"]) == ""
    warm = qmailq.QueueJob()
    warm.put(msg)
    assert warm.close(b"s@x", [b"r@y", b"q@z"]) == ""
    monkeypatch.setenv("QPY_EXEC", "1")
    job = qmailq.start()
    assert isinstance(job, qmailq.QueueJob)
    job.put(msg)
    assert job.close(b"s@x", [b"r@y", b"q@z"]) == ""
    assert queued(home) == [(msg, b"Fs@x\0Tr@y\0Tq@z\0")] * 3
    for name in os.listdir(home / "queue" / "todo"):
        n = int(name)
        head = (home / "queue" / "mess" / str(n % SPLIT) / name).read_bytes().split(b"\n", 1)[0]
        todo = (home / "queue" / "todo" / name).read_bytes()
        qp = int(todo.split(b"\0")[1][1:])
        assert head.startswith(b"Received: (qmail %d invoked by uid %d); " % (qp, os.getuid()))
        assert todo.startswith(b"u%d\0p%d\0" % (os.getuid(), qp))
        if qp == direct.pid:
            assert qp == n              # the direct writer's qp is the message id


def test_start_runs_qmail_queue_when_configured(home, tmp_path, monkeypatch):
    prog = tmp_path / "fakeqq"
    prog.write_text("#!/bin/sh\ncat >/dev/null; cat <&1 >/dev/null; exit 31\n")
    prog.chmod(0o755)
    monkeypatch.setenv("QMAILQUEUE", str(prog))
    job = qmailq.start()
    assert isinstance(job, qmailq.QueueJob)
    job.put(b"x\n")
    assert job.close(b"s@x", [b"r@y"]) == "Dmail server permanently rejected message (#5.3.0)"


def test_direct_job_failures_queue_nothing_and_leave_nothing(home):
    failed = qmailq.start()
    failed.put(b"Subject: x\n\n")
    failed.fail()
    assert failed.close(b"s@x", [b"r@y"]) == "Zqq read error (#4.3.0)"
    aborted = qmailq.start()
    aborted.put(b"Subject: x\n\n")
    aborted.abort()
    too_long = qmailq.start()
    too_long.put(b"Subject: x\n\n")
    assert too_long.close(b"s@x", [b"r" * 1003 + b"@y"]) == "Denvelope address too long for qq (#5.1.3)"
    assert leftovers(home) == []


def test_direct_job_older_than_the_queue_alarm_is_not_queued(home, monkeypatch):
    monkeypatch.setenv("QPY_QUEUE_ALARM", "1")
    job = qmailq.start()
    job.put(b"Subject: x\n\n")
    job._born -= 2                      # as if the message had been written for 2 s
    assert job.close(b"s@x", [b"r@y"]) == qq_text(52)
    assert leftovers(home) == []
