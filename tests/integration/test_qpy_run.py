"""`qpy run` as a user starts it: a subprocess on an ephemeral port, mail in, Ctrl-C out."""
from __future__ import annotations

import mailbox
import os
import re
import select
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path

CODE = "import sys; from qpy.programs.qpy import main; sys.exit(main(sys.argv[1:]))"


class QpyRun:
    """A running ``qpy run`` with its output collected."""

    def __init__(self, home: Path, *extra: str) -> None:
        env = dict(os.environ)
        env.pop("QMAILHOME", None)
        self.proc = subprocess.Popen([sys.executable, "-c", CODE, "run", "--home", str(home),
                                      "--port", "0", "--user", "alice", *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
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
