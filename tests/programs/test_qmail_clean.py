"""qmail-clean on real pipes: each reply byte, unlink order, pid/ cleanup (docs/protocols.md §6)."""
from __future__ import annotations

import os
import subprocess
import time

from conftest import run

OLD = 36 * 3600 + 60


def start(home) -> subprocess.Popen:
    return subprocess.Popen([str(home / "bin" / "qmail-clean")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=dict(os.environ, QMAILHOME=str(home)))


def ask(proc: subprocess.Popen, request: bytes) -> bytes:
    proc.stdin.write(request)
    proc.stdin.flush()
    return proc.stdout.read(1)


def finish(proc: subprocess.Popen) -> int:
    proc.stdin.close()
    rest = proc.stdout.read()
    assert rest == b""
    return proc.wait(timeout=30)


def touch(path, atime: float | None = None) -> None:
    path.write_bytes(b"x")
    if atime is not None:
        os.utime(path, (atime, time.time()))


def test_foop_removes_intd_then_mess_and_todo_removes_intd_then_todo(home):
    q = home / "queue"
    for p in (q / "intd" / "100", q / "mess" / str(100 % 23) / "100", q / "todo" / "100",
              q / "intd" / "200", q / "todo" / "200", q / "mess" / str(200 % 23) / "200"):
        touch(p)
    proc = start(home)
    assert ask(proc, b"foop/100\0") == b"+"
    assert not (q / "intd" / "100").exists() and not (q / "mess" / "8" / "100").exists()
    assert (q / "todo" / "100").exists()
    assert ask(proc, b"todo/200\0") == b"+"
    assert not (q / "intd" / "200").exists() and not (q / "todo" / "200").exists()
    assert (q / "mess" / str(200 % 23) / "200").exists()
    assert ask(proc, b"foop/999\0") == b"+"  # nothing there: ENOENT is success
    assert ask(proc, b"todo/999\0") == b"+"
    assert finish(proc) == 0


def test_malformed_requests_get_one_x_each(home):
    proc = start(home)
    for bad in (b"foop/\0", b"todo\0", b"abc\0", b"foop/12a\0", b"todo/-1\0",
                b"mess/123\0", b"todoX123\0", b"foop/" + b"1" * 95 + b"\0", b"\0"):
        assert ask(proc, bad) == b"x", bad
    assert ask(proc, b"foop/" + b"1" * 94 + b"\0") == b"+"  # exactly 100 bytes with the NUL
    assert finish(proc) == 0


def test_failed_unlink_answers_bang_and_stops(home):
    q = home / "queue"
    (q / "intd" / "300").mkdir()          # unlink() of a directory fails
    (q / "intd" / "300" / "f").write_bytes(b"")
    touch(q / "todo" / "300")
    proc = start(home)
    assert ask(proc, b"todo/300\0") == b"!"
    assert (q / "todo" / "300").exists()  # intd first: todo is left alone
    assert finish(proc) == 0


def test_pid_files_older_than_36_hours_go_before_the_first_request(home):
    pid = home / "queue" / "pid"
    touch(pid / "111.1.1", time.time() - OLD)
    touch(pid / "222.2.1", time.time() - 3600)
    proc = start(home)
    assert ask(proc, b"foop/1\0") == b"+"
    assert not (pid / "111.1.1").exists()
    assert (pid / "222.2.1").exists()
    assert finish(proc) == 0


def test_pid_cleanup_runs_again_after_thirty_more_requests(home):
    pid = home / "queue" / "pid"
    proc = start(home)
    assert ask(proc, b"foop/1\0") == b"+"
    touch(pid / "333.3.1", time.time() - OLD)
    for _ in range(29):
        assert ask(proc, b"foop/1\0") == b"+"
    assert (pid / "333.3.1").exists()     # 30 requests answered, no sweep yet
    assert ask(proc, b"foop/1\0") == b"+"
    assert ask(proc, b"foop/1\0") == b"+"
    assert not (pid / "333.3.1").exists()
    assert finish(proc) == 0


def test_partial_request_at_eof_is_dropped_and_exit_is_zero(home):
    r = run(home, "qmail-clean", input=b"foop/1\0foop/2")
    assert (r.returncode, r.stdout) == (0, b"+")


def test_unwritable_reply_exits_100(home):
    r, w = os.pipe()
    os.close(r)
    proc = subprocess.Popen([str(home / "bin" / "qmail-clean")], stdin=subprocess.PIPE, stdout=w,
                            env=dict(os.environ, QMAILHOME=str(home)))
    os.close(w)
    proc.stdin.write(b"foop/1\0")
    proc.stdin.close()
    assert proc.wait(timeout=30) == 100


def test_missing_queue_exits_111(home, tmp_path):
    r = run(home, "qmail-clean", input=b"foop/1\0", env={"QMAILHOME": str(tmp_path / "none")})
    assert (r.returncode, r.stdout) == (111, b"")
