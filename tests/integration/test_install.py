"""`qpy install` service directories under Debian's daemontools (svscan), end to end.

Root only (CI runs as root).  A privileged instance with its services (qmail-send,
qmail-smtpd, qmail-queued, qmail-pickup) linked into a scan directory, run by
Debian's svscan: SMTP mail reaches a real user's Maildir, written as that user;
the same directories run under runit's runsvdir; the logs are TAI64N-stamped; an ordinary account's `sendmail` works
while every service is down and the message is delivered, with that account as
the sender, once they are up again.
"""
from __future__ import annotations

import mailbox
import os
import pwd
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import ensure_qmail_accounts, need_program, need_root
from localusers import become

USER = "qpymailuser"
CODE = "import sys; from qpy.programs.qpy import main; sys.exit(main(sys.argv[1:]))"


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mail_user(base: Path) -> pwd.struct_passwd:
    """A real account whose home (with a Maildir) lies under ``base``."""
    home = base / "home"
    try:
        pwd.getpwnam(USER)
        subprocess.run(["usermod", "-d", str(home), USER], check=True, capture_output=True)
    except KeyError:
        subprocess.run(["useradd", "-M", "-d", str(home), "-s", "/usr/sbin/nologin", USER],
                       check=True, capture_output=True)
    pw = pwd.getpwnam(USER)
    for sub in ("", "Maildir", "Maildir/tmp", "Maildir/new", "Maildir/cur"):
        (home / sub).mkdir(exist_ok=True)
        os.chown(home / sub, pw.pw_uid, pw.pw_gid)
        os.chmod(home / sub, 0o755 if not sub else 0o700)
    return pw


def copies(maildir: Path, subject: bytes) -> list[Path]:
    """The files in maildir/new holding a message with this Subject line."""
    return [f for f in (maildir / "new").iterdir() if b"Subject: " + subject + b"\n" in f.read_bytes()]


def wait_until(check, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def smtp_up(port: int) -> bool:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
            return s.noop()[0] == 250
    except OSError:
        return False


class Scan:
    """svscan (daemontools) or runsvdir (runit) on a scan directory, in its own session."""

    def __init__(self, scan: Path, supervisor: str = "daemontools") -> None:
        self.scan = scan
        self.supervisor = supervisor
        tool = need_program("svscan" if supervisor == "daemontools" else "runsvdir")
        self.proc = subprocess.Popen([tool, str(scan)], cwd=scan,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True,
                                     env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin"})

    def stop(self, services: list[Path]) -> None:
        self.proc.send_signal(signal.SIGTERM if self.supervisor == "daemontools" else signal.SIGHUP)
        self.proc.wait(30)
        for s in services:
            if self.supervisor == "daemontools":
                subprocess.run([need_program("svc"), "-dx", str(s), str(s / "log")], capture_output=True)
            else:
                subprocess.run([need_program("sv"), "-w", "30", "exit", str(s), str(s / "log")],
                               capture_output=True)
        for s in services:
            for sup in (s / "supervise", s / "log" / "supervise"):
                wait_until(lambda: not _locked(sup), 60, f"{sup} to stop")


def _locked(supervise: Path) -> bool:
    """True while a supervise process holds the service's lock."""
    import fcntl
    try:
        fd = os.open(supervise / "lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


@pytest.fixture
def installed():
    need_root()
    need_program("svscan")
    need_program("multilog")
    ensure_qmail_accounts()
    base = Path(tempfile.mkdtemp(prefix="qpy-install-"))
    os.chmod(base, 0o755)
    port = free_port()
    r = subprocess.run([sys.executable, "-c", CODE, "install", "--home", str(base / "qmail"),
                        "--me", "inst.test", "--smtp-host", "127.0.0.1", "--smtp-port", str(port),
                        "--service-dir", str(base / "supervise"), "--link", str(base / "service")],
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    services = sorted((base / "supervise").iterdir())
    yield base, port, services
    subprocess.run(["pkill", "-f", str(base)], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("supervisor", ["daemontools", "runit"])
def test_services_run_under_a_supervisor_and_deliver(installed, supervisor):
    base, port, services = installed
    assert {s.name for s in services} >= {"qmail-send", "qmail-smtpd", "qmail-queued", "qmail-pickup"}
    pw = mail_user(base)
    maildir = Path(pw.pw_dir) / "Maildir"
    scan = Scan(base / "service", supervisor)
    try:
        wait_until(lambda: smtp_up(port), 60, "SMTP")
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
            s.sendmail("someone@example.test", [f"{USER}@inst.test"], b"Subject: via smtp\r\n\r\nhi\r\n")
        wait_until(lambda: copies(maildir, b"via smtp"), 60, "delivery")
        [path] = copies(maildir, b"via smtp")
        assert path.stat().st_uid == pw.pw_uid
        msg = mailbox.MaildirMessage(path.read_bytes())
        assert msg["Subject"] == "via smtp" and msg["Delivered-To"] == f"{USER}@inst.test"
        log = base / "supervise" / "qmail-send" / "log" / "main" / "current"
        wait_until(lambda: log.exists() and b"delivery 1: success" in log.read_bytes(), 30, "log")
        lines = log.read_bytes().splitlines()
        assert all(re.match(rb"^@4000[0-9a-f]{20} ", line) for line in lines)
        readable = subprocess.run([need_program("tai64nlocal")], input=log.read_bytes(),
                                  capture_output=True).stdout
        assert re.search(rb"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ new msg \d+$", readable, re.M)
    finally:
        scan.stop(services)


def test_ordinary_user_submits_while_stopped_and_is_delivered_after_start(installed):
    base, port, services = installed
    pw = mail_user(base)
    maildir = Path(pw.pw_dir) / "Maildir"
    home = base / "qmail"
    env = {"PATH": f"{home}/bin:/usr/bin:/bin", "QMAILHOME": str(home), "USER": USER,
           "LOGNAME": USER, "HOME": pw.pw_dir}
    r = subprocess.run([str(home / "bin" / "sendmail"), "-t"], input=(
        f"To: {USER}@inst.test\nSubject: while stopped\n\nqueued with the daemons down\n").encode(),
        capture_output=True, env=env, cwd="/", preexec_fn=become(USER), timeout=60)
    assert (r.returncode, r.stderr) == (0, b"")
    assert os.listdir(home / "queue" / "todo") == []
    assert len(os.listdir(home / "maildrop")) == 1
    scan = Scan(base / "service")
    try:
        wait_until(lambda: copies(maildir, b"while stopped"), 90, "delivery after start")
    finally:
        scan.stop(services)
    time.sleep(2)  # a duplicate would show up by now
    # Exactly one copy of this message (the account is shared with the other tests of
    # this file, so only this message's copies are counted).
    files = copies(maildir, b"while stopped")
    assert len(files) == 1, [f.read_bytes() for f in (maildir / "new").iterdir()]
    [path] = files
    data = path.read_bytes()
    msg = mailbox.MaildirMessage(data)
    assert msg["Return-Path"] == f"<{USER}@inst.test>"
    assert re.search(rb"^Received: \(qmail \d+ invoked by uid %d\);" % pw.pw_uid, data, re.M)
    assert msg["Subject"] == "while stopped"
    assert os.listdir(home / "maildrop") == []


def test_postmaster_mailer_daemon_and_root_have_an_alias_that_delivers(installed):
    """Before: no alias/.qmail-postmaster, so postmaster@ (RFC 5321 requires it) bounced."""
    base, port, services = installed
    alias = base / "qmail" / "alias"
    for role in ("postmaster", "mailer-daemon", "root"):
        assert (alias / f".qmail-{role}").read_bytes() == b"./Maildir/\n"
    maildir = alias / "Maildir"
    assert (maildir / "new").stat().st_uid == pwd.getpwnam("alias").pw_uid
    scan = Scan(base / "service")
    try:
        wait_until(lambda: smtp_up(port), 60, "SMTP")
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
            s.sendmail("someone@example.test", ["postmaster@inst.test"], b"Subject: to pm\r\n\r\nhi\r\n")
            s.sendmail("someone@example.test", ["root@inst.test"], b"Subject: to root\r\n\r\nhi\r\n")
        wait_until(lambda: copies(maildir, b"to pm") and copies(maildir, b"to root"), 60, "delivery")
    finally:
        scan.stop(services)


def test_install_postmaster_option_forwards_the_roles_and_keeps_edited_files(installed):
    base, _, _ = installed
    home = base / "qmail2"
    argv = [sys.executable, "-c", CODE, "install", "--home", str(home), "--me", "two.test",
            "--service-dir", str(base / "supervise2"), "--postmaster", "admin@example.org"]
    r = subprocess.run(argv, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert b"qpy: mail to postmaster, mailer-daemon, root goes to admin@example.org" in r.stdout
    for role in ("postmaster", "mailer-daemon", "root"):
        assert (home / "alias" / f".qmail-{role}").read_bytes() == b"&admin@example.org\n"
    (home / "alias" / ".qmail-root").write_bytes(b"&other@example.org\n")
    r = subprocess.run(argv[:-1] + ["new@example.org"], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (home / "alias" / ".qmail-root").read_bytes() == b"&other@example.org\n"
    assert (home / "alias" / ".qmail-postmaster").read_bytes() == b"&admin@example.org\n"
