"""fastforward: run as qmail-local runs ~alias/.qmail-default, forwarding into the real queue."""
from __future__ import annotations

import mailbox
import os
import subprocess

from conftest import run, unsrs

MESSAGE = b"From: x@y.z\nSubject: to an alias\n\nbody\n"


def build(home, tmp_path, text: bytes) -> str:
    src = tmp_path / "aliases"
    src.write_bytes(text)
    r = run(home, "newaliases", ["-f", str(src)])
    assert r.returncode == 0, r.stderr
    return str(tmp_path / "aliases.cdb")


def deliver(home, tmp_path, args, local="root", sender="s@x.y", env=None, message=MESSAGE):
    """qmail-local's environment for alias-<local>@test.example via ~alias/.qmail-default."""
    full = {"PATH": os.environ["PATH"], "QMAILHOME": str(home), "SENDER": sender,
            "NEWSENDER": sender, "RECIPIENT": f"alias-{local}@test.example", "USER": "alias",
            "LOCAL": f"alias-{local}", "HOST": "test.example", "EXT": local, "DEFAULT": local,
            "DTLINE": f"Delivered-To: alias-{local}@test.example\n",
            "RPLINE": f"Return-Path: <{sender}>\n",
            "UFLINE": f"From {sender or 'MAILER-DAEMON'} Thu Jan  1 00:00:00 1970\n", **(env or {})}
    msg = tmp_path / "message"
    msg.write_bytes(message)
    with open(msg, "rb") as f:
        return subprocess.run([str(home / "bin" / "fastforward"), *args], stdin=f, env=full,
                              capture_output=True, timeout=60)


def queued(home):
    out = []
    for name in os.listdir(home / "queue" / "todo"):
        n = int(name)
        mess = (home / "queue" / "mess" / str(n % 23) / name).read_bytes()
        records = (home / "queue" / "todo" / name).read_bytes().split(b"\0")
        out.append((mess.split(b"\n", 1)[1], records[2], sorted(records[3:-1])))
    return out


def test_alias_chain_is_forwarded_once(home, tmp_path):
    # Full addresses are expanded in place; a loop back to postmaster is cut.
    db = build(home, tmp_path, b"postmaster@test.example: root@test.example\n"
                               b"root@test.example: joe, ops@far.example, postmaster@test.example\n")
    r = deliver(home, tmp_path, ["-d", db], local="postmaster")
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith(b"fastforward: qp ")
    [(mess, sender, rcpts)] = queued(home)
    assert mess == b"Delivered-To: alias-postmaster@test.example\n" + MESSAGE
    assert unsrs(sender[1:]) == b"s@x.y"
    assert rcpts == [b"Tjoe@test.example", b"Tops@far.example"]


def test_bare_names_are_forwarded_through_the_queue(home, tmp_path):
    # "postmaster: root" forwards to root@defaulthost, which comes back to fastforward.
    db = build(home, tmp_path, b"postmaster: root\nroot: joe\n")
    assert deliver(home, tmp_path, ["-d", db], local="postmaster").returncode == 0
    assert [q[2] for q in queued(home)] == [[b"Troot@test.example"]]


def test_pass_through_and_unknown_addresses(home, tmp_path):
    db = build(home, tmp_path, b"root: joe\n")
    r = deliver(home, tmp_path, ["-p", "-d", db])
    assert r.returncode == 99 and len(queued(home)) == 1
    r = deliver(home, tmp_path, ["-p", "-d", db], local="nobody")
    assert (r.returncode, r.stderr) == (0, b"")
    r = deliver(home, tmp_path, ["-d", db], local="nobody")
    assert (r.returncode, r.stderr) == (100, b"Sorry, no mailbox here by that name. (#5.1.1)\n")
    assert len(queued(home)) == 1


def test_recipient_variable_and_wildcards(home, tmp_path):
    db = build(home, tmp_path, b"alias-root@test.example: exact\n@other.example: catchall\n")
    assert deliver(home, tmp_path, [db]).returncode == 0
    r = deliver(home, tmp_path, [db], env={"RECIPIENT": "anyone@other.example"})
    assert r.returncode == 0
    assert sorted(q[2] for q in queued(home)) == [[b"Tcatchall@test.example"],
                                                   [b"Texact@test.example"]]


def test_owner_becomes_the_sender_except_for_bounces(home, tmp_path):
    db = build(home, tmp_path, b"list: a@x.y, b@x.y\nowner-list: listmaster@x.y\n")
    assert deliver(home, tmp_path, ["-d", db], local="list").returncode == 0
    assert deliver(home, tmp_path, ["-d", db], local="list", sender="").returncode == 0
    senders = sorted(q[1] for q in queued(home))
    assert senders == [b"F", b"Fowner-list@test.example"]


def test_programs_files_and_include_lists(home, tmp_path):
    members = tmp_path / "members"
    members.write_bytes(b"# the list\nm1@x.y, m2@x.y\nm3\n")
    members.chmod(0o644)
    seen = tmp_path / "seen"
    mbox_path = tmp_path / "archive.mbox"
    maildir = tmp_path / "md"
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True)
    db = build(home, tmp_path, (
        f'team: :include:{members}, "|cat > {seen}", {mbox_path}, {maildir}/\n').encode())
    r = deliver(home, tmp_path, ["-d", db], local="team")
    assert r.returncode == 0, r.stderr
    # "|prog" from /etc/aliases runs through preline: the envelope lines come first.
    assert seen.read_bytes() == (b"From s@x.y Thu Jan  1 00:00:00 1970\nReturn-Path: <s@x.y>\n"
                                 b"Delivered-To: alias-team@test.example\n" + MESSAGE)
    [msg] = list(mailbox.mbox(str(mbox_path)))
    assert msg["Subject"] == "to an alias" and msg["Delivered-To"] == "alias-team@test.example"
    [mmsg] = list(mailbox.Maildir(str(maildir), create=False))
    assert mmsg["Return-Path"] == "<s@x.y>"
    [(mess, _, rcpts)] = queued(home)
    assert mess.endswith(MESSAGE)
    assert rcpts == [b"Tm1@x.y", b"Tm2@x.y", b"Tm3@test.example"]


def test_failures(home, tmp_path):
    private = tmp_path / "private"
    private.write_bytes(b"a@b.c\n")
    private.chmod(0o600)
    db = build(home, tmp_path, (f'p: "|exit 100"\nt: "|exit 75"\ninc: :include:{private}\n').encode())
    assert deliver(home, tmp_path, ["-d", db], local="p").returncode == 100
    assert deliver(home, tmp_path, ["-d", db], local="t").returncode == 111
    r = deliver(home, tmp_path, ["-d", db], local="inc")
    assert (r.returncode, r.stderr) == (
        111, f"fastforward: fatal: {private} is not world-readable\n".encode())
    r = deliver(home, tmp_path, ["-d", str(tmp_path / "nonexistent.cdb")])
    assert r.returncode == 111
    assert deliver(home, tmp_path, []).returncode == 100
    assert queued(home) == []


def test_dry_run_prints_the_plan(home, tmp_path):
    db = build(home, tmp_path, b'root: joe, "|true"\nowner-root: boss\n')
    r = deliver(home, tmp_path, ["-n", "-d", db])
    assert r.returncode == 0
    assert r.stderr == b"run !true\nfrom <owner-root@test.example>\nto <joe@test.example>\n"
    assert queued(home) == []
