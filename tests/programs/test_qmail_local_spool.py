"""qmail-local: ``/var/spool/mail/$USER`` as the default delivery (mbox per user)."""
from __future__ import annotations

import mailbox
import os
import subprocess


def local(home, user_home, spool, user=b"joe"):
    """Run bin/qmail-local with the message on a seekable fd 0, as qmail-lspawn gives it."""
    args = [user.decode(), str(user_home), "joe", "", "", "test.example", "s@x.example",
            f"{spool}/$USER"]
    msg = user_home.parent / "msg"
    msg.write_bytes(b"Subject: spool\n\nbody\n")
    with open(msg, "rb") as f:
        return subprocess.run([str(home / "bin" / "qmail-local"), "--", *args], stdin=f,
                              capture_output=True, timeout=60,
                              env=dict(os.environ, QMAILHOME=str(home)))


def test_spool_mailbox_named_after_the_user(home, tmp_path):
    user_home = tmp_path / "h"
    user_home.mkdir(mode=0o755)
    spool = tmp_path / "spool"
    spool.mkdir()
    r = local(home, user_home, spool)
    assert (r.returncode, r.stdout) == (0, b"did 1+0+0\n"), r.stderr
    box = mailbox.mbox(str(spool / "joe"), create=False)
    [msg] = list(box)
    assert msg["Subject"] == "spool" and msg["Delivered-To"] == "joe@test.example"


def test_a_user_name_that_names_a_directory_is_refused(home, tmp_path):
    user_home = tmp_path / "h"
    user_home.mkdir(mode=0o755)
    spool = tmp_path / "spool"
    spool.mkdir()
    r = local(home, user_home, spool, user=b"..")
    assert r.returncode == 111 and b"$USER" in r.stderr
    assert os.listdir(spool) == []
