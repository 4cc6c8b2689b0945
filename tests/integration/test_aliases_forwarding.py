"""qmail-local running dot-forward and fastforward from .qmail lines, into the real queue.

qmail-local runs ``|prog`` lines through /bin/sh with the inherited PATH, so PATH starts
with the instance's bin/ as qmail-start's boot scripts arrange.
"""
from __future__ import annotations

import mailbox
import os
import subprocess

from conftest import run, unsrs

MESSAGE = b"Subject: e2e\n\nhello\n"
DEFAULT_DELIVERY = "|dot-forward .forward\n./Maildir/\n"


def qmail_local(home, homedir, user, local, dash, ext, defaultdelivery, tmp_path):
    msg = tmp_path / "msg"
    msg.write_bytes(MESSAGE)
    env = dict(os.environ, QMAILHOME=str(home), PATH=f"{home}/bin:{os.environ['PATH']}")
    with open(msg, "rb") as f:
        return subprocess.run([str(home / "bin" / "qmail-local"), "--", user, str(homedir), local,
                               dash, ext, "test.example", "s@x.y", defaultdelivery],
                              stdin=f, env=env, capture_output=True, timeout=60)


def queued(home):
    out = []
    for name in os.listdir(home / "queue" / "todo"):
        n = int(name)
        mess = (home / "queue" / "mess" / str(n % 23) / name).read_bytes()
        records = (home / "queue" / "todo" / name).read_bytes().split(b"\0")
        out.append((mess.split(b"\n", 1)[1], records[2], records[3:-1]))
    return out


def user_home(home, tmp_path):
    homedir = tmp_path / "joe"
    homedir.mkdir(mode=0o755)
    assert run(home, "maildirmake", [str(homedir / "Maildir")]).returncode == 0
    return homedir


def test_dot_forward_then_maildir(home, tmp_path):
    homedir = user_home(home, tmp_path)
    # No .forward: dot-forward exits 0 and ./Maildir/ gets the message.
    r = qmail_local(home, homedir, "joe", "joe", "", "", DEFAULT_DELIVERY, tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(mailbox.Maildir(str(homedir / "Maildir"), create=False)) == 1
    assert queued(home) == []
    # Forward only: dot-forward exits 99, the Maildir line is skipped.
    (homedir / ".forward").write_bytes(b"away@elsewhere.example\n")
    r = qmail_local(home, homedir, "joe", "joe", "", "", DEFAULT_DELIVERY, tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(mailbox.Maildir(str(homedir / "Maildir"), create=False)) == 1
    [(mess, sender, rcpts)] = queued(home)
    assert (unsrs(sender[1:]), rcpts) == (b"s@x.y", [b"Taway@elsewhere.example"])
    assert mess == b"Delivered-To: joe@test.example\n" + MESSAGE
    # Forward and keep a copy (\joe): both happen.
    (homedir / ".forward").write_bytes(b"\\joe, copy@elsewhere.example\n")
    r = qmail_local(home, homedir, "joe", "joe", "", "", DEFAULT_DELIVERY, tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(mailbox.Maildir(str(homedir / "Maildir"), create=False)) == 2
    assert sorted(q[2] for q in queued(home)) == [[b"Taway@elsewhere.example"],
                                                   [b"Tcopy@elsewhere.example"]]


def test_fastforward_in_the_alias_default(home, tmp_path):
    aliases = tmp_path / "aliases"
    aliases.write_bytes(b"postmaster: joe, ops@far.example\nowner-postmaster: joe\n")
    assert run(home, "newaliases", ["-f", str(aliases)]).returncode == 0
    alias_home = tmp_path / "alias"
    alias_home.mkdir(mode=0o755)
    (alias_home / ".qmail-default").write_text(f"| fastforward -d {aliases}.cdb\n")
    r = qmail_local(home, alias_home, "alias", "postmaster", "-", "postmaster", "./Mailbox",
                    tmp_path)
    assert r.returncode == 0, r.stderr
    [(mess, sender, rcpts)] = queued(home)
    assert sender == b"Fowner-postmaster@test.example"
    assert sorted(rcpts) == [b"Tjoe@test.example", b"Tops@far.example"]
    assert mess == b"Delivered-To: postmaster@test.example\n" + MESSAGE
    # An unknown name bounces with fastforward's text.
    r = qmail_local(home, alias_home, "alias", "nobody", "-", "nobody", "./Mailbox", tmp_path)
    assert r.returncode == 100
    assert b"Sorry, no mailbox here by that name. (#5.1.1)" in r.stdout + r.stderr
