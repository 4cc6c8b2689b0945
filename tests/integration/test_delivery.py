"""End to end: qmail-queue → qmail-start (send, lspawn, rspawn, clean) → qmail-local → mailbox.

A temporary instance with users/assign entries (compiled by qmail-newu) whose
homes hold a Maildir, and .qmail files in the alias directory.  Mail is read
back with Python's mailbox module.
"""
from __future__ import annotations

import email
import email.policy
import mailbox
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import control, need_root, run
from smtpsink import SMTPSink
from qpy import qmailq, queuedir

MSG = b"From: joe@test.example\nSubject: hello\n\nline one\nline two\n"


class Daemons:
    """qmail-start with its log (via an optional logger) in a file, in its own session."""

    def __init__(self, home: Path, work: Path, delivery: str = "./Maildir/",
                 logger: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.home = home
        self.logpath = work / "send.log"
        with open(self.logpath, "ab") as logf:
            self.proc = subprocess.Popen(
                [str(home / "bin" / "qmail-start"), delivery, *(logger or [])],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.DEVNULL,
                start_new_session=True, env=dict(os.environ, QMAILHOME=str(home), **(env or {})))

    def log(self) -> list[str]:
        return self.logpath.read_bytes().decode("latin-1").splitlines()

    def wait_log(self, pattern: str, count: int = 1, timeout: float = 60) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.log() if re.search(pattern, line)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"waiting for {count}× {pattern!r}; exit {self.proc.poll()}; log:\n"
                                     + "\n".join(self.log()))
            time.sleep(0.02)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        self.proc.wait(timeout=60)


@pytest.fixture
def daemons(home, tmp_path):
    started: list[Daemons] = []

    def start(**kw) -> Daemons:
        work = tmp_path / f"daemons{len(started)}"
        work.mkdir()
        d = Daemons(home, work, **kw)
        started.append(d)
        return d
    yield start
    for d in started:
        d.kill()


def add_user(home: Path, name: str, dot_qmail: str | None = None, uid: int | None = None,
             gid: int | None = None) -> Path:
    """A users/assign entry for ``name`` with a home holding Maildir/ (owned by uid)."""
    base = home.parent / "homes"
    base.mkdir(exist_ok=True)
    os.chmod(base, 0o755)
    uid = os.getuid() if uid is None else uid
    gid = os.getgid() if gid is None else gid
    user_home = base / name
    for d in ("", "Maildir", "Maildir/tmp", "Maildir/new", "Maildir/cur"):
        (user_home / d).mkdir(exist_ok=True)
        os.chmod(user_home / d, 0o755 if not d else 0o700)
        if os.geteuid() == 0:
            os.chown(user_home / d, uid, gid)
    if dot_qmail is not None:
        (user_home / ".qmail").write_text(dot_qmail)
        os.chmod(user_home / ".qmail", 0o644)
    assign = home / "users" / "assign"
    lines = assign.read_text().replace(".\n", "") if assign.exists() else ""
    lines += f"={name}:{name}:{uid}:{gid}:{user_home}:::\n.\n"
    assign.write_text(lines)
    r = run(home, "qmail-newu")
    assert r.returncode == 0, r.stderr
    return user_home


def maildir(user_home: Path) -> list[mailbox.MaildirMessage]:
    return list(mailbox.Maildir(str(user_home / "Maildir"), create=False))


def queue(message: bytes, sender: bytes, rcpts: list[bytes]) -> None:
    assert qmailq.queue_message(message, sender, rcpts) == ""


def queue_empty(home: Path) -> bool:
    return queuedir.scan_split(str(home / "queue"), "mess") == []


def wait_for(pred, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_maildir_delivery_exactly_once_with_return_path_and_delivered_to(home, daemons):
    joe = add_user(home, "joe")
    d = daemons()
    queue(MSG, b"sender@remote.example", [b"joe@test.example"])
    d.wait_log(r"^end msg \d+$")
    wait_for(lambda: queue_empty(home))
    assert d.stop() == 0
    (m,) = maildir(joe)
    assert m["Return-Path"] == "<sender@remote.example>"
    assert m["Delivered-To"] == "joe@test.example"
    assert m["Subject"] == "hello"
    raw = m.as_bytes()
    assert raw.startswith(b"Return-Path: <sender@remote.example>\nDelivered-To: joe@test.example\n"
                          b"Received: (qmail ")
    assert raw.endswith(MSG)
    log = d.log()
    assert log[0] == "status: local 0/10 remote 0/20"
    assert any(re.fullmatch(r"delivery 1: success: did_1\+0\+0/", x) for x in log)
    assert log[-1] == "status: exiting"


def test_mbox_through_an_alias_dot_qmail_and_a_logger(home, daemons):
    (home / "alias" / ".qmail-box").write_text("./box.mbox\n")
    os.chmod(home / "alias" / ".qmail-box", 0o644)
    d = daemons(logger=["sed", "-u", "s/^/LOG /"])
    queue(MSG, b"sender@remote.example", [b"box@test.example"])
    d.wait_log(r"^LOG end msg \d+$")
    assert d.stop() == 0
    box = mailbox.mbox(str(home / "alias" / "box.mbox"), create=False)
    (m,) = list(box)
    assert m["Return-Path"] == "<sender@remote.example>"
    assert m["Delivered-To"] == "box@test.example"
    assert m.get_payload() == "line one\nline two\n"
    wait_for(lambda: d.log()[-1:] == ["LOG status: exiting"])


def test_unknown_user_bounces_to_the_senders_maildir(home, daemons):
    control(home, "bounceformat", "qsbmf\n")        # qmail's plain text bounce
    joe = add_user(home, "joe")
    d = daemons()
    queue(MSG, b"joe@test.example", [b"nosuchuser@test.example", b"joe@test.example"])
    d.wait_log(r"^bounce msg \d+ qp \d+$")
    d.wait_log(r"^end msg", count=2)
    assert d.stop() == 0
    msgs = maildir(joe)
    assert len(msgs) == 2
    (b,) = [m for m in msgs if m["Subject"] == "failure notice"]
    assert b["Return-Path"] == "<>"
    assert b["From"] == "MAILER-DAEMON@test.example" and b["To"] == "joe@test.example"
    body = b.get_payload()
    assert body.startswith("Hi. This is the qmail-send program at test.example.\n"
                           "I'm afraid I wasn't able to deliver your message to the following "
                           "addresses.\nThis is a permanent error; I've given up. Sorry it didn't "
                           "work out.\n\n<nosuchuser@test.example>:\n")
    assert "\n--- Below this line is a copy of the message.\n\nReturn-Path: <joe@test.example>\n" \
        in body
    assert body.endswith(MSG.decode())


REJECT = (b"550-5.1.1 The email account that you tried to reach does not exist.\r\n"
          b"550 5.1.1 Please try double-checking the recipient's email address.")


def test_dsn_bounce_of_a_local_and_a_remote_failure_reaches_the_senders_maildir(home, daemons):
    joe = add_user(home, "joe")
    with SMTPSink(replies={"RCPT": lambda arg: REJECT if b"bob@" in arg else None}) as sink:
        control(home, "smtproutes", f"remote.example:127.0.0.1:{sink.port}\n")
        d = daemons()
        queue(MSG, b"joe@test.example", [b"nosuchuser@test.example", b"bob@remote.example",
                                         b"joe@test.example"])
        d.wait_log(r"^bounce msg \d+ qp \d+$")
        d.wait_log(r"^end msg", count=2)
        assert d.stop() == 0
    raw = {m["Subject"]: m for m in mailbox.Maildir(str(joe / "Maildir"), create=False)}
    b = email.message_from_bytes(raw["failure notice"].as_bytes(), policy=email.policy.default)
    assert b["Return-Path"] == "<>" and b["To"] == "joe@test.example"
    assert b.get_content_type() == "multipart/report"
    assert b.get_param("report-type") == "delivery-status"
    text, report, original = b.iter_parts()
    qsbmf = text.get_content()
    assert qsbmf.startswith("Hi. This is the qmail-send program at test.example.\n"
                            "I'm afraid I wasn't able to deliver your message to the following "
                            "addresses.\nThis is a permanent error; I've given up. Sorry it "
                            "didn't work out.\n\n<")
    assert "<nosuchuser@test.example>:\nSorry, no mailbox here by that name. (#5.1.1)\n\n" in qsbmf
    assert ("<bob@remote.example>:\n127.0.0.1 does not like recipient.\nRemote host said: "
            "550-5.1.1 The email account that you tried to reach does not exist.\n"
            "550 5.1.1 Please try double-checking the recipient's email address.\n"
            "Giving up on 127.0.0.1.\n\n") in qsbmf
    assert qsbmf.endswith("\n--- Below this line is a copy of the message.\n")
    assert report.get_content_type() == "message/delivery-status"
    per_message, *groups = report.get_payload()
    assert per_message["Reporting-MTA"] == "dns; test.example"
    assert per_message["Arrival-Date"].endswith(" -0000")
    found = {g["Final-Recipient"]: g for g in groups}
    local = found["rfc822; nosuchuser@test.example"]
    assert (local["Action"], local["Status"], local["Remote-MTA"]) == ("failed", "5.1.1", None)
    assert local["Diagnostic-Code"] == "x-unix; Sorry, no mailbox here by that name. (#5.1.1)"
    remote = found["rfc822; bob@remote.example"]
    assert (remote["Action"], remote["Status"]) == ("failed", "5.1.1")
    assert remote["Remote-MTA"] == "dns; 127.0.0.1"
    assert remote["Diagnostic-Code"] == (
        "smtp; 550-5.1.1 The email account that you tried to reach does not exist. "
        "550 5.1.1 Please try double-checking the recipient's email address.")
    assert len(groups) == 2 and all(g["Last-Attempt-Date"] for g in groups)
    assert original.get_content_type() == "message/rfc822"
    (inner,) = original.get_payload()
    assert inner["Return-Path"] == "<joe@test.example>" and inner["Subject"] == "hello"
    assert inner.as_bytes().endswith(MSG)


def test_temporary_failure_is_retried_after_alarm(home, daemons):
    flag = home.parent / "flag"
    pat = add_user(home, "pat", f"|test -f {flag} || exit 111\n./Maildir/\n")
    d = daemons()
    queue(MSG, b"sender@remote.example", [b"pat@test.example"])
    d.wait_log(r"^delivery 1: deferral: ")
    assert maildir(pat) == []
    flag.write_bytes(b"")
    d.signal(signal.SIGALRM)
    d.wait_log(r"^delivery 2: success: ")
    d.wait_log(r"^end msg")
    assert d.stop() == 0
    assert len(maildir(pat)) == 1


def test_expired_message_bounces_with_the_lifetime_line(home, daemons):
    control(home, "queuelifetime", "0\n")
    joe = add_user(home, "joe")
    add_user(home, "pat", "|exit 111\n")
    d = daemons()
    d.wait_log(r"^status:")  # signal handlers are in place
    queue(MSG, b"joe@test.example", [b"pat@test.example"])
    deadline = time.monotonic() + 60
    while not any(line.startswith("bounce msg") for line in d.log()):
        assert time.monotonic() < deadline and d.proc.poll() is None
        d.signal(signal.SIGALRM)  # first try may still be in the second of its birth
        time.sleep(0.3)
    d.wait_log(r"^end msg", count=2)
    assert d.stop() == 0
    (b,) = maildir(joe)
    dsn = email.message_from_bytes(b.as_bytes(), policy=email.policy.default)
    text, report, _ = dsn.iter_parts()
    assert "<pat@test.example>:\n" in text.get_content()
    assert "I'm not going to try again; this message has been in the queue too long.\n" \
        in text.get_content()
    (group,) = report.get_payload()[1:]
    assert group["Status"] == "5.4.7"       # delivery time expired


def test_exec_mode_behaves_the_same(home, daemons):
    joe = add_user(home, "joe")
    d = daemons(env={"QPY_EXEC": "1"})
    queue(MSG, b"sender@remote.example", [b"joe@test.example"])
    d.wait_log(r"^end msg \d+$")
    assert d.stop() == 0
    (m,) = maildir(joe)
    assert m.as_bytes().endswith(MSG)


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            real, effective, saved, fs = map(int, line.split()[1:])
            assert real == effective == saved == fs
            return real
    raise AssertionError("no Uid line")


def test_privileged_daemons_run_as_their_accounts(priv_home, tmp_path):
    need_root()
    import pwd
    nobody = pwd.getpwnam("nobody")
    pat = add_user(priv_home, "pat", uid=nobody.pw_uid, gid=nobody.pw_gid)
    d = Daemons(priv_home, tmp_path)
    try:
        d.wait_log(r"^status: local 0/10 remote 0/20$")
        wait_for(lambda: len(_children(d.proc.pid)) == 3)
        uids = sorted(_uid(p) for p in _children(d.proc.pid))
        ids = {name: pwd.getpwnam(name).pw_uid for name in ("qmailq", "qmailr", "qmails")}
        assert _uid(d.proc.pid) == ids["qmails"]
        assert uids == sorted([0, ids["qmailr"], ids["qmailq"]])
        queue(MSG, b"sender@remote.example", [b"pat@test.example"])
        d.wait_log(r"^end msg \d+$")
        assert d.stop() == 0
    finally:
        d.kill()
    (name,) = os.listdir(pat / "Maildir" / "new")
    st = os.stat(pat / "Maildir" / "new" / name)
    assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid)  # qmail-local ran as pat
    assert maildir(pat)[0]["Delivered-To"] == "pat@test.example"


def test_second_start_refuses_while_the_first_runs(home, daemons):
    d = daemons()
    d.wait_log(r"^status:")
    other = daemons()
    assert other.proc.wait(timeout=60) == 111
    assert "alert: cannot start: qmail-send is already running" in other.log()
    assert d.proc.poll() is None
    assert d.stop() == 0
