"""`qpy run` as a user starts it: a subprocess on an ephemeral port, mail in, Ctrl-C out.

qpy run refuses to run a single-user instance as root, so as root (CI) ``QpyRun`` runs it
as an ordinary account (localusers.SECOND_USER, or ``user``) that owns the instance.
"""
from __future__ import annotations

import mailbox
import os
import pwd
import re
import select
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from qpy import hier

CODE = "import sys; from qpy.programs.qpy import main; sys.exit(main(sys.argv[1:]))"


def owned_by(home: Path, user: str) -> dict:
    """As root: ``home`` made (if missing) and owned by ``user``, its ancestors searchable
    (pytest's base directory is 0700); Popen keywords that run a program as ``user``."""
    from localusers import become, ensure_user
    pw = ensure_user(user)
    home.mkdir(parents=True, exist_ok=True)
    if home.stat().st_uid != pw.pw_uid:
        for path in (home, *home.rglob("*")):
            os.lchown(path, pw.pw_uid, pw.pw_gid)
    for parent in home.parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)
    return {"preexec_fn": become(user), "cwd": "/"}


class QpyRun:
    """A running ``qpy run`` with its output collected (as root: run as ``user``)."""

    def __init__(self, home: Path, *extra: str, user: str | None = None,
                 as_root: bool = False) -> None:
        env = dict(os.environ)
        env.pop("QMAILHOME", None)
        kw: dict = {}
        if os.geteuid() == 0 and not as_root:
            from localusers import SECOND_USER
            kw = owned_by(home, user or SECOND_USER)
        self.proc = subprocess.Popen([sys.executable, "-c", CODE, "run", "--home", str(home),
                                      "--port", "0", "--user", "alice", *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                     **kw)
        self.output = b""
        m = self.wait_for(rb"qpy: SMTP on 127\.0\.0\.1:(\d+)")
        self.port = int(m.group(1))

    def wait_for(self, pattern: bytes, timeout: float = 30) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.output)
            if m:
                return m
            left = deadline - time.monotonic()
            assert left > 0, f"timeout waiting for {pattern!r}; output:\n{self.output.decode()}"
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                assert chunk or self.proc.poll() is None, self.output.decode()
                self.output += chunk

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            rest, _ = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self.output += rest
        return self.proc.returncode


def send(port: int, n: int, tag: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        for i in range(n):
            s.sendmail("sender@example.test", ["alice@localhost"],
                       f"Subject: {tag} {i}\r\n\r\nbody {tag} {i}\r\n".encode())


def subjects(home: Path) -> list[str]:
    box = mailbox.Maildir(str(home / "users" / "alice" / "Maildir"), factory=None, create=False)
    return sorted(m["Subject"] for m in box)


def wait_subjects(home: Path, count: int, timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = subjects(home)
        if len(got) >= count:
            return got
        time.sleep(0.1)
    return subjects(home)


def test_run_accepts_smtp_and_delivers_to_the_users_maildir(tmp_path):
    home = tmp_path / "qpy-home"
    run = QpyRun(home)
    try:
        assert b"mail for alice@localhost is delivered to" in run.output
        send(run.port, 3, "hello")
        assert wait_subjects(home, 3) == ["hello 0", "hello 1", "hello 2"]
        with smtplib.SMTP("127.0.0.1", run.port, timeout=30) as s:  # role accounts reach alice
            s.sendmail("x@example.test", ["postmaster@localhost"], b"Subject: role\r\n\r\nhi\r\n")
        assert "role" in wait_subjects(home, 4)
        # (the Maildir lists in hash order: pick one of the three from sender@ by subject)
        msg = next(m for m in mailbox.Maildir(str(home / "users" / "alice" / "Maildir"), create=False)
                   if m["Subject"] == "hello 0")
        assert msg["Return-Path"] == "<sender@example.test>"
        assert msg["Delivered-To"] == "alice@localhost"
        run.wait_for(rb"delivery \d+: success")
    finally:
        code = run.stop()
    assert code == 0
    assert b"send: status: exiting" in run.output
    assert b"delivery 1: success" in (home / "log" / "current").read_bytes()


def test_sigint_right_after_accepting_loses_nothing(tmp_path):
    home = tmp_path / "qpy-home"
    run = QpyRun(home)
    send(run.port, 20, "burst")
    assert run.stop() == 0          # every 250 above means the message is on disk
    again = QpyRun(home)            # a restart delivers whatever was still queued
    def status() -> bytes:
        return subprocess.run([sys.executable, "-c", CODE, "status", "--home", str(home)],
                              capture_output=True).stdout
    try:
        got = wait_subjects(home, 20)
        deadline = time.monotonic() + 30   # and completes every message (the queue empties)
        while b"messages in queue: 0\n" not in status() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        assert again.stop() == 0
    assert got == sorted(f"burst {i}" for i in range(20))
    final = status()
    assert b"messages in queue: 0" in final and b"qmail-send: not running" in final


def test_local_names_from_sendmail_reach_the_user_not_a_bounce(tmp_path):
    """cron's, logwatch's and mail(1)'s calls: bare names and @localhost stay local."""
    home = tmp_path / "qpy-home"
    run = QpyRun(home)
    env = {k: v for k, v in os.environ.items() if k not in ("QMAILHOME", "USER", "LOGNAME")}
    env.update(QMAILHOME=str(home), USER="cron")

    def sendmail(args: list[str], message: bytes) -> None:
        r = subprocess.run([str(home / "bin" / "sendmail"), *args], input=message,
                           capture_output=True, env=env, timeout=60)
        assert (r.returncode, r.stderr) == (0, b""), args
    try:
        sendmail(["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"], b"Subject: cron\n\nout\n")
        sendmail(["-t"], b"To: alice@localhost\nSubject: logwatch\n\nreport\n")
        sendmail(["-t"], b"To: alice\nSubject: bare\n\nhi\n")
        sendmail(["alice"], b"Subject: mail\n\nhi\n")
        got = wait_subjects(home, 4)
        run.wait_for(rb"end msg \d+\n(.|\n)*end msg \d+\n(.|\n)*end msg \d+\n(.|\n)*end msg \d+")
    finally:
        assert run.stop() == 0
    assert got == ["bare", "cron", "logwatch", "mail"]
    log = (home / "log" / "current").read_bytes()
    assert b"localhost.localhost" not in log and b"bounce msg" not in log
    box = mailbox.Maildir(str(home / "users" / "alice" / "Maildir"), create=False)
    cron = next(m for m in box if m["Subject"] == "cron")
    assert cron["Delivered-To"] == "alice@localhost" and "<cron@localhost>" in cron["From"]
    assert cron.get_payload() == "out\n"


# ------------------------------------------------------------------ the runner's own faults
# (issue 15 item 5): limits per client, a log that cannot be written, rotation, no orphans,
# root, other users' submissions, privileged instances.


def children(pid: int) -> list[int]:
    """The pids of a process's children (/proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(x) for x in (task / "children").read_text().split()]
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def all_gone(pids: list[int], timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise LookupError(pid)


def child_running(pid: int, program: str) -> int:
    """The child of ``pid`` that runs bin/<program>."""
    for kid in children(pid):
        if any(arg.endswith(f"/bin/{program}") for arg in
               Path(f"/proc/{kid}/cmdline").read_bytes().decode().split("\0")):
            return kid
    raise LookupError(program)


def greeting(source: str, port: int) -> tuple[socket.socket, bytes]:
    """Connect from loopback address ``source``; the first line the server sends."""
    s = socket.socket()
    s.settimeout(30)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    line = b""
    while not line.endswith(b"\n"):
        chunk = s.recv(1000)
        if not chunk:
            break
        line += chunk
    return s, line


def qpy_run_now(home: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """``qpy run`` as the caller (root), for runs that must refuse at once."""
    env = {k: v for k, v in os.environ.items() if k != "QMAILHOME"}
    return subprocess.run([sys.executable, "-c", CODE, "run", "--home", str(home), "--port", "0"],
                          capture_output=True, timeout=timeout, env=env)


def test_one_address_gets_at_most_a_fifth_of_the_smtp_slots(tmp_path):
    run = QpyRun(tmp_path / "qpy-home")
    held = []
    try:
        for _ in range(20):
            s, line = greeting("127.0.0.1", run.port)
            held.append(s)
            assert line.startswith(b"220 ")
        s, line = greeting("127.0.0.1", run.port)
        held.append(s)
        assert line == b"421 too many connections from your address (#4.7.0)\r\n"
        s, line = greeting("127.0.0.2", run.port)   # another client is still served
        held.append(s)
        assert line.startswith(b"220 ")
    finally:
        for s in held:
            s.close()
        assert run.stop() == 0
    assert b"tcpserver: busy 127.0.0.1 20/20" in run.output


def test_a_log_on_a_full_device_is_reported_once_and_mail_still_flows(tmp_path):
    home = tmp_path / "qpy-home"
    (home / "log").mkdir(parents=True)
    (home / "log" / "current").symlink_to("/dev/full")   # every write: ENOSPC
    run = QpyRun(home)
    try:
        send(run.port, 3, "full")
        assert wait_subjects(home, 3) == ["full 0", "full 1", "full 2"]
        run.wait_for(rb"delivery \d+: success")
        (home / "log" / "current").unlink()   # the next retry creates a file that works
        run.wait_for(rb"writable again", timeout=30)
        send(run.port, 1, "after")
        assert "after 0" in wait_subjects(home, 4)
        run.wait_for(rb"(delivery \d+: success(.|\n)*){4}")
    finally:
        assert run.stop() == 0
    assert run.output.count(b"unable to write") == 1
    assert re.search(rb"qpy: unable to write \S+/log/current: No space left on device; still serving",
                     run.output)
    log = (home / "log" / "current").read_bytes()
    assert b"writable again after" in log
    assert log.count(b": success") >= 4        # lines from while it failed were kept, then written


def test_a_log_on_a_full_file_system_recovers_when_space_returns(tmp_path):
    from conftest import need_root
    from localusers import SECOND_USER, ensure_user
    need_root()
    pw = ensure_user(SECOND_USER)
    home = tmp_path / "qpy-home"
    log = home / "log"
    log.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=64k,mode=755,uid={pw.pw_uid}", "qpylog",
                    str(log)], check=True)
    try:
        fd = os.open(log / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            while os.write(fd, b"x" * 4096):
                pass
        except OSError:
            pass
        os.close(fd)
        run = QpyRun(home)
        try:
            send(run.port, 2, "tmpfs")
            assert wait_subjects(home, 2) == ["tmpfs 0", "tmpfs 1"]
            run.wait_for(rb"No space left on device")
            (log / "filler").unlink()
            run.wait_for(rb"writable again", timeout=30)
        finally:
            assert run.stop() == 0
        assert run.output.count(b"unable to write") == 1
        assert b"writable again" in (log / "current").read_bytes()
    finally:
        subprocess.run(["umount", "-l", str(log)])


def test_the_log_rotates_as_multilog_does(tmp_path):
    home = tmp_path / "qpy-home"
    run = QpyRun(home, "--log-size", "2000", "--log-files", "3")
    try:
        send(run.port, 20, "rotate")
        assert len(wait_subjects(home, 20)) == 20
        run.wait_for(rb"(delivery \d+: success(.|\n)*){20}")
    finally:
        assert run.stop() == 0
    logdir = home / "log"
    old = sorted(p for p in logdir.iterdir() if p.name != "current")
    assert len(old) == 3
    for path in [*old, logdir / "current"]:
        data = path.read_bytes()
        assert 0 < len(data) <= 2000 and data.endswith(b"\n"), path
    for path in old:
        assert re.fullmatch(r"@4000[0-9a-f]{20}\.s", path.name)
        assert path.stat().st_mode & 0o777 == 0o744          # marked done, as multilog does
    assert b"send: status: exiting" in (logdir / "current").read_bytes()
    stamps = subprocess.run(["tai64nlocal"], input=b"".join(p.name.encode() + b"\n" for p in old),
                            capture_output=True).stdout if os.path.exists("/usr/bin/tai64nlocal") else b""
    assert not stamps or all(re.match(rb"\d{4}-\d\d-\d\d ", line) for line in stamps.splitlines())


def test_a_killed_runner_takes_its_children_with_it(tmp_path):
    home = tmp_path / "qpy-home"
    run = QpyRun(home)
    kids = children(run.proc.pid)
    assert len(kids) == 4           # qmail-queued, qmail-pickup, qmail-start, tcpserver
    run.proc.kill()
    run.proc.wait()
    assert all_gone(kids), [p for p in kids if alive(p)]
    again = QpyRun(home)            # nothing left holding the queue's locks
    assert again.stop() == 0


def test_an_exception_in_the_runner_stops_and_reaps_every_child(home, monkeypatch):
    import io
    from qpy.runner import Runner
    runner = Runner(str(home), "127.0.0.1", 0, "localhost", out=io.StringIO())

    def boom(name: str, lines: list[bytes]) -> None:
        raise RuntimeError("a bug in the log relay")
    monkeypatch.setattr(runner, "emit_lines", boom)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(RuntimeError):
            runner.run()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert len(runner.children) == 4
    for proc in runner.children.values():
        assert proc.returncode is not None
    groups = [proc.pid for proc in runner.children.values()]
    deadline = time.monotonic() + 30
    while any(_group_exists(g) for g in groups) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_group_exists(g) for g in groups)


def _group_exists(pgid: int) -> bool:
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def test_root_refuses_to_make_or_run_a_single_user_instance_as_root(tmp_path):
    from conftest import make_instance, need_root
    need_root()
    r = qpy_run_now(tmp_path / "new", timeout=30)
    assert r.returncode == 100
    assert r.stderr.startswith(b"qpy: fatal: refusing to create a single-user instance as root")
    assert r.stderr.count(b"\n") == 1 and not (tmp_path / "new").exists()
    make_instance(tmp_path / "roots", b"localhost")
    r = qpy_run_now(tmp_path / "roots", timeout=30)
    assert r.returncode == 100
    assert r.stderr.startswith(b"qpy: fatal: refusing to run as root: this single-user instance")
    assert r.stderr.count(b"\n") == 1


def test_root_runs_an_ordinary_users_instance_as_that_user(tmp_path):
    from conftest import need_root
    from localusers import SECOND_USER, ensure_user
    need_root()
    uid = ensure_user(SECOND_USER).pw_uid
    home = tmp_path / "qpy-home"
    assert QpyRun(home).stop() == 0          # made by the user
    run = QpyRun(home, as_root=True)
    try:
        assert f"qpy: running as {SECOND_USER}, the owner of {home}/queue".encode() in run.output
        pids = [run.proc.pid, *children(run.proc.pid)]
        assert {uid_of(p) for p in pids} == {uid}
        send(run.port, 1, "as user")
        assert wait_subjects(home, 1) == ["as user 0"]
    finally:
        assert run.stop() == 0


def test_another_users_submission_to_a_single_user_instance_is_delivered(tmp_path):
    """Before: qmail-queue exited 0 and the message lay in maildrop/ (no pickup ran)."""
    from conftest import need_root
    from localusers import home_user, submit
    need_root()
    with home_user("run") as owner:
        home = Path(owner.pw_dir) / "inst"
        run = QpyRun(home, user=owner.pw_name)
        try:
            code, _, err = submit(home, "nobody", b"Subject: from nobody\n\nhi\n",
                                  b"Fnobody@localhost\0Talice@localhost\0\0")
            assert (code, err) == (0, b"")
            got = wait_subjects(home, 1)
        finally:
            assert run.stop() == 0
        assert got == ["from nobody"]
        assert os.listdir(home / "maildrop") == []
        [msg] = list(mailbox.Maildir(str(home / "users" / "alice" / "Maildir"), create=False))
        nobody = pwd.getpwnam("nobody").pw_uid
        assert re.search(rf"^\(qmail \d+ invoked by uid {nobody}\);", msg["Received"], re.M)


@pytest.fixture
def priv_instance(qmail_accounts):
    """A privileged instance (root, the qmail accounts) in a directory they can reach."""
    base = Path(tempfile.mkdtemp(prefix="qpy-prun-"))
    base.chmod(0o755)
    home = base / "qmail"
    hier.install(str(home), b"prun.test", True)
    yield home
    shutil.rmtree(base, ignore_errors=True)


def test_root_runs_a_privileged_instance_with_every_part_it_needs(priv_instance):
    """Before: qmail-smtpd (qmaild) answered 250 and the message lay in maildrop/ forever."""
    from localusers import home_user
    home = priv_instance
    with home_user("prun", maildir=True) as pw:
        run = QpyRun(home, as_root=True)
        kids: list[int] = []
        try:
            assert b"qpy: privileged mode: SMTP runs as qmaild" in run.output
            with smtplib.SMTP("127.0.0.1", run.port, timeout=30) as s:
                s.sendmail("x@example.test", [f"{pw.pw_name}@prun.test"], b"Subject: priv\r\n\r\nhi\r\n")
            new = Path(pw.pw_dir) / "Maildir" / "new"
            deadline = time.monotonic() + 60
            while not list(new.iterdir()) and time.monotonic() < deadline:
                time.sleep(0.1)
            [path] = list(new.iterdir())
            assert path.stat().st_uid == pw.pw_uid
            kids = children(run.proc.pid)
            assert uid_of(child_running(run.proc.pid, "tcpserver")) == pwd.getpwnam("qmaild").pw_uid
            assert uid_of(child_running(run.proc.pid, "qmail-start")) == pwd.getpwnam("qmails").pw_uid
        finally:
            run.proc.kill()             # even children that changed ids go with it
            run.proc.wait()
        assert all_gone(kids), [p for p in kids if alive(p)]


def test_a_privileged_instance_its_accounts_cannot_reach_is_refused_at_start(qmail_accounts,
                                                                             tmp_path):
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    home = closed / "qmail"
    hier.install(str(home), b"closed.test", True)
    r = qpy_run_now(home, timeout=30)
    assert r.returncode == 111
    assert r.stderr == (f"qpy: fatal: qmaild, qmailq, qmails, qmailr, alias cannot read "
                        f"{home}/control/me: a directory on the way is closed to them (a 0700"
                        f" home?); move the instance or open the path (chmod o+x)\n").encode()


def test_an_ordinary_user_is_told_a_privileged_instance_needs_root(priv_instance):
    from localusers import become
    env = {k: v for k, v in os.environ.items() if k != "QMAILHOME"}
    r = subprocess.run([sys.executable, "-c", CODE, "run", "--home", str(priv_instance),
                        "--port", "0"], capture_output=True, timeout=30, env=env, cwd="/",
                       preexec_fn=become("nobody"))
    assert (r.returncode, r.stderr) == (100, f"qpy: fatal: {priv_instance} is a privileged instance:"
                                             f" run qpy run as root, or run its services (qpy"
                                             f" install)\n".encode())
