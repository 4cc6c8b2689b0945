"""qmail-send as a real process between a real qmail-clean and two small spawner peers.

The peers (FAKE_SPAWN below) speak the spawner protocol of docs/protocols.md §2: they
write their slot-limit byte, read ``<slot><split>/<id>\\0<sender>\\0<recip>\\0``
commands, record each one, and answer by the recipient's local part: ``ok…`` K,
``tmp…`` Z, ``perm…`` D, ``blank…`` D with a blank line in the report, ``huge…`` D
with a 20000-byte report, ``mangle…`` an unknown letter, ``badslot…`` a report for
a slot never used first, ``hold…`` only once the file ``release`` exists.  What
qmail-send must do with those answers is checked on the queue files, the bytes
of the bounces it queues, and its log.
"""
from __future__ import annotations

import email
import email.policy
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import control, run
from qpy import qmailq, queuedir

FAKE_SPAWN = r'''
import json, os, select, sys
out, limit = sys.argv[1], int(sys.argv[2])
os.write(1, bytes([limit]))
os.chdir(os.path.join(os.environ["QMAILHOME"], "queue", "mess"))
os.makedirs(os.path.join(out, "msgs"), exist_ok=True)
ANSWERS = {b"tmp": b"ZSorry, temporary trouble. (#4.3.0)\n",
           b"perm": b"DSorry, no mailbox here by that name. (#5.1.1)\n",
           b"blank": b"Dfirst\n\nsecond",
           b"huge": b"D" + b"y" * 20000,
           b"mangle": b"Xgarbled"}
held, buf, eof, count = [], b"", False, 0

def report(slot, text):
    data = bytes([slot]) + text + b"\0"
    while data:
        data = data[os.write(1, data):]

def answer(slot, path, sender, recip, key):
    global count
    if key == b"badslot":
        report(200, b"Kbogus")
    text = ANSWERS.get(key, b"Kdid 1+0+0\n")
    if text[:1] in (b"K", b"D"):
        with open(path, "rb") as f:
            data = f.read()
        count += 1
        with open(os.path.join(out, "msgs", "%05d" % count), "wb") as f:
            f.write(sender + b"\0" + recip + b"\0" + data)
    report(slot, text)

def command(slot, path, sender, recip):
    with open(os.path.join(out, "commands"), "a") as f:
        f.write(json.dumps([slot, path.decode("latin-1"), sender.decode("latin-1"),
                            recip.decode("latin-1")]) + "\n")
    key = recip.rsplit(b"@", 1)[0].split(b"-")[-1].split(b".")[0]
    if key == b"hold":
        held.append((slot, path, sender, recip, b"ok"))
    else:
        answer(slot, path, sender, recip, key)

while True:
    if held and os.path.exists(os.path.join(out, "release")):
        for h in held:
            answer(*h)
        held = []
    if eof and not held:
        break
    r, _, _ = select.select([] if eof else [0], [], [], 0.05)
    if not r:
        continue
    data = os.read(0, 65536)
    if not data:
        eof = True
        continue
    buf += data
    while len(buf) > 1 and buf[1:].count(b"\0") >= 3:
        slot = buf[0]
        path, sender, recip, buf = buf[1:].split(b"\0", 3)
        command(slot, path, sender, recip)
'''

LAUNCH = ("import os, sys\nfrom qpy import warm\n"
          "m = {int(a): int(b) for a, b in (x.split(':') for x in sys.argv[1].split(','))}\n"
          "warm.place_fds(m, keep=())\nos.execv(sys.argv[2], sys.argv[2:])\n")

ME = "test.example"


def launch(argv: list[str], fds: dict[int, int], env: dict[str, str]) -> subprocess.Popen:
    """Run argv with exactly the given fds (target: source) and nothing else open."""
    spec = ",".join(f"{t}:{s}" for t, s in fds.items())
    return subprocess.Popen([sys.executable, "-c", LAUNCH, spec, *argv], pass_fds=list(fds.values()),
                            env=env)


class Send:
    """qmail-send with a real qmail-clean, two fake spawners, and its log in a file."""

    def __init__(self, home: Path, work: Path, limits: tuple[int, int] = (120, 120)) -> None:
        self.home, self.work = home, work
        self.logpath = work / "log"
        self.out = [work / "local", work / "remote"]
        for d in self.out:
            d.mkdir(exist_ok=True)
        fake = work / "fakespawn.py"
        fake.write_text(FAKE_SPAWN)
        env = dict(os.environ, QMAILHOME=str(home))
        to_l, from_l, to_r, from_r, to_c, from_c = (os.pipe() for _ in range(6))
        self.others = [
            subprocess.Popen([sys.executable, str(fake), str(self.out[0]), str(limits[0])],
                             stdin=to_l[0], stdout=from_l[1], env=env),
            subprocess.Popen([sys.executable, str(fake), str(self.out[1]), str(limits[1])],
                             stdin=to_r[0], stdout=from_r[1], env=env),
            subprocess.Popen([str(home / "bin" / "qmail-clean")], stdin=to_c[0], stdout=from_c[1],
                             env=env)]
        logfd = os.open(self.logpath, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.proc = launch([str(home / "bin" / "qmail-send")],
                           {0: logfd, 1: to_l[1], 2: from_l[0], 3: to_r[1], 4: from_r[0],
                            5: to_c[1], 6: from_c[0]}, env)
        for fd in (logfd, *to_l, *from_l, *to_r, *from_r, *to_c, *from_c):
            os.close(fd)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> list[str]:
        if not self.logpath.exists():
            return []
        return self.logpath.read_bytes().decode("latin-1").splitlines()

    def wait_log(self, pattern: str, count: int = 1, timeout: float = 30) -> list[str]:
        """Wait until ``count`` log lines match the regex; return all matching lines."""
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.log() if re.search(pattern, line)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no {count}× {pattern!r} in log:\n" + "\n".join(self.log()))
            if self.proc.poll() is not None and len(found) < count:
                raise AssertionError(f"qmail-send exited {self.proc.returncode}; log:\n"
                                     + "\n".join(self.log()))
            time.sleep(0.02)

    def commands(self, channel: int) -> list[list]:
        path = self.out[channel] / "commands"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def msgs(self, channel: int) -> list[tuple[bytes, bytes, bytes]]:
        d = self.out[channel] / "msgs"
        return [tuple(p.read_bytes().split(b"\0", 2)) for p in sorted(d.iterdir())] \
            if d.exists() else []

    def release(self) -> None:
        for d in self.out:
            (d / "release").write_bytes(b"")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int:
        """TERM; wait for qmail-send and its peers; return qmail-send's exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self.release()
        for p in self.others:
            p.wait(timeout=30)
        return code

    def kill(self) -> None:
        for p in (self.proc, *self.others):
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)


@pytest.fixture
def send_factory(home, tmp_path):
    started: list[Send] = []

    def start(limits: tuple[int, int] = (120, 120), name: str = "run") -> Send:
        work = tmp_path / f"{name}{len(started)}"
        work.mkdir()
        s = Send(home, work, limits)
        started.append(s)
        return s
    yield start
    for s in started:
        s.kill()


def queue(message: bytes, sender: bytes, rcpts: list[bytes]) -> int:
    """Queue with the real qmail-queue; return the new message's id."""
    q = os.path.join(os.environ["QMAILHOME"], "queue")
    before = set(queuedir.scan_flat(q, "todo"))
    assert qmailq.queue_message(message, sender, rcpts) == ""
    (msgid,) = set(queuedir.scan_flat(q, "todo")) - before
    return msgid


def queue_live(s: Send, message: bytes, sender: bytes, rcpts: list[bytes]) -> int:
    """Queue while qmail-send runs; the id comes from its ``info msg`` line (qp = queue pid)."""
    job = qmailq.QueueJob()
    job.put(message)
    assert job.close(sender, rcpts) == ""
    line = s.wait_log(r"^info msg \d+: bytes \d+ from <.*> qp %d uid" % job.pid)[-1]
    return int(line.split()[2].rstrip(":"))


def qfile(home: Path, rel: str) -> Path:
    return home / "queue" / rel


def queue_files(home: Path) -> list[str]:
    q = home / "queue"
    found = []
    for d in ("mess", "info", "local", "remote"):
        found += [f"{d}/{i}" for i in queuedir.scan_split(str(q), d)]
    for d in ("todo", "intd", "bounce"):
        found += [f"{d}/{i}" for i in queuedir.scan_flat(str(q), d)]
    return found


def make_s5(home: Path, msgid: int, local: bytes | None, remote: bytes | None,
            sender: bytes | None = None) -> None:
    """Turn an S4 message into the S5 state qmail-send would have written."""
    todo = qfile(home, queuedir.todo(msgid))
    if sender is None:
        rec = [r for r in todo.read_bytes().split(b"\0") if r.startswith(b"F")][0]
        sender = rec[1:]
    qfile(home, queuedir.info(msgid)).write_bytes(b"F" + sender + b"\0")
    for rel, data in ((queuedir.local(msgid), local), (queuedir.remote(msgid), remote)):
        if data is not None:
            qfile(home, rel).write_bytes(data)
    todo.unlink()
    qfile(home, queuedir.intd(msgid)).unlink()


MSG = b"Subject: test\n\nhello\n"


# ---------------------------------------------------------------- delivery

def test_delivers_locally_and_remotely_then_empties_the_queue(home, send_factory):
    msgid = queue(MSG, b"joe@a.example", [b"ok@test.example", b"ok@remote.example"])
    s = send_factory()
    s.wait_log(r"^end msg %d$" % msgid)
    assert s.stop() == 0
    rel = f"{msgid % 23}/{msgid}"
    assert s.commands(0) == [[0, rel, "joe@a.example", "ok@test.example"]]
    assert s.commands(1) == [[0, rel, "joe@a.example", "ok@remote.example"]]
    mess = s.msgs(0)[0][2]
    assert mess.startswith(b"Received: (qmail ") and mess.endswith(b"\n" + MSG)
    log = s.log()
    size = len(mess)
    assert log[0] == "status: local 0/10 remote 0/20"
    new = log.index(f"new msg {msgid}")
    assert re.fullmatch(r"info msg %d: bytes %d from <joe@a\.example> qp \d+ uid %d"
                        % (msgid, size, os.getuid()), log[new + 1])
    starts = [line for line in log if line.startswith("starting delivery")]
    assert sorted(starts) == [f"starting delivery 1: msg {msgid} to local ok@test.example",
                              f"starting delivery 2: msg {msgid} to remote ok@remote.example"]
    assert "delivery 1: success: did_1+0+0/" in log
    assert "delivery 2: success: did_1+0+0/" in log
    assert log[-2:] == [f"end msg {msgid}", "status: exiting"]
    assert queue_files(home) == []


def test_channel_files_and_done_marks_while_a_delivery_is_running(home, send_factory):
    msgid = queue(MSG, b"joe@a.example", [b"ok.1@test.example", b"hold.2@test.example",
                                          b"ok.3@remote.example"])
    s = send_factory()
    s.wait_log(r"success", count=2)
    s.wait_log(r"^starting delivery \d+: msg \d+ to local hold")
    assert qfile(home, queuedir.info(msgid)).read_bytes() == b"Fjoe@a.example\0"
    assert qfile(home, queuedir.local(msgid)).read_bytes() == \
        b"Dok.1@test.example\0Thold.2@test.example\0"
    assert not qfile(home, queuedir.remote(msgid)).exists()  # all done: unlinked
    assert not qfile(home, queuedir.todo(msgid)).exists()    # S5: preprocessed
    assert not qfile(home, queuedir.intd(msgid)).exists()
    assert qfile(home, queuedir.mess(msgid)).exists()
    s.release()
    s.wait_log(r"^end msg %d$" % msgid)
    assert s.stop() == 0
    assert queue_files(home) == []


def test_rewriting_chooses_channel_and_address(home, send_factory):
    control(home, "virtualdomains", "virt.example:pre\nuser@special.example:sp\n.sub.example:deep\n")
    control(home, "percenthack", "ph.example\n")
    control(home, "envnoathost", "test.example\n")
    msgid = queue(MSG, b"joe@a.example", [b"ok1@virt.example", b"ok2%b.example@ph.example",
                                          b"ok3", b"user@special.example", b"ok4@x.sub.example",
                                          b"ok5@TEST.example"])
    s = send_factory()
    s.wait_log(r"^end msg %d$" % msgid)
    assert s.stop() == 0
    assert sorted(c[3] for c in s.commands(0)) == [
        "deep-ok4@x.sub.example", "ok3@test.example", "ok5@TEST.example", "pre-ok1@virt.example",
        "sp-user@special.example"]
    assert [c[3] for c in s.commands(1)] == ["ok2@b.example"]


def test_verp_sender_is_expanded_per_recipient(home, send_factory):
    msgid = queue(MSG, b"owner-@list.example-@[]", [b"ok@remote.example", b"ok@test.example"])
    s = send_factory()
    s.wait_log(r"^end msg %d$" % msgid)
    s.stop()
    assert s.commands(1)[0][2] == "owner-ok=remote.example@list.example"
    assert s.commands(0)[0][2] == "owner-ok=test.example@list.example"


# ---------------------------------------------------------------- bounces

BOUNCE_HEAD = re.compile(
    rb"Received: \(qmail \d+ invoked by uid \d+\); \d+ \w{3} \d{4} \d\d:\d\d:\d\d -0000\n"
    rb"Date: \d+ \w{3} \d{4} \d\d:\d\d:\d\d -0000\n")


def test_permanent_failures_make_one_bounce_after_every_recipient(home, send_factory):
    control(home, "bounceformat", "qsbmf\n")        # qmail's bounce, byte for byte
    control(home, "virtualdomains", "virt.example:pre\n")
    msgid = queue(MSG, b"snd@remote.example", [b"perm@test.example", b"ok@test.example",
                                               b"blank@virt.example", b"huge@remote.example"])
    s = send_factory()
    bounce_line = s.wait_log(r"^bounce msg %d qp \d+$" % msgid)[0]
    qp = bounce_line.split()[-1]
    s.wait_log(r"^end msg %d$" % msgid)
    s.wait_log(r"^end msg", count=2)  # the bounce itself was delivered
    assert s.stop() == 0
    log = s.log()
    assert "delivery 1: failure: Sorry,_no_mailbox_here_by_that_name._(#5.1.1)/" in log
    # the bounce is queued after the last report only
    mine = {m.group(1) for m in (re.match(r"starting delivery (\d+): msg %d " % msgid, x)
                                 for x in log) if m}
    assert len(mine) == 4
    last_report = max(i for i, line in enumerate(log)
                      if re.match(r"delivery (\d+): ", line) and line.split()[1][:-1] in mine)
    assert log.index(bounce_line) > last_report
    bounces = [m for m in s.msgs(1) if m[1] == b"snd@remote.example"]
    assert len(bounces) == 1
    sender, recip, data = bounces[0]
    assert sender == b""
    m = BOUNCE_HEAD.match(data)
    assert m and data.startswith(b"Received: (qmail %s invoked by uid" % qp.encode())
    body = data[m.end():]
    original = s.msgs(0)[0][2]
    blocks = body.split(b"\n\n<", 1)[1].split(b"--- Below")[0]
    assert body.startswith(
        b"From: MAILER-DAEMON@test.example\n"
        b"To: snd@remote.example\n"
        b"Subject: failure notice\n\n"
        b"Hi. This is the qmail-send program at test.example.\n"
        b"I'm afraid I wasn't able to deliver your message to the following addresses.\n"
        b"This is a permanent error; I've given up. Sorry it didn't work out.\n\n<")
    expected = {b"perm@test.example>:\nSorry, no mailbox here by that name. (#5.1.1)\n\n",
                b"blank@virt.example>:\nfirst\n/second\n\n",
                b"huge@remote.example>:\n" + b"y" * 9998 + b"\n\n"}
    got = set((b"<" + blocks).split(b"<")[1:])
    assert got == expected
    assert body.endswith(b"--- Below this line is a copy of the message.\n\n"
                         b"Return-Path: <snd@remote.example>\n" + original)
    assert queue_files(home) == []


def parse(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


def test_dsn_bounce_by_default_with_qmails_text_first(home, send_factory):
    control(home, "virtualdomains", "virt.example:pre\n")
    msgid = queue(MSG, b"snd@remote.example", [b"perm@test.example", b"ok@test.example",
                                               b"blank@virt.example", b"huge@remote.example"])
    s = send_factory()
    s.wait_log(r"^bounce msg %d qp \d+$" % msgid)
    s.wait_log(r"^end msg", count=2)
    assert s.stop() == 0
    (bounce,) = [m for m in s.msgs(1) if m[1] == b"snd@remote.example"]
    assert bounce[0] == b""
    m = parse(bounce[2])
    assert m.get_content_type() == "multipart/report"
    assert m.get_param("report-type") == "delivery-status"
    assert (m["From"], m["To"], m["Subject"]) == ("MAILER-DAEMON@test.example",
                                                 "snd@remote.example", "failure notice")
    text, report, original = m.iter_parts()
    body = text.get_content().encode()
    assert body.startswith(b"Hi. This is the qmail-send program at test.example.\n"
                           b"I'm afraid I wasn't able to deliver your message to the following "
                           b"addresses.\nThis is a permanent error; I've given up. Sorry it didn't "
                           b"work out.\n\n<")
    assert body.endswith(b"\n\n--- Below this line is a copy of the message.\n")
    blocks = body.split(b"\n\n<", 1)[1].split(b"--- Below")[0]
    assert set((b"<" + blocks).split(b"<")[1:]) == {
        b"perm@test.example>:\nSorry, no mailbox here by that name. (#5.1.1)\n\n",
        b"blank@virt.example>:\nfirst\n/second\n\n",
        b"huge@remote.example>:\n" + b"y" * 9998 + b"\n\n"}
    assert report.get_content_type() == "message/delivery-status"
    per_message, *groups = report.get_payload()
    assert per_message["Reporting-MTA"] == "dns; test.example"
    found = {g["Final-Recipient"]: g for g in groups}
    assert sorted(found) == ["rfc822; blank@virt.example", "rfc822; huge@remote.example",
                             "rfc822; perm@test.example"]
    assert all(g["Action"] == "failed" and g["Last-Attempt-Date"] for g in groups)
    perm = found["rfc822; perm@test.example"]
    assert perm["Status"] == "5.1.1"
    assert perm["Diagnostic-Code"] == "x-unix; Sorry, no mailbox here by that name. (#5.1.1)"
    huge = found["rfc822; huge@remote.example"]
    assert huge["Status"] == "5.0.0"
    assert huge["Diagnostic-Code"] == "x-unix; " + "y" * 900     # one word, cut
    assert original.get_content_type() == "message/rfc822"
    (inner,) = original.get_payload()
    assert inner.as_bytes() == b"Return-Path: <snd@remote.example>\n" + s.msgs(0)[0][2]


def test_hup_rereads_bounceformat(home, send_factory):
    s = send_factory()
    s.wait_log(r"^status:")
    first = queue_live(s, MSG, b"joe@a.example", [b"perm@test.example"])
    s.wait_log(r"^bounce msg %d qp" % first)
    s.wait_log(r"^end msg", count=2)
    control(home, "bounceformat", "qsbmf\n")
    s.signal(signal.SIGHUP)
    queue_live(s, MSG, b"joe@a.example", [b"perm@test.example"])
    s.wait_log(r"^bounce msg", count=2)
    s.wait_log(r"^end msg", count=4)
    assert s.stop() == 0
    dsn, qsbmf = [m[2] for m in s.msgs(1)]
    assert parse(dsn).get_content_type() == "multipart/report"
    assert b"\nMIME-Version" not in qsbmf and parse(qsbmf).get_content_type() == "text/plain"
    assert b"\n\nHi. This is the qmail-send program at test.example.\n" in qsbmf


def test_bounce_of_a_bounce_goes_to_postmaster_and_a_third_is_dropped(home, send_factory):
    control(home, "bounceformat", "qsbmf\n")
    first = queue(MSG, b"", [b"perm@test.example"])
    s = send_factory()
    s.wait_log(r"^bounce msg %d qp" % first)
    s.wait_log(r"^end msg", count=2)
    (double,) = [m for m in s.msgs(0) if m[1] == b"postmaster@test.example"]
    assert double[0] == b"#@[]"
    body = double[2][BOUNCE_HEAD.match(double[2]).end():]
    assert body.startswith(b"From: MAILER-DAEMON@test.example\nTo: postmaster@test.example\n"
                           b"Subject: failure notice\n\n"
                           b"Hi. This is the qmail-send program at test.example.\n"
                           b"I tried to deliver a bounce message to this address, "
                           b"but the bounce bounced!\n\n<perm@test.example>:\n")
    assert b"\n--- Below this line is the original bounce.\n\nReturn-Path: <>\nReceived: " in body
    third = queue_live(s, MSG, b"#@[]", [b"perm@test.example"])
    s.wait_log(r"^triple bounce: discarding bounce/%d$" % third)
    s.wait_log(r"^end msg %d$" % third)
    assert s.stop() == 0
    log = s.log()
    since = max(i for i, line in enumerate(log) if line == f"new msg {third}")  # ids are reused
    assert not [line for line in log[since:] if line.startswith("bounce msg")]
    assert not [line for line in log[since + 1:] if line.startswith("new msg")]
    assert queue_files(home) == []


# ---------------------------------------------------------------- retries, expiry, signals

def test_deferral_is_retried_on_alarm_and_the_retry_time_survives_a_restart(home, send_factory):
    msgid = queue(MSG, b"joe@a.example", [b"tmp@test.example"])
    s = send_factory()
    s.wait_log(r"^delivery 1: deferral: Sorry,_temporary_trouble._\(#4\.3\.0\)/$")
    s.signal(signal.SIGALRM)
    s.wait_log(r"^delivery 2: deferral")
    assert s.stop() == 0
    assert s.log()[-1] == "status: exiting"
    birth = int(qfile(home, queuedir.info(msgid)).stat().st_mtime)
    st = qfile(home, queuedir.local(msgid)).stat()
    # retry = birth + (isqrt(age at the second pass) + 10)^2, age 0..20 s in this test
    assert int(st.st_mtime) == int(st.st_atime)
    assert int(st.st_mtime) - birth in (100, 121, 144, 169, 196, 225, 256, 289, 324, 361, 400)
    assert qfile(home, queuedir.local(msgid)).read_bytes() == b"Ttmp@test.example\0"
    s2 = send_factory()
    s2.wait_log(r"^status: local 0/10")
    s2.signal(signal.SIGALRM)  # the saved time is in the future: only ALRM makes it due
    s2.wait_log(r"^delivery 1: deferral")
    assert s2.stop() == 0
    assert [c[3] for c in s2.commands(0)] == ["tmp@test.example"]


def test_sendmail_q_retries_the_queue_now(home, send_factory):
    """``sendmail -q`` (Postfix's "deliver all queued mail") is an ALRM to the running qmail-send."""
    queue(MSG, b"joe@a.example", [b"tmp@test.example"])
    s = send_factory()
    s.wait_log(r"^delivery 1: deferral")
    r = run(home, "sendmail", ["-q"])
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    s.wait_log(r"^delivery 2: deferral")
    assert s.stop() == 0


def test_expired_message_turns_deferral_into_bounce(home, send_factory):
    control(home, "queuelifetime", "1000\n")
    msgid = queue(MSG, b"snd@remote.example", [b"tmp@test.example"])
    make_s5(home, msgid, b"Ttmp@test.example\0", None)
    old = time.time() - 2000
    os.utime(qfile(home, queuedir.info(msgid)), (old, old))
    os.utime(qfile(home, queuedir.local(msgid)), (old, old))
    s = send_factory()
    s.wait_log(r"^delivery 1: failure: Sorry,_temporary_trouble._\(#4\.3\.0\)/I'm_not_going_to_try"
               r"_again;_this_message_has_been_in_the_queue_too_long\./$")
    s.wait_log(r"^end msg", count=2)
    assert s.stop() == 0
    (b,) = s.msgs(1)
    assert b"<tmp@test.example>:\nSorry, temporary trouble. (#4.3.0)\nI'm not going to try again; " \
           b"this message has been in the queue too long.\n\n--- Below" in b[2]


def test_term_waits_for_running_deliveries_and_starts_nothing_new(home, send_factory):
    msgid = queue(MSG, b"joe@a.example", [b"hold@test.example"])
    s = send_factory()
    s.wait_log(r"^starting delivery 1: msg %d" % msgid)
    s.signal(signal.SIGTERM)
    later = queue(MSG, b"joe@a.example", [b"ok@test.example"])
    assert s.proc.poll() is None  # the held delivery has not reported yet
    s.release()
    assert s.proc.wait(timeout=30) == 0
    log = s.log()
    # After TERM a finished message may still be completed (no delivery is started).
    tail = [line for line in log if line != f"end msg {msgid}"]
    assert tail[-3:] == ["delivery 1: success: did_1+0+0/",
                         "status: local 0/10 remote 0/20 exitasap", "status: exiting"]
    assert qfile(home, queuedir.todo(later)).exists()  # not preprocessed after TERM
    assert not any(line.startswith(f"new msg {later}") for line in log)
    s.stop()


def test_hup_rereads_virtualdomains(home, send_factory):
    s = send_factory()
    s.wait_log(r"^status:")
    control(home, "virtualdomains", "virt.example:pre\n")
    s.signal(signal.SIGHUP)
    queue_live(s, MSG, b"joe@a.example", [b"ok@test.example"])
    s.wait_log(r"^end msg")
    queue_live(s, MSG, b"joe@a.example", [b"ok@virt.example"])
    s.wait_log(r"^end msg", count=2)  # (an id is reused as soon as it is free)
    assert s.stop() == 0
    assert [c[3] for c in s.commands(0)] == ["ok@test.example", "pre-ok@virt.example"]


def test_bad_reports_are_logged_and_deferred(home, send_factory):
    msgid = queue(MSG, b"joe@a.example", [b"mangle@test.example", b"badslot@test.example"])
    s = send_factory()
    s.wait_log(r"^delivery \d+: report mangled, will defer$")
    s.wait_log(r"^warning: internal error: delivery report out of range$")
    s.wait_log(r"^delivery \d+: success")
    assert s.stop() == 0
    assert qfile(home, queuedir.local(msgid)).read_bytes() in (
        b"Tmangle@test.example\0Dbadslot@test.example\0",)


def test_concurrency_is_the_smaller_of_control_and_spawner_byte(home, send_factory):
    control(home, "concurrencyremote", "3\n")
    msgid = queue(MSG, b"joe@a.example", [b"hold.%d@test.example" % i for i in range(4)])
    s = send_factory(limits=(2, 120))
    s.wait_log(r"^status: local 2/2 remote 0/3$")
    s.release()
    s.wait_log(r"^end msg %d$" % msgid)
    assert s.stop() == 0
    used = [int(m.group(1)) for m in (re.match(r"status: local (\d+)/2", x) for x in s.log()) if m]
    assert max(used) == 2
    assert sorted(c[3] for c in s.commands(0)) == [f"hold.{i}@test.example" for i in range(4)]
    assert {c[0] for c in s.commands(0)} == {0, 1}  # slots, not delivery numbers


# ---------------------------------------------------------------- startup

def test_startup_recovers_every_intermediate_state(home, send_factory):
    q = home / "queue"
    # S4 with the leftovers of a crash during preprocessing
    a = queue(MSG, b"joe@a.example", [b"ok.a@test.example"])
    qfile(home, queuedir.info(a)).write_bytes(b"Fgarbage")
    qfile(home, queuedir.local(a)).write_bytes(b"Tok.wrong@test.example\0")
    # S5, one recipient already done
    b = queue(MSG, b"joe@a.example", [b"ok.b1@test.example", b"ok.b2@test.example"])
    make_s5(home, b, b"Dok.b1@test.example\0Tok.b2@test.example\0", None)
    # S5 with every channel finished and a bounce waiting
    c = queue(MSG, b"snd@remote.example", [b"x@test.example"])
    make_s5(home, c, None, None)
    qfile(home, queuedir.bounce(c)).write_bytes(b"<x@test.example>:\nfailed earlier\n\n")
    # S5 whose remote retry time (saved at TERM) is in the future
    d = queue(MSG, b"joe@a.example", [b"ok.d@remote.example"])
    make_s5(home, d, None, b"Tok.d@remote.example\0")
    future = time.time() + 3000
    os.utime(qfile(home, queuedir.remote(d)), (future, future))
    # S2 and S3 leftovers of a dead qmail-queue (or of a completion cut short) go at
    # start-up, old or young; a young one whose writer still holds its lock stays
    e = queue(MSG, b"joe@a.example", [b"ok@test.example"])
    qfile(home, queuedir.todo(e)).unlink()                  # S3: mess + intd
    f = queue(MSG, b"joe@a.example", [b"ok@test.example"])
    qfile(home, queuedir.todo(f)).unlink()
    qfile(home, queuedir.intd(f)).unlink()                  # S2: mess only
    g = queue(MSG, b"joe@a.example", [b"ok@test.example"])
    qfile(home, queuedir.todo(g)).unlink()
    qfile(home, queuedir.intd(g)).unlink()                  # S2, young, a live writer's
    h = queue(MSG, b"joe@a.example", [b"ok@test.example"])
    qfile(home, queuedir.todo(h)).unlink()
    qfile(home, queuedir.intd(h)).unlink()                  # S2, young, no writer
    old = time.time() - 36 * 3600 - 100
    for msgid in (e, f):
        os.utime(qfile(home, queuedir.mess(msgid)), (old, old))
    writer = os.open(qfile(home, queuedir.mess(g)), os.O_RDONLY)
    fcntl.flock(writer, fcntl.LOCK_EX)

    s = send_factory()
    for msgid in (a, b, c):
        s.wait_log(r"^end msg %d$" % msgid)
    s.wait_log(r"^end msg", count=4)  # c's bounce
    s.wait_log(r"^status:")
    deadline = time.monotonic() + 30
    while any(qfile(home, queuedir.mess(m)).exists() for m in (e, f, h)):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert not qfile(home, queuedir.intd(e)).exists()
    assert qfile(home, queuedir.mess(g)).exists()
    assert qfile(home, queuedir.remote(d)).exists()
    assert [cmd[3] for cmd in s.commands(1) if cmd[3].startswith("ok.d")] == []
    local = sorted(cmd[3] for cmd in s.commands(0))
    assert local == ["ok.a@test.example", "ok.b2@test.example"]
    (bounce_msg,) = [m for m in s.msgs(1) if m[1] == b"snd@remote.example"]
    assert b"<x@test.example>:\nfailed earlier\n\n--- Below this line" in bounce_msg[2]
    s.signal(signal.SIGALRM)
    s.wait_log(r"^end msg %d$" % d)
    assert s.stop() == 0
    assert sorted(queue_files(home)) == [f"mess/{g}"]
    assert not (q / "pid").exists() or list((q / "pid").iterdir()) == []
    os.close(writer)


def test_second_instance_refuses_to_start(home, send_factory):
    s = send_factory()
    s.wait_log(r"^status:")
    log = home.parent / "log2"
    with open(log, "wb") as logf:
        r = subprocess.run([str(home / "bin" / "qmail-send")], stdin=logf, timeout=30,
                           env=dict(os.environ, QMAILHOME=str(home)))
    assert r.returncode == 111
    assert log.read_bytes() == b"alert: cannot start: qmail-send is already running\n"
    assert s.stop() == 0


def test_no_spawner_byte_means_no_start(home, tmp_path):
    log = tmp_path / "log"
    logfd = os.open(log, os.O_WRONLY | os.O_CREAT, 0o644)
    null = os.open(os.devnull, os.O_RDWR)
    p = launch([str(home / "bin" / "qmail-send")], {0: logfd, 1: null, 2: null, 3: null, 4: null,
                                                    5: null, 6: null},
               dict(os.environ, QMAILHOME=str(home)))
    os.close(logfd)
    os.close(null)
    assert p.wait(timeout=30) == 111
    assert log.read_bytes() == b"alert: cannot start: hath the daemon spawn no fire?\n"


def test_lost_spawner_makes_it_exit(home, send_factory):
    s = send_factory()
    s.wait_log(r"^status:")
    s.others[1].kill()
    s.others[1].wait(timeout=30)
    assert s.proc.wait(timeout=30) == 0
    assert "alert: oh no! lost spawn connection! dying..." in s.log()
    assert s.log()[-1] == "status: exiting"


def test_a_long_todo_does_not_hold_back_deliveries(home, send_factory):
    from qpy.send_todo import TODO_BATCH
    count = TODO_BATCH + 8
    for n in range(count):
        queue(MSG, b"joe@a.example", [b"ok.%d@test.example" % n])
    s = send_factory()
    s.wait_log(r"^end msg", count=count)
    assert s.stop() == 0
    log = s.log()
    first_start = min(i for i, x in enumerate(log) if x.startswith("starting delivery"))
    last_new = max(i for i, x in enumerate(log) if x.startswith("new msg"))
    assert first_start < last_new  # deliveries began while todo/ was still being read
    assert queue_files(home) == []


def test_bad_queue_contents_are_warnings_not_crashes_and_corrupt_messages_are_quarantined(
        home, send_factory):
    """A bad channel record is skipped; a message whose todo/ or info/ file is not in its
    format is moved to quarantine/ (kept, logged, never retried forever)."""
    a = queue(MSG, b"joe@a.example", [b"x@test.example"])
    make_s5(home, a, b"Tok.a1@test.example\0Xjunk\0\0Tok.a2@test.example\0", None)
    b = queue(MSG, b"joe@a.example", [b"ok.b@test.example"])
    with open(qfile(home, queuedir.todo(b)), "ab") as f:
        f.write(b"Qbad\0")
    b_todo = qfile(home, queuedir.todo(b)).read_bytes()
    c = queue(MSG, b"joe@a.example", [b"x@test.example"])
    make_s5(home, c, b"Tok.c@test.example\0", None)
    qfile(home, queuedir.info(c)).write_bytes(b"no sender record")
    d = queue(MSG, b"joe@a.example", [b"ok.d@test.example"])
    with open(qfile(home, queuedir.todo(d)), "ab") as f:
        f.write(b"Tcut short")
    s = send_factory()
    s.wait_log(r"^end msg %d$" % a)
    s.wait_log(r"^warning: quarantined message %d: unknown record type in %s$" % (b, queuedir.todo(b)))
    s.wait_log(r"^warning: quarantined message %d: %s holds no sender record$" % (c, queuedir.info(c)))
    s.wait_log(r"^warning: quarantined message %d: %s ends inside a record$" % (d, queuedir.todo(d)))
    s.signal(signal.SIGALRM)        # every channel due: nothing quarantined is tried again
    assert s.stop() == 0
    lines = s.log()
    assert lines.count(f"warning: unknown record type in {queuedir.local(a)}!") == 2
    assert sum(f"message {m}" in x for x in lines for m in (b, c, d)) == 3
    assert not any("trouble" in x for x in lines)
    assert sorted(cmd[3] for cmd in s.commands(0)) == ["ok.a1@test.example", "ok.a2@test.example"]
    quarantine = home / "queue" / "quarantine"
    assert (quarantine / f"{b}.todo").read_bytes() == b_todo
    assert (quarantine / f"{c}.local").read_bytes() == b"Tok.c@test.example\0"
    assert (quarantine / f"{c}.info").read_bytes() == b"no sender record"
    assert (quarantine / str(d)).read_bytes() == f"{queuedir.todo(d)} ends inside a record\n".encode()
    for msgid in (b, c, d):         # the message itself stays; nothing else refers to it
        assert qfile(home, queuedir.mess(msgid)).exists()
        for rel in (queuedir.todo(msgid), queuedir.intd(msgid), queuedir.info(msgid),
                    queuedir.local(msgid)):
            assert not qfile(home, rel).exists()
    s2 = send_factory()             # a restart's first sweep keeps quarantined messages
    s2.wait_log(r"^status:")
    s2.signal(signal.SIGALRM)
    assert s2.stop() == 0
    for msgid in (b, c, d):
        assert qfile(home, queuedir.mess(msgid)).exists()
    assert not any("quarantined" in x for x in s2.log())


def test_info_and_channel_files_reuse_spares_and_return_to_them(home, send_factory):
    spares = home / "queue" / "spares"
    stale = []
    for n in range(3):
        f = home / f"stale{n}"
        f.write_bytes(b"Tstale.recipient@test.example\0" * 50)
        stale.append(f.stat().st_ino)
        os.rename(f, spares / str(stale[-1]))
    msgid = queue(MSG, b"joe@a.example", [b"hold.1@test.example", b"ok.2@remote.example"])
    s = send_factory()
    s.wait_log(r"^starting delivery \d+: msg \d+ to local hold")
    info, local = qfile(home, queuedir.info(msgid)), qfile(home, queuedir.local(msgid))
    assert info.read_bytes() == b"Fjoe@a.example\0"            # stale bytes cut off
    assert local.read_bytes() == b"Thold.1@test.example\0"
    assert info.stat().st_mode & 0o777 == 0o600 and local.stat().st_ino in stale
    assert info.stat().st_ino in stale
    s.release()
    s.wait_log(r"^end msg %d$" % msgid)
    assert s.stop() == 0
    assert queue_files(home) == []
    assert sorted(int(n) for n in os.listdir(spares)) == sorted(stale)   # all three back


def test_preprocessing_waits_while_enough_messages_wait_for_their_first_delivery(home, send_factory):
    from qpy.send_todo import PREP_AHEAD, TODO_BATCH
    count = PREP_AHEAD + TODO_BATCH + 40
    for n in range(count):
        queue(MSG, b"joe@a.example", [b"hold.%d@test.example" % n])
    s = send_factory()
    s.wait_log(r"^starting delivery", count=10)          # concurrencylocal: 10 slots held
    time.sleep(1.0)                                       # turns go by; nothing more may start
    q = home / "queue"
    preprocessed = len(queuedir.scan_split(str(q), "info"))
    assert preprocessed < PREP_AHEAD + TODO_BATCH + 10    # checked before each batch
    assert len(queuedir.scan_flat(str(q), "todo")) == count - preprocessed > 0
    s.release()
    s.wait_log(r"^end msg", count=count)
    assert s.stop() == 0
    assert queue_files(home) == []


def test_held_remote_deliveries_never_hold_back_local_mail(home, send_factory):
    from qpy.send_todo import PREP_AHEAD, TODO_BATCH
    for n in range(PREP_AHEAD + TODO_BATCH + 10):
        queue(MSG, b"joe@a.example", [b"hold.%d@remote.example" % n])
    s = send_factory()
    s.wait_log(r"^starting delivery \d+: msg \d+ to remote hold", count=20)   # all slots held
    time.sleep(0.5)
    local = queue_live(s, MSG, b"joe@a.example", [b"ok.local@test.example"])
    s.wait_log(r"^end msg %d$" % local)                  # while every remote one is held
    assert [c[3] for c in s.commands(0)] == ["ok.local@test.example"]
    s.release()
    s.wait_log(r"^end msg", count=PREP_AHEAD + TODO_BATCH + 11, timeout=60)
    assert s.stop() == 0
    assert queue_files(home) == []


def test_leftovers_of_a_killed_preprocessing_are_removed_first(home, send_factory):
    # A qmail-send killed while preprocessing leaves channel files beside todo/<id>; the
    # next one must unlink them before preprocessing again (docs/queue.md §4 step 2), even for
    # the ids of the last batch of its first todo/ scan, and even when info/ is missing.
    msgid = queue(MSG, b"joe@a.example", [b"ok.real@test.example"])
    qfile(home, queuedir.remote(msgid)).write_bytes(b"Tstale@remote.example\0")
    s = send_factory()
    s.wait_log(r"^end msg %d$" % msgid)
    assert s.stop() == 0
    assert [c[3] for c in s.commands(0)] == ["ok.real@test.example"]
    assert s.commands(1) == []                                 # the stale recipient is gone
    assert queue_files(home) == []
