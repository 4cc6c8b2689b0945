"""maildir2mbox: maildir messages appended to an mbox, read back with mailbox.mbox."""
from __future__ import annotations

import mailbox
import os
import subprocess


def make_maildir(path, messages):
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True)
    names = []
    for i, (sub, data) in enumerate(messages):
        name = f"{1000 + i}.{i}.host" + (":2," if sub == "cur" else "")
        (path / sub / name).write_bytes(data)
        os.utime(path / sub / name, (1000000000 + i, 1000000000 + i))
        names.append(path / sub / name)
    return names


def convert(home, tmp_path, env=None):
    full = {"PATH": os.environ["PATH"], "MAILDIR": str(tmp_path / "Maildir"),
            "MAIL": str(tmp_path / "mbox"), "MAILTMP": str(tmp_path / "mbox.tmp"), **(env or {})}
    return subprocess.run([str(home / "bin" / "maildir2mbox")], env=full, capture_output=True,
                          timeout=60)


def test_messages_move_to_the_mbox_in_order(home, tmp_path):
    (tmp_path / "mbox").write_bytes(b"From old@x Thu Jan  1 00:00:00 1970\nSubject: old\n\nold\n\n")
    names = make_maildir(tmp_path / "Maildir", [
        ("new", b"Return-Path: <a b@x.y>\nSubject: one\n\nFrom the start\n>From quoted\n"),
        ("cur", b"Return-Path: <>\nSubject: two\n\nno final newline"),
        ("new", b"Subject: three\n\nbody\n"),
    ])
    (tmp_path / "Maildir" / "tmp" / "stale").write_bytes(b"x")
    os.utime(tmp_path / "Maildir" / "tmp" / "stale", (0, 0))
    r = convert(home, tmp_path)
    assert (r.returncode, r.stderr) == (0, b"")
    assert not any(n.exists() for n in names)
    assert not (tmp_path / "Maildir" / "tmp" / "stale").exists()
    data = (tmp_path / "mbox").read_bytes()
    assert data == (b"From old@x Thu Jan  1 00:00:00 1970\nSubject: old\n\nold\n\n"
                    b"From a-b@x.y Sun Sep 09 01:46:40 2001\nReturn-Path: <a b@x.y>\nSubject: one\n\n"
                    b">From the start\n>>From quoted\n\n"
                    b"From MAILER-DAEMON Sun Sep 09 01:46:41 2001\nReturn-Path: <>\nSubject: two\n\n"
                    b"no final newline\n\n"
                    b"From XXX Sun Sep 09 01:46:42 2001\nSubject: three\n\nbody\n\n")
    box = mailbox.mbox(str(tmp_path / "mbox"), create=False)
    assert [m["Subject"] for m in box] == ["old", "one", "two", "three"]
    assert box[1].get_payload() == ">From the start\n>>From quoted\n"
    assert (tmp_path / "mbox").stat().st_mode & 0o777 == 0o600


def test_nothing_new_leaves_everything_alone(home, tmp_path):
    make_maildir(tmp_path / "Maildir", [])
    r = convert(home, tmp_path)
    assert r.returncode == 0 and not (tmp_path / "mbox").exists()


def test_missing_variables_and_maildir(home, tmp_path):
    r = subprocess.run([str(home / "bin" / "maildir2mbox")], env={"PATH": os.environ["PATH"]},
                       capture_output=True, timeout=60)
    assert (r.returncode, r.stderr) == (111, b"maildir2mbox: fatal: MAIL not set\n")
    r = convert(home, tmp_path)
    assert r.returncode == 111 and r.stderr.startswith(b"maildir2mbox: fatal: unable to chdir to ")


def test_unwritable_tmp_keeps_the_maildir(home, tmp_path):
    names = make_maildir(tmp_path / "Maildir", [("new", b"Subject: keep\n\nx\n")])
    r = convert(home, tmp_path, env={"MAILTMP": str(tmp_path / "no" / "such" / "dir")})
    assert r.returncode == 111 and r.stderr.startswith(b"maildir2mbox: fatal: unable to create ")
    assert all(n.exists() for n in names)
