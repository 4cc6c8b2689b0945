"""qpy.maildir: delivery read back with mailbox.Maildir."""
from __future__ import annotations

import mailbox
import os
import re

import pytest

from qpy import maildir
from qpy.errors import TempFail


def make(path):
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True)
    return path


def test_deliver_from_the_current_offset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make(tmp_path / "Maildir")
    msg = tmp_path / "msg"
    msg.write_bytes(b"skip\nSubject: s\n\nbody\n")
    with open(msg, "rb") as f:
        f.seek(5)
        name = maildir.deliver(b"Maildir", b"Return-Path: <a@b>\n", f.fileno())
        f.seek(5)
        name2 = maildir.deliver(b"Maildir", b"", f.fileno())
    assert name != name2         # same second, same pid: the second name has a _<n> suffix
    assert re.fullmatch(rb"\d+\.\d+(_\d+)?\.[^/:]+", name)
    assert re.fullmatch(rb"\d+\.\d+_\d+\.[^/:]+", name2)
    md = mailbox.Maildir(str(tmp_path / "Maildir"), factory=None, create=False)
    assert sorted(md.get_bytes(k) for k in md.keys()) == [
        b"Return-Path: <a@b>\nSubject: s\n\nbody\n", b"Subject: s\n\nbody\n"]
    assert os.listdir(tmp_path / "Maildir" / "tmp") == []


def test_hostname_is_safe():
    assert b"/" not in maildir.hostname() and b":" not in maildir.hostname()


def test_missing_maildir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(maildir.NoMaildir):
        maildir.deliver(b"nope", b"", 0)


def test_missing_tmp_is_temporary_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "Maildir" / "new").mkdir(parents=True)
    msg = tmp_path / "msg"
    msg.write_bytes(b"x\n")
    with open(msg, "rb") as f, pytest.raises(TempFail, match="Temporary error on maildir"):
        maildir.deliver(b"Maildir", b"", f.fileno())
    assert os.listdir(tmp_path / "Maildir" / "new") == []
