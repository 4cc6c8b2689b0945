"""maildirmake: a maildir with tmp/new/cur, all mode 700, readable by mailbox.Maildir."""
from __future__ import annotations

import mailbox
import os
import stat

from conftest import run


def test_creates_the_three_directories_with_mode_700(home, tmp_path):
    target = tmp_path / "Maildir"
    r = run(home, "maildirmake", [str(target)], preexec_fn=lambda: os.umask(0))
    assert (r.returncode, r.stderr) == (0, b"")
    for d in (target, target / "tmp", target / "new", target / "cur"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert sorted(os.listdir(target)) == ["cur", "new", "tmp"]
    assert len(mailbox.Maildir(str(target), create=False)) == 0


def test_existing_directory_and_usage(home, tmp_path):
    (tmp_path / "there").mkdir()
    r = run(home, "maildirmake", [str(tmp_path / "there")])
    assert r.returncode == 111
    assert r.stderr == f"maildirmake: fatal: unable to mkdir {tmp_path}/there: File exists\n".encode()
    assert os.listdir(tmp_path / "there") == []
    assert run(home, "maildirmake", []).returncode == 100
