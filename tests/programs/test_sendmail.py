"""sendmail: flag translation to qmail-inject (real queueing), -bs through qmail-smtpd, usage."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import run
from qpy import instance as users

CLEAR = ("USER", "LOGNAME", "NAME", "MAILNAME", "MAILUSER", "MAILHOST", "QMAILUSER", "QMAILHOST",
         "QMAILNAME", "QMAILINJECT", "PROTO", "RELAYCLIENT", "TCPREMOTEIP")


def sendmail(home, args, message, **env):
    full = {k: v for k, v in os.environ.items() if k not in CLEAR}
    full.update(env)
    return run(home, "sendmail", args, input=message, env=full)


def queued(home):
    out = []
    for name in os.listdir(home / "queue" / "todo"):
        n = int(name)
        mess = (home / "queue" / "mess" / str(n % 23) / name).read_bytes()
        records = (home / "queue" / "todo" / name).read_bytes().split(b"\0")
        out.append((mess.split(b"\n", 1)[1], records[2], records[3:-1]))
    return out


def test_arguments_only_by_default_and_ignored_flags(home):
    r = sendmail(home, ["-oi", "-oem", "-v", "-i", "-x", "-m", "-e", "x", "-B8BITMIME", "-p", "s",
                        "-Ejunk", "-bm", "--", "a@x.y", "b"],
                 b"To: header@x.y\nSubject: s\n\nbody\n", USER="joe")
    assert (r.returncode, r.stderr) == (0, b"")
    [(mess, sender, rcpts)] = queued(home)
    assert sender == b"Fjoe@test.example"
    assert rcpts == [b"Ta@x.y", b"Tb@test.example"]
    assert b"\nFrom: joe@test.example\n" in b"\n" + mess


def test_t_adds_header_recipients_and_f_sets_sender_and_from(home):
    r = sendmail(home, ["-t", "-f", "list-bounces@lists.example", "-F", "ignored with -f",
                        "extra@x.y"], b"To: a@x.y\nBcc: b@x.y\n\nbody\n", NAME="Someone")
    assert r.returncode == 0, r.stderr
    [(mess, sender, rcpts)] = queued(home)
    assert sender == b"Flist-bounces@lists.example"
    assert rcpts == [b"Textra@x.y", b"Ta@x.y", b"Tb@x.y"]
    assert b"From: list-bounces@lists.example\n" in mess
    assert b"Bcc" not in mess


def test_F_sets_the_full_name(home):
    r = sendmail(home, ["-F", "Joe Q", "r@x.y"], b"Subject: n\n\n", USER="joe")
    assert r.returncode == 0, r.stderr
    [(mess, _, _)] = queued(home)
    assert b'From: "Joe Q" <joe@test.example>\n' in mess


@pytest.mark.parametrize("args", [["-bz"], ["-f"], ["-zz"], ["-r"], ["-N"]])
def test_usage_errors(home, args):
    r = sendmail(home, args, b"")
    assert r.returncode == 100
    assert r.stderr == (b"sendmail: usage: sendmail [ -t ] [ -fsender ] [ -Fname ] [ -bp ] [ -bs ]"
                        b" [ arg ... ]\n")
    assert queued(home) == []


def test_bs_runs_an_smtp_session_as_a_trusted_local_client(home):
    if not (Path(__file__).resolve().parents[2] / "qpy" / "programs" / "qmail_smtpd.py").exists():
        pytest.skip("qmail-smtpd not written yet")
    session = (b"HELO me\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@far.example>\r\nDATA\r\n"
               b"Subject: bs\r\n\r\nhi\r\n.\r\nQUIT\r\n")
    r = sendmail(home, ["-bs"], session)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split(b"\r\n")
    assert lines[0].startswith(b"220 ")
    assert [line[:3] for line in lines[1:-1]] == [b"250", b"250", b"250", b"354", b"250", b"221"]
    [(mess, sender, rcpts)] = queued(home)
    assert (sender, rcpts) == (b"Fa@b.c", [b"Tx@far.example"])   # relaying allowed: RELAYCLIENT=""
    assert b"(sendmail-bs@127.0.0.1)" in mess
    assert mess.endswith(b"Subject: bs\n\nhi\n")


def test_unreachable_home(home):
    r = sendmail(home, ["a@b.c"], b"", QMAILHOME=str(home / "missing"))
    assert (r.returncode, r.stderr) == (
        111, b"sendmail: fatal: unable to switch to qmail home directory\n")


@pytest.mark.parametrize("flags", [
    ["-N", "success,delay"], ["-Nnever"], ["-R", "hdrs"], ["-V", "envid-1"], ["-U"], ["-G"],
    ["-L", "tag"], ["-h", "20"], ["-O", "DeliveryMode=b"], ["-Am"], ["-Ac"], ["-X", "/dev/null"],
    ["-C", "/etc/mail/sendmail.cf"], ["-n"], ["-oA/etc/aliases"], ["-o7"], ["-o8"], ["-om"],
    ["-B", "8BITMIME"], ["-bm"], ["-q1h"], ["-FCronDaemon", "-i", "-B8BITMIME", "-oem"]])
def test_flags_that_programs_pass_are_accepted(home, flags):
    """Every flag Postfix's sendmail(1) documents (neomutt's DSN flags, cron's, -X, -C …)."""
    r = sendmail(home, [*flags, "r@x.y"], b"Subject: f\n\nbody\n", USER="joe")
    assert (r.returncode, r.stderr) == (0, b""), flags
    [(mess, sender, rcpts)] = queued(home)
    assert (sender, rcpts) == (b"Fjoe@test.example", [b"Tr@x.y"])
    assert mess.endswith(b"Subject: f\n\nbody\n")


@pytest.mark.parametrize("flag", [["-r", "bounces@lists.example"], ["-rbounces@lists.example"]])
def test_r_is_f(home, flag):
    r = sendmail(home, [*flag, "r@x.y"], b"Subject: r\n\n")
    assert r.returncode == 0, r.stderr
    [(mess, sender, _)] = queued(home)
    assert sender == b"Fbounces@lists.example"
    assert b"From: bounces@lists.example\n" in mess


@pytest.mark.parametrize("args,message", [
    ([], b"Subject: none\n\nbody\n"),
    (["-t"], b"Subject: none\nFrom: a@x.y\n\nbody\n"),
    (["-t", "-i"], b"Subject: none\nTo: \n\nbody\n")])
def test_no_recipients_is_an_error_and_queues_nothing(home, args, message):
    r = sendmail(home, args, message)
    assert r.returncode == 100
    assert r.stderr == b"qmail-inject: fatal: no recipients\n"
    assert queued(home) == []


@pytest.mark.parametrize("flag", ["-bd", "-bl", "-bh", "-bH"])
def test_daemon_and_host_status_modes_do_nothing(home, flag):
    r = sendmail(home, [flag], b"Subject: x\n\n")
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    assert queued(home) == []


def test_q_without_a_running_qmail_send_says_so(home):
    r = sendmail(home, ["-q"], b"")
    assert r.returncode == 111
    assert r.stderr == b"sendmail: fatal: qmail-send is not running\n"


def test_bt_prints_where_each_address_goes(home):
    (home / "control" / "virtualdomains").write_bytes(b"virt.example:joe\n")
    r = sendmail(home, ["-bt", "u@test.example", "x@virt.example", "far@remote.example", "bare"],
                 b"")
    assert (r.returncode, r.stderr) == (0, b"")
    assert r.stdout == (b"u@test.example: local u@test.example\n"
                        b"x@virt.example: local joe-x@virt.example\n"
                        b"far@remote.example: remote far@remote.example\n"
                        b"bare: local bare@test.example\n")


def test_bv_checks_each_recipient(home):
    users.add_user(str(home), b"u")
    r = sendmail(home, ["-bv", "u@test.example", "nobody-here@test.example", "far@remote.example"],
                 b"")
    assert r.returncode == 1
    assert r.stdout == (b"u@test.example: deliverable\n"
                        b"nobody-here@test.example: undeliverable: no mailbox here by that name\n"
                        b"far@remote.example: deliverable (remote)\n")
