"""qpy.spawn: the spawner driver, run as a real process with test hooks on real pipes."""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import need_root
from qpy import qmailq, queuedir

HOOKS = r'''
import os, sys
from qpy import spawn

class Hooks(spawn.Hooks):
    truncreport = int(os.environ.get("TRUNC", "0"))
    crash_code = 77
    workers = int(os.environ.get("WORKERS", "0"))

    def child(self, sender, recipient, at):
        mode = recipient[:at]
        if mode == b"state":      # what a delivery may leave behind, and what it inherits
            inheritable = count = 0
            for fd in [int(fd) for fd in os.listdir("/proc/self/fd") if int(fd) > 2]:
                try:
                    inheritable += os.get_inheritable(fd)
                    count += 1
                except OSError:
                    pass                  # the fd listdir held
            cwd = os.getcwd().encode()
            with open("/proc/self/status", "rb") as f:     # the kernel's signal dispositions
                sigs = b" ".join(line.split()[1] for line in f if line.startswith((b"SigIgn", b"SigCgt")))
            old = os.umask(0o027)         # all of these changed on purpose
            os.chdir("/")
            os.open(os.devnull, os.O_RDONLY)
            import signal
            signal.signal(signal.SIGALRM, lambda *a: None)
            signal.signal(signal.SIGPIPE, signal.SIG_IGN)
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            os.write(1, b"pid=%d cwd=%s umask=%o fds=%d inheritable=%d sigs=%s" % (
                os.getpid(), cwd, old, count, inheritable, sigs))
            return 5
        if mode == b"big":
            os.write(1, b"x" * 5000)
            return 0
        if mode == b"crash":
            os.kill(os.getpid(), 9)
        if mode == b"raise":
            raise RuntimeError("boom")
        if mode == b"nul":
            os.write(1, b"a\0b")
            return 0
        if mode.startswith(b"fifo="):
            with open(mode[5:], "rb") as f:
                f.read()
        head = os.read(0, 9)
        os.lseek(0, 0, 0)
        again = os.read(0, 9)
        os.write(1, b"%s|%s|%s|%s|" % (sender, recipient, head, b"seekable" if head == again else b"no"))
        os.write(2, b"stderr")
        extra = [fd for fd in os.listdir("/proc/self/fd") if int(fd) > 2]
        os.write(1, b"|fds=%d" % (len(extra) - 1))   # minus the fd listdir itself holds
        return 3

    def report(self, status, output):
        return b"K%d:" % status + output

os.chdir(sys.argv[1])
sys.exit(spawn.run(Hooks()))
'''


RAISE_LINE = HOOKS.splitlines().index('            raise RuntimeError("boom")') + 1
CRASHED = b"crashed: RuntimeError: boom (<string>:%d)\n" % RAISE_LINE   # python -c's file name


def queued(home: Path, body: bytes = b"Subject: x\n\nhello\n") -> bytes:
    """Queue a message with the real qmail-queue; return its path relative to queue/mess."""
    before = set(queuedir.scan_flat(str(home / "queue"), "todo"))
    assert qmailq.queue_message(body, b"s@example.org", [b"r@example.org"]) == ""
    (msgid,) = set(queuedir.scan_flat(str(home / "queue"), "todo")) - before
    return queuedir.mess_rel(msgid).encode()


def cmd(slot: int, messid: bytes, sender: bytes, recipient: bytes) -> bytes:
    return bytes([slot]) + messid + b"\0" + sender + b"\0" + recipient + b"\0"


def parse(data: bytes) -> list[tuple[int, bytes]]:
    """Split the report stream (after the limit byte) into (slot, text) records."""
    out = []
    i = 0
    while i < len(data):
        j = data.index(b"\0", i + 1)
        out.append((data[i], data[i + 1:j]))
        i = j + 1
    return out


def start(home: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOOKS, str(home / "queue" / "mess")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, **(env or {})))


def run_all(home: Path, commands: bytes, env: dict[str, str] | None = None) -> tuple[int, bytes, list]:
    p = start(home, env)
    out, err = p.communicate(commands, timeout=30)
    assert err == b""
    return p.returncode, out, parse(out[1:])


def read_record(p: subprocess.Popen, buf: bytearray, timeout: float = 20) -> tuple[int, bytes]:
    """Read one report from a running spawner (buf holds leftovers)."""
    deadline = time.monotonic() + timeout
    while True:
        if len(buf) >= 2:
            j = buf.find(b"\0", 1)
            if j != -1:
                rec = (buf[0], bytes(buf[1:j]))
                del buf[:j + 1]
                return rec
        left = deadline - time.monotonic()
        assert left > 0, "no report"
        r, _, _ = select.select([p.stdout], [], [], left)
        if r:
            chunk = os.read(p.stdout.fileno(), 4096)
            assert chunk, "spawner closed its output"
            buf += chunk


def test_limit_byte_then_one_report_per_command_and_exit_0(home):
    m = queued(home)
    code, out, reports = run_all(home, cmd(0, m, b"a@b", b"plain@c") + cmd(7, m, b"", b"plain@d"))
    assert code == 0
    assert out[0] == 120
    assert sorted(reports) == [
        (0, b"K3:a@b|plain@c|Received:|seekable|stderr|fds=0"),
        (7, b"K3:|plain@d|Received:|seekable|stderr|fds=0")]


def test_commands_split_across_writes_and_slot_byte_nul(home):
    m = queued(home)
    p = start(home)
    for byte in cmd(0, m, b"x@y", b"plain@z"):
        p.stdin.write(bytes([byte]))
        p.stdin.flush()
    out, _ = p.communicate(timeout=30)
    assert parse(out[1:]) == [(0, b"K3:x@y|plain@z|Received:|seekable|stderr|fds=0")]


def test_requests_answered_without_running_anything(home):
    m = queued(home)
    commands = (cmd(120, m, b"", b"plain@x")          # slot == limit
                + cmd(255, m, b"", b"plain@x")
                + cmd(1, b"1/a", b"", b"plain@x")
                + cmd(2, b"/1/2", b"", b"plain@x")
                + cmd(3, b"1/../2", b"", b"plain@x")
                + cmd(4, b"1" * 100, b"", b"plain@x")
                + cmd(5, b"", b"", b"plain@x")
                + cmd(10, b"1" * 99, b"", b"plain@x")           # 99 digits are not too long
                + cmd(6, m, b"", b"no-at-sign")
                + cmd(8, b"22/999999999", b"", b"plain@x")   # no such message
                + cmd(9, b"0", b"", b"plain@x"))              # a directory
    code, _, reports = run_all(home, commands)
    assert code == 0
    assert reports == [
        (120, b"ZInternal error: delnum too big. (#4.3.5)\n"),
        (255, b"ZInternal error: delnum too big. (#4.3.5)\n"),
        (1, b"DInternal error: messid has nonnumerics. (#5.3.5)\n"),
        (2, b"DInternal error: messid has nonnumerics. (#5.3.5)\n"),
        (3, b"DInternal error: messid has nonnumerics. (#5.3.5)\n"),
        (4, b"DInternal error: messid too long. (#5.3.5)\n"),
        (5, b"DInternal error: messid too short. (#5.3.5)\n"),
        (10, b"Zqmail-spawn unable to open message. (#4.3.0)\n"),
        (6, b"DSorry, address must include host name. (#5.1.3)\n"),
        (8, b"Zqmail-spawn unable to open message. (#4.3.0)\n"),
        (9, b"ZSorry, message has wrong type. (#4.3.5)\n")]


def test_message_not_owned_by_the_queue_owner_is_refused(home):
    need_root()
    m = queued(home)
    os.chown(home / "queue" / "mess" / m.decode(), 65534, -1)
    _, _, reports = run_all(home, cmd(0, m, b"", b"plain@x"))
    assert reports == [(0, b"ZSorry, message has wrong owner. (#4.3.5)\n")]


def test_busy_slot_and_reports_in_completion_order(home, tmp_path):
    m = queued(home)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    p = start(home)
    buf = bytearray()
    p.stdin.write(cmd(4, m, b"", b"fifo=" + str(fifo).encode() + b"@x"))
    p.stdin.flush()
    assert os.read(p.stdout.fileno(), 1) == bytes([120])
    p.stdin.write(cmd(4, m, b"", b"plain@x") + cmd(5, m, b"", b"plain@y"))
    p.stdin.flush()
    first = {read_record(p, buf), read_record(p, buf)}
    assert first == {(4, b"ZInternal error: delnum in use. (#4.3.5)\n"),
                     (5, b"K3:|plain@y|Received:|seekable|stderr|fds=0")}
    p.stdin.close()                  # EOF: the spawner must still wait for slot 4
    with open(fifo, "wb") as f:
        f.write(b"go")
    assert read_record(p, buf)[0] == 4
    assert p.wait(timeout=20) == 0


def test_truncated_output_crash_exception_and_nul(home):
    m = queued(home)
    commands = (cmd(0, m, b"", b"big@x") + cmd(1, m, b"", b"crash@x") + cmd(2, m, b"", b"raise@x")
                + cmd(3, m, b"", b"nul@x"))
    _, _, reports = run_all(home, commands, {"TRUNC": "3000"})
    got = dict(reports)
    assert got[0] == b"K0:" + b"x" * 2966 + b"\nError report too long, sorry.\n"
    assert got[1] == b"K-9:"
    assert got[2] == b"K77:" + CRASHED
    assert got[3] == b"K0:a"      # the driver cuts a report at a NUL


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_child_that_raises_writes_one_line_naming_it_and_exits_crash_code(home, workers):
    m = queued(home)
    _, _, reports = run_all(home, cmd(0, m, b"", b"raise@x"), {"WORKERS": workers})
    assert reports == [(0, b"K77:" + CRASHED)]     # type, message and file:line on fd 2


def test_untruncated_output_kept(home):
    m = queued(home)
    _, _, reports = run_all(home, cmd(0, m, b"", b"big@x"))
    assert reports == [(0, b"K0:" + b"x" * 5000)]


def test_eof_without_commands_exits_0_after_the_limit_byte(home):
    code, out, reports = run_all(home, b"")
    assert (code, out, reports) == (0, bytes([120]), [])


@pytest.mark.parametrize("junk", [b"\x05", b"\x05" + b"1/2\0", b"\x05" + b"1/2\0s\0"])
def test_incomplete_command_at_eof_is_dropped(home, junk):
    code, out, _ = run_all(home, junk)
    assert (code, out) == (0, bytes([120]))


def test_workers_run_commands_like_forked_children(home):
    m = queued(home)
    commands = (cmd(0, m, b"a@b", b"plain@c") + cmd(1, m, b"", b"big@x") + cmd(2, m, b"", b"raise@x")
                + cmd(3, m, b"", b"nul@x"))
    forked = run_all(home, commands, {"TRUNC": "3000"})[2]
    pooled = run_all(home, commands, {"TRUNC": "3000", "WORKERS": "2"})[2]
    # a worker keeps one extra fd, its close-on-exec socket to the spawner
    assert sorted(pooled) == sorted((slot, text.replace(b"fds=0", b"fds=1")) for slot, text in forked)


def test_worker_state_is_reset_between_deliveries_and_a_crash_is_reported(home):
    m = queued(home)
    p = start(home, {"WORKERS": "1"})
    buf = bytearray()
    assert os.read(p.stdout.fileno(), 1) == bytes([120])
    reports = []
    for slot, mode in enumerate([b"state", b"state", b"crash", b"state"]):
        p.stdin.write(cmd(slot, m, b"", mode + b"@x"))
        p.stdin.flush()
        reports.append(read_record(p, buf))     # one at a time: the same worker each time
    p.stdin.close()
    assert p.wait(timeout=20) == 0
    first, second, crashed, third = (text for _, text in reports)
    assert first.startswith(b"K5:pid=") and b"fds=1 inheritable=0" in first   # only its socket
    assert b" cwd=%s " % str(home / "queue" / "mess").encode() in first
    assert second == first          # same worker, and cwd/umask/fds/signals were put back
    ignored, caught = (int(mask, 16) for mask in first.split(b" sigs=")[1].split())
    for sig in (signal.SIGALRM, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD, signal.SIGTERM):
        assert not (ignored | caught) & 1 << (sig - 1)     # default, as after an exec
    assert crashed == b"K-9:"       # the worker died: reported like a killed child
    assert third.startswith(b"K5:pid=") and third != first   # a new worker took over
    assert third.split(b" ", 1)[1] == first.split(b" ", 1)[1]
