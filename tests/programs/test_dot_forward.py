"""dot-forward: ~/.forward obeyed from a .qmail line, as qmail-local runs it (cwd = home)."""
from __future__ import annotations

import mailbox
import os
import subprocess

from conftest import unsrs

MESSAGE = b"Subject: forwarded\n\nhello\n"


def deliver(home, homedir, args=(".forward",), env=None):
    full = {"PATH": os.environ["PATH"], "QMAILHOME": str(home), "USER": "joe",
            "HOST": "test.example", "LOCAL": "joe", "RECIPIENT": "joe@test.example",
            "SENDER": "s@x.y", "NEWSENDER": "s@x.y", "DTLINE": "Delivered-To: joe@test.example\n",
            "RPLINE": "Return-Path: <s@x.y>\n", "UFLINE": "From s@x.y Thu Jan  1 00:00:00 1970\n",
            **(env or {})}
    msg = homedir / "message"
    msg.write_bytes(MESSAGE)
    with open(msg, "rb") as f:
        return subprocess.run([str(home / "bin" / "dot-forward"), *args], stdin=f, env=full,
                              cwd=homedir, capture_output=True, timeout=60)


def queued(home):
    out = []
    for name in os.listdir(home / "queue" / "todo"):
        n = int(name)
        mess = (home / "queue" / "mess" / str(n % 23) / name).read_bytes()
        records = (home / "queue" / "todo" / name).read_bytes().split(b"\0")
        out.append((mess.split(b"\n", 1)[1], records[2], records[3:-1]))
    return out


def test_forwards_and_exits_99(home, tmp_path):
    (tmp_path / ".forward").write_bytes(b"# where my mail goes\nme@elsewhere.example, friend\n")
    r = deliver(home, tmp_path)
    assert r.returncode == 99, r.stderr
    assert r.stderr.startswith(b"dot-forward: info: qp ")
    [(mess, sender, rcpts)] = queued(home)
    assert mess == b"Delivered-To: joe@test.example\n" + MESSAGE
    assert unsrs(sender[1:]) == b"s@x.y"
    assert sorted(rcpts) == [b"Tfriend@test.example", b"Tme@elsewhere.example"]


def test_no_or_empty_forward_file_lets_the_next_line_deliver(home, tmp_path):
    assert deliver(home, tmp_path).returncode == 0
    (tmp_path / ".forward").write_bytes(b"# nothing\n\n")
    assert deliver(home, tmp_path).returncode == 0
    assert queued(home) == []


def test_own_address_keeps_a_local_copy(home, tmp_path):
    (tmp_path / ".forward").write_bytes(b"\\joe, copy@x.y\n")
    r = deliver(home, tmp_path)
    assert r.returncode == 0
    [(_, _, rcpts)] = queued(home)
    assert rcpts == [b"Tcopy@x.y"]
    (tmp_path / ".forward").write_bytes(b"Joe@Test.Example\n")
    assert deliver(home, tmp_path).returncode == 0
    assert len(queued(home)) == 1


def test_programs_and_files(home, tmp_path):
    out = tmp_path / "prog-out"
    (tmp_path / "md" / "new").mkdir(parents=True)
    (tmp_path / "md" / "cur").mkdir()
    (tmp_path / "md" / "tmp").mkdir()
    (tmp_path / ".forward").write_bytes(
        f'"|cat > {out}", {tmp_path}/saved.mbox, {tmp_path}/md/\n'.encode())
    r = deliver(home, tmp_path)
    assert r.returncode == 99, r.stderr
    assert out.read_bytes() == (b"From s@x.y Thu Jan  1 00:00:00 1970\nReturn-Path: <s@x.y>\n"
                                b"Delivered-To: joe@test.example\n" + MESSAGE)
    [m] = list(mailbox.mbox(str(tmp_path / "saved.mbox")))
    assert m["Subject"] == "forwarded"
    [md] = list(mailbox.Maildir(str(tmp_path / "md"), create=False))
    assert md["Delivered-To"] == "joe@test.example"
    assert queued(home) == []


def test_failures(home, tmp_path):
    (tmp_path / ".forward").write_bytes(b'"|exit 100"\n')
    assert deliver(home, tmp_path).returncode == 100
    (tmp_path / ".forward").write_bytes(b'"|exit 1"\n')
    assert deliver(home, tmp_path).returncode == 111
    (tmp_path / ".forward").write_bytes(b"a@b (unclosed\n")
    r = deliver(home, tmp_path)
    assert (r.returncode, r.stderr) == (
        111, b"dot-forward: fatal: unable to parse this line: a@b (unclosed\n")
    (tmp_path / ".forward").write_bytes(b":include:/etc/list\n")
    assert deliver(home, tmp_path).returncode == 111
    assert deliver(home, tmp_path, args=("-x",)).returncode == 100
    assert queued(home) == []


def test_dry_run(home, tmp_path):
    (tmp_path / ".forward").write_bytes(b'a@b.c, "|true"\n')
    r = deliver(home, tmp_path, args=("-n", ".forward"))
    assert r.returncode == 99
    assert r.stderr == b"pipe through true\nforward a@b.c\n"
