"""qmail-inject: header fixing and envelopes against golden files, printed (-n) and really queued.

Each case runs ``bin/qmail-inject`` twice on ``tests/data/qmail-inject/<input>.in``:
with ``-n`` (output compared with ``<case>.ref``) and for real into the instance's
queue, where the todo file's envelope must equal ``<case>.env`` and the queued
message (after qmail-queue's Received line) must equal the printed one minus its
Return-Path line.  Date and Message-ID values change per run and are normalized.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from conftest import control, run
from qpy import envelope

DATA = Path(__file__).resolve().parent.parent / "data" / "qmail-inject"

# case: (input, args, environment)
CASES = {
    "basic": ("basic", [], {"USER": "joe"}),
    "resent": ("resent", [], {"USER": "joe", "NAME": "Joe Q. Public"}),
    "args": ("args", ["a", "b@c.d"], {"LOGNAME": "lg"}),
    "args-h": ("args", ["-h", "a", "b@c.d"], {}),
    "args-H": ("basic", ["-H", "extra"], {"USER": "joe"}),
    "args-a": ("basic", ["-a", "only@x.y"], {"USER": "joe"}),
    "sender-f": ("basic", ["-f", "bounce box", "-a", "z@z.z"], {"USER": "joe"}),
    "returnpath": ("returnpath", [], {"USER": "joe"}),
    "returnpath-s": ("returnpath", [], {"USER": "joe", "QMAILINJECT": "s"}),
    "mbox": ("mbox", ["r@x.y"], {"USER": "joe"}),
    "nonewline": ("nonewline", [], {"USER": "joe"}),
    "addresses": ("addresses", [], {"USER": "joe"}),
    "folding": ("folding", [], {"USER": "joe"}),
    "flags-fic": ("flags", [], {"USER": "joe", "NAME": "Joe (the) User", "QMAILINJECT": "fic"}),
    "env-names": ("args", ["r@x.y"], {"USER": "joe", "QMAILUSER": "qu", "MAILHOST": "mh.example",
                                      "MAILNAME": "Mail Name", "QMAILSUSER": "su",
                                      "QMAILSHOST": "sh.example"}),
    "verp-r": ("args", ["r@x.y"], {"USER": "joe", "QMAILINJECT": "r"}),
    "verp-m": ("args", ["r@x.y"], {"USER": "joe", "QMAILINJECT": "m"}),
    "mft": ("mft", [], {"USER": "joe", "QMAILMFTFILE": "MFTFILE"}),
    "badto": ("badto", [], {"USER": "joe"}),
    "controls": ("addresses", [], {"USER": "joe", "QMAILPLUSDOMAIN": "plus.env"}),
}
NO_RECIPIENTS = {"args-h"}      # printed with -n; not queued
CONTROLS = {"controls": {"defaulthost": "dhost", "defaultdomain": "dom.example",
                         "plusdomain": "ignored.example", "idhost": "ids.example"}}
CLEAR = ("USER", "LOGNAME", "NAME", "MAILNAME", "MAILUSER", "MAILHOST", "QMAILUSER", "QMAILHOST",
         "QMAILNAME", "QMAILSUSER", "QMAILSHOST", "QMAILINJECT", "QMAILMFTFILE", "QMAILQUEUE",
         "QMAILDEFAULTDOMAIN", "QMAILDEFAULTHOST", "QMAILPLUSDOMAIN", "QMAILIDHOST")

DATE = re.compile(rb"^((?:Resent-)?Date: )\d{1,2} [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d -0000$", re.M)
MSGID = re.compile(rb"^((?:Resent-)?Message-ID: <)\d{14}\.\d+\.qmail@", re.M)
VERP_M = re.compile(rb"-\d+\.\d+@")


def normalize(data: bytes) -> bytes:
    data = DATE.sub(rb"\1DATE", data)
    data = MSGID.sub(rb"\1STAMP.PID.qmail@", data)
    return VERP_M.sub(b"-TIME.PID@", data)


def inject(home, case: str, extra: list[str], tmp_path) -> tuple[bytes, object]:
    source, args, env = CASES[case]
    full_env = dict(os.environ)
    for name in CLEAR:
        full_env.pop(name, None)
    full_env.update(env)
    if "QMAILMFTFILE" in env:
        mft = tmp_path / "mft"
        mft.write_bytes(b"# lists\nList@Lists.Example\n")
        full_env["QMAILMFTFILE"] = str(mft)
    for name, text in CONTROLS.get(case, {}).items():
        control(home, name, text + "\n")
    r = run(home, "qmail-inject", extra + args, input=(DATA / f"{source}.in").read_bytes(),
            env=full_env)
    return r.stderr, r


def queued(home) -> list[tuple[bytes, envelope.Envelope]]:
    """(message after the Received line, envelope) of every queued message."""
    out = []
    for name in os.listdir(home / "queue" / "todo"):
        n = int(name)
        mess = (home / "queue" / "mess" / str(n % 23) / name).read_bytes()
        assert mess.startswith(b"Received: (qmail ")
        todo = (home / "queue" / "todo" / name).read_bytes()
        records = envelope.records(todo)
        assert records[0].startswith(b"u") and records[1].startswith(b"p")
        env = envelope.decode(b"\0".join(records[2:]) + b"\0\0")
        out.append((mess.split(b"\n", 1)[1], env))
    return out


def env_text(env: envelope.Envelope) -> bytes:
    return b"F" + env.sender + b"\n" + b"".join(b"T" + r + b"\n" for r in env.recipients)


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(home, case, tmp_path):
    err, r = inject(home, case, ["-n"], tmp_path)
    assert (r.returncode, err) == (0, b"")
    printed = normalize(r.stdout)
    assert printed == (DATA / f"{case}.ref").read_bytes()

    err, r = inject(home, case, [], tmp_path)
    if case in NO_RECIPIENTS:       # queued, it would vanish: refused (issue 14)
        assert (r.returncode, err) == (100, b"qmail-inject: fatal: no recipients\n")
        assert queued(home) == []
        return
    assert (r.returncode, err) == (0, b"")
    [(message, env)] = queued(home)
    assert normalize(env_text(env)) == (DATA / f"{case}.env").read_bytes()
    assert printed.startswith(b"Return-Path: <")
    assert normalize(message) == printed.split(b"\n", 1)[1]


def test_message_id_and_date_describe_the_same_moment(home, tmp_path):
    _, r = inject(home, "args", ["-n"], tmp_path)
    date = re.search(rb"^Date: (\d+) ([A-Z][a-z]{2}) (\d{4}) (\d\d):(\d\d):(\d\d) -0000$", r.stdout, re.M)
    msgid = re.search(rb"^Message-ID: <(\d{4})(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)\.(\d+)\.qmail@test\.example>$",
                      r.stdout, re.M)
    months = b"JanFebMarAprMayJunJulAugSepOctNovDec"
    assert date and msgid
    assert msgid.group(1) == date.group(3)
    assert int(msgid.group(2)) == months.index(date.group(2)) // 3 + 1
    assert int(msgid.group(3)) == int(date.group(1))
    assert msgid.groups()[3:6] == date.groups()[3:6]


def test_default_controls_fall_back_to_me_then_literals(home, tmp_path):
    (home / "control" / "me").unlink()
    _, r = inject(home, "args", ["-n"], tmp_path)
    assert b"From: lg@defaulthost.defaultdomain\n" in r.stdout
    assert b".qmail@idhost>\n" in r.stdout


@pytest.mark.parametrize("message,text", [
    (b"From: (unbalanced\n\n", b"qmail-inject: fatal: unable to parse this line:\nFrom: (unbalanced\n"),
    (b"Sender: a>\n\n", b"qmail-inject: fatal: unable to parse this line:\nSender: a>\n"),
    (b"Return-Path: a; b;\n\n", b"qmail-inject: fatal: unable to parse this line:\nReturn-Path: a; b;\n"),
])
def test_unparsable_sender_fields_are_permanent_errors(home, message, text):
    r = run(home, "qmail-inject", ["x@y.z"], input=message)
    assert (r.returncode, r.stderr) == (100, text)
    assert os.listdir(home / "queue" / "todo") == []


def test_bad_arguments(home):
    r = run(home, "qmail-inject", ["-x"], input=b"\n")
    assert r.returncode == 100 and r.stderr.startswith(b"qmail-inject: usage: ")
    r = run(home, "qmail-inject", ["a@(x"], input=b"\n")
    assert (r.returncode, r.stderr) == (100, b"qmail-inject: fatal: unable to parse address: a@(x\n")
    r = run(home, "qmail-inject", ["-f", 'a@"x'], input=b"\n")
    assert r.returncode == 100 and b"unable to parse this line" in r.stderr


def test_queue_failure_is_reported_with_its_code(home, tmp_path):
    fake = tmp_path / "fake-qq"
    fake.write_text("#!/bin/sh\ncat >/dev/null\nexit 11\n")
    fake.chmod(0o755)
    r = run(home, "qmail-inject", ["a@b.c"], input=b"Subject: x\n\n", env={"QMAILQUEUE": str(fake)})
    assert (r.returncode, r.stderr) == (
        100, b"qmail-inject: fatal: envelope address too long for qq (#5.1.3)\n")
    fake.write_text("#!/bin/sh\ncat >/dev/null\nexit 53\n")
    r = run(home, "qmail-inject", ["a@b.c"], input=b"Subject: x\n\n", env={"QMAILQUEUE": str(fake)})
    assert (r.returncode, r.stderr) == (111, b"qmail-inject: fatal: qq write error or disk full (#4.3.0)\n")


def test_qmailqueue_gets_message_and_envelope(home, tmp_path):
    fake = tmp_path / "fake-qq"
    out = tmp_path / "seen"
    fake.write_text(f"#!/bin/sh\ncat > {out}.msg\ncat <&1 > {out}.env\nexit 0\n")
    fake.chmod(0o755)
    r = run(home, "qmail-inject", ["-f", "s@x.y", "a@b.c"], input=b"Subject: x\n\nbody\n",
            env={"QMAILQUEUE": str(fake), "USER": "u"})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "seen.env").read_bytes() == b"Fs@x.y\0Ta@b.c\0\0"
    msg = (tmp_path / "seen.msg").read_bytes()
    assert msg.endswith(b"Cc: recipient list not shown: ;\nSubject: x\n\nbody\n")


def test_big_body_streams_through(home):
    body = b"".join(b"line %07d\n" % i for i in range(200000))
    r = run(home, "qmail-inject", ["a@b.c"], input=b"Subject: big\n\n" + body + b"tail")
    assert r.returncode == 0, r.stderr
    [(message, _)] = queued(home)
    assert message.endswith(b"\n\n" + body + b"tail\n")
