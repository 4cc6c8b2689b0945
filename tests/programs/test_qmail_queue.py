"""qmail-queue as a real subprocess on real pipes: queue files, exit codes, crash safety."""
from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import make_instance, need_root
from qpy.auto import SPLIT

MESSAGE = b"From: a@example.test\nSubject: test\n\nline one\n.line with dot\n\x00\xff binary\n"
RECEIVED = re.compile(rb"^Received: \(qmail (\d+) invoked by uid (\d+)\); "
                      rb"([1-9]\d?) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                      rb"(\d{4}) (\d\d):(\d\d):(\d\d) -0000\n")


def start(home: Path, env: dict[str, str] | None = None, stdin=subprocess.PIPE) -> tuple[subprocess.Popen, int]:
    """Start bin/qmail-queue with fd 0 = a pipe (or ``stdin``), fd 1 = the read end of an envelope pipe.

    QMAILHOME is ``home``; the program is the one installed in ``home`` unless
    ``env`` points QMAILHOME elsewhere.
    """
    env_r, env_w = os.pipe()
    full = dict(os.environ, QMAILHOME=str(home))
    full.update(env or {})
    proc = subprocess.Popen([str(home / "bin" / "qmail-queue")], stdin=stdin, stdout=env_r,
                            stderr=subprocess.PIPE, env=full)
    os.close(env_r)
    return proc, env_w


def queue(home: Path, message: bytes, envelope: bytes, env: dict[str, str] | None = None) -> tuple[int, int, bytes]:
    """Run one qmail-queue; return (exit code, pid, stderr)."""
    proc, env_w = start(home, env)
    def feed_envelope() -> None:
        try:
            os.write(env_w, envelope)
        except OSError:
            pass
        os.close(env_w)
    t = threading.Thread(target=feed_envelope)
    t.start()
    try:
        proc.stdin.write(message)
    except BrokenPipeError:
        pass
    proc.stdin.close()
    t.join(30)
    proc.wait(60)
    return proc.returncode, proc.pid, proc.stderr.read()


def todo_ids(home: Path) -> list[int]:
    return [int(n) for n in os.listdir(home / "queue" / "todo")]


def mess_files(home: Path) -> list[Path]:
    return [p for d in (home / "queue" / "mess").iterdir() for p in d.iterdir()]


def assert_nothing_queued(home: Path) -> None:
    assert todo_ids(home) == []
    assert mess_files(home) == []
    assert os.listdir(home / "queue" / "intd") == []
    assert os.listdir(home / "queue" / "pid") == []


def test_queue_files_are_byte_exact(home):
    before = time.time()
    code, pid, err = queue(home, MESSAGE, b"Fsender@example.test\0Tr1@example.test\0Tr2@x.test\0\0")
    after = time.time()
    assert (code, err) == (0, b"")
    [msgid] = todo_ids(home)
    mess = home / "queue" / "mess" / str(msgid % SPLIT) / str(msgid)
    assert mess.stat().st_ino == msgid
    data = mess.read_bytes()
    m = RECEIVED.match(data)
    assert m, data[:100]
    assert int(m.group(1)) == pid and int(m.group(2)) == os.getuid()
    stamp = time.strptime(b" ".join(m.group(3, 4, 5)).decode() + " " + b":".join(m.group(6, 7, 8)).decode(),
                          "%d %b %Y %H:%M:%S")
    import calendar
    assert int(before) - 1 <= calendar.timegm(stamp) <= after + 1
    assert data[m.end():] == MESSAGE
    expected = b"u%d\0p%d\0Fsender@example.test\0Tr1@example.test\0Tr2@x.test\0" % (os.getuid(), pid)
    assert (home / "queue" / "todo" / str(msgid)).read_bytes() == expected
    assert (home / "queue" / "intd" / str(msgid)).read_bytes() == expected
    assert os.stat(home / "queue" / "intd" / str(msgid)).st_ino == os.stat(home / "queue" / "todo" / str(msgid)).st_ino
    assert os.listdir(home / "queue" / "pid") == []
    assert oct(mess.stat().st_mode & 0o777) == oct(0o644 & ~0o033)


def test_empty_sender_and_no_recipients_are_legal(home):
    code, pid, _ = queue(home, b"", b"F\0\0")
    assert code == 0
    [msgid] = todo_ids(home)
    assert (home / "queue" / "todo" / str(msgid)).read_bytes() == b"u%d\0p%d\0F\0" % (os.getuid(), pid)


def test_trigger_is_pulled(home):
    fifo = os.open(home / "queue" / "lock" / "trigger", os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert queue(home, MESSAGE, b"Fa@b\0Tc@d\0\0")[0] == 0
        assert os.read(fifo, 10) == b"\0"
    finally:
        os.close(fifo)


@pytest.mark.parametrize("envelope, code", [
    (b"Xa@b\0Tc@d\0\0", 91),            # first record is not F
    (b"\0", 91),                        # no sender record at all
    (b"Fa@b\0Xc@d\0\0", 91),            # recipient record without T
    (b"Fa@b\0Tc@d\0", 54),              # EOF before the terminating NUL
    (b"Fa@b\0Tc@", 54),                 # EOF inside a record
    (b"", 54),                          # no envelope at all
    (b"F" + b"a" * 1003 + b"\0\0", 11),  # sender too long
    (b"Fa@b\0T" + b"r" * 1003 + b"\0\0", 11),
])
def test_envelope_errors(home, envelope, code):
    assert queue(home, MESSAGE, envelope)[0] == code
    assert_nothing_queued(home)


def test_address_of_exactly_1002_bytes_is_accepted(home):
    assert queue(home, MESSAGE, b"F" + b"a" * 1002 + b"\0\0")[0] == 0


def test_missing_home_is_61(home, tmp_path):
    assert queue(home, MESSAGE, b"Fa@b\0\0", env={"QMAILHOME": str(tmp_path / "nowhere")})[0] == 61


@pytest.mark.parametrize("victim, code", [
    ("queue", 62), ("queue/pid", 63), ("queue/intd", 65), ("queue/todo", 66)])
def test_missing_queue_directories(home, victim, code):
    target = home / victim
    shutil.rmtree(target)
    if victim != "queue":
        target.write_bytes(b"")  # a file where the directory should be
    assert queue(home, MESSAGE, b"Fa@b\0Tc@d\0\0")[0] == code
    if victim != "queue":
        assert todo_ids(home) == [] if victim != "queue/todo" else True
        assert mess_files(home) == []


def test_missing_mess_split_directory_is_64(home):
    for d in (home / "queue" / "mess").iterdir():
        d.rmdir()
    assert queue(home, MESSAGE, b"Fa@b\0Tc@d\0\0")[0] == 64
    assert todo_ids(home) == [] and os.listdir(home / "queue" / "pid") == []


def test_read_error_on_message_is_54(home):
    fd = os.open(home / "w", os.O_WRONLY | os.O_CREAT)  # reading a write-only fd fails (EBADF)
    try:
        proc, env_w = start(home, stdin=fd)
        os.write(env_w, b"Fa@b\0Tc@d\0\0")
        os.close(env_w)
        assert proc.wait(30) == 54
    finally:
        os.close(fd)
    assert_nothing_queued(home)


def test_timeout_is_52(home):
    proc, env_w = start(home, env={"QPY_QUEUE_ALARM": "1"})
    proc.stdin.write(b"partial message")
    proc.stdin.flush()
    assert proc.wait(30) == 52
    os.close(env_w)
    proc.stdin.close()
    assert_nothing_queued(home)


def test_fault_signal_is_81_and_leaves_nothing(home):
    proc, env_w = start(home)
    proc.stdin.write(b"partial message")
    proc.stdin.flush()
    time.sleep(0.5)
    proc.send_signal(signal.SIGBUS)
    assert proc.wait(30) == 81
    os.close(env_w)
    proc.stdin.close()
    assert_nothing_queued(home)


def test_hangup_and_interrupt_are_ignored(home):
    proc, env_w = start(home)
    proc.stdin.write(b"Subject: x\n\n")
    proc.stdin.flush()
    time.sleep(0.5)
    proc.send_signal(signal.SIGHUP)
    proc.send_signal(signal.SIGINT)
    proc.stdin.write(b"rest\n")
    proc.stdin.close()
    os.write(env_w, b"Fa@b\0Tc@d\0\0")
    os.close(env_w)
    assert proc.wait(30) == 0
    [msgid] = todo_ids(home)
    assert (home / "queue" / "mess" / str(msgid % SPLIT) / str(msgid)).read_bytes().endswith(b"Subject: x\n\nrest\n")


def test_out_of_memory_is_51(home):
    """An envelope larger than the address space the run may use: 51, nothing queued."""
    import resource
    limit = 400 * 1024 * 1024
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    env_r, env_w = os.pipe()
    proc = subprocess.Popen([str(home / "bin" / "qmail-queue")], stdin=subprocess.PIPE, stdout=env_r,
                            stderr=subprocess.PIPE, env=dict(os.environ, QMAILHOME=str(home)),
                            preexec_fn=cap)
    os.close(env_r)
    proc.stdin.write(MESSAGE)
    proc.stdin.close()
    record = b"T" + b"r" * 1000 + b"\0"
    block = record * 1024
    try:
        os.write(env_w, b"Fa@b\0")
        for _ in range(600):  # up to 600 MB of recipients
            os.write(env_w, block)
    except BrokenPipeError:
        pass
    os.close(env_w)
    assert proc.wait(60) == 51
    assert_nothing_queued(home)


def test_forty_concurrent_runs_get_forty_messages(home):
    results: dict[int, int] = {}
    def one(i: int) -> None:
        code, _, _ = queue(home, b"Subject: %d\n\nbody %d\n" % (i, i), b"Fs%d@x\0Tr@y\0\0" % i)
        results[i] = code
    threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(results) == list(range(40)) and set(results.values()) == {0}
    ids = todo_ids(home)
    assert len(set(ids)) == 40
    seen = set()
    for msgid in ids:
        todo = (home / "queue" / "todo" / str(msgid)).read_bytes()
        i = int(re.search(rb"\0Fs(\d+)@x\0", todo).group(1))
        body = (home / "queue" / "mess" / str(msgid % SPLIT) / str(msgid)).read_bytes()
        assert body.endswith(b"Subject: %d\n\nbody %d\n" % (i, i))
        seen.add(i)
    assert seen == set(range(40))


def test_killed_at_random_points_never_leaves_a_partial_todo(home):
    rng = random.Random(4711)
    body = b"x" * 999 + b"\n"
    for _ in range(12):
        proc, env_w = start(home)
        chunks = rng.randint(1, 30)
        for _ in range(chunks):
            try:
                proc.stdin.write(body * 64)
                proc.stdin.flush()
            except BrokenPipeError:
                break
        stage = rng.random()
        if stage > 0.5:
            proc.stdin.close()
            time.sleep(rng.random() * 0.05)
            os.write(env_w, b"Fa@b\0Tc@d\0\0")
            time.sleep(rng.random() * 0.05)
        proc.kill()
        proc.wait(30)
        os.close(env_w)
        if proc.stdin and not proc.stdin.closed:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
    for msgid in todo_ids(home):  # only runs killed after their last step may have queued
        todo = (home / "queue" / "todo" / str(msgid)).read_bytes()
        assert todo.endswith(b"\0Fa@b\0Tc@d\0")
        mess = (home / "queue" / "mess" / str(msgid % SPLIT) / str(msgid)).read_bytes()
        assert RECEIVED.match(mess) and mess.endswith(body)


def test_full_filesystem_is_53_and_leaves_no_todo(tmp_path, monkeypatch):
    need_root()
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: " + r.stderr.decode())
    try:
        home = make_instance(mnt / "qmail")
        code, _, _ = queue(home, b"x" * (2 * 1024 * 1024), b"Fa@b\0Tc@d\0\0")
        assert code == 53
        assert_nothing_queued(home)
        # Space is back: a small message still goes through.
        assert queue(home, MESSAGE, b"Fa@b\0Tc@d\0\0")[0] == 0
    finally:
        subprocess.run(["umount", "-l", str(mnt)])
