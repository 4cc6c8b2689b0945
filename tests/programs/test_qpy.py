"""qpy init: the instance layout, owners and modes, as root and as an ordinary user."""
from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

from conftest import ensure_qmail_accounts, need_root
from qpy import auto, hier


def qpy_init(home: Path, *extra: str, user: str | None = None) -> subprocess.CompletedProcess:
    """Run ``qpy init`` as a real subprocess, optionally as another user."""
    preexec = None
    if user is not None:
        pw = pwd.getpwnam(user)
        def preexec() -> None:
            os.setgroups([])
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
    code = "import sys; from qpy.programs.qpy import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, "init", "--home", str(home), *extra],
                          capture_output=True, preexec_fn=preexec, timeout=60,
                          env=dict(os.environ, HOME="/"))


def test_single_user_init_layout(tmp_path):
    home = tmp_path / "inst"
    r = qpy_init(home, "--me", "mail.example.test")
    assert r.returncode == 0, r.stderr
    assert b"single-user" in r.stdout or os.geteuid() == 0
    assert (home / "control" / "me").read_bytes() == b"mail.example.test\n"
    assert (home / "control" / "locals").read_bytes() == b"mail.example.test\n"
    assert (home / "control" / "rcpthosts").read_bytes() == b"mail.example.test\n"
    assert (home / "control" / "concurrencyremote").read_bytes() == b"20\n"
    for n in (0, 22):
        assert (home / "queue" / "mess" / str(n)).is_dir()
    assert not (home / "queue" / "mess" / "23").exists()
    assert stat.S_ISFIFO((home / "queue" / "lock" / "trigger").stat().st_mode)
    assert (home / "queue" / "lock" / "tcpto").read_bytes() == b"\0" * 1024
    assert (home / "queue" / "lock" / "sendmutex").stat().st_size == 0
    for program in hier.PROGRAMS:
        assert os.access(home / "bin" / program, os.X_OK)


def test_init_twice_is_harmless_and_keeps_edited_controls(tmp_path):
    home = tmp_path / "inst"
    assert qpy_init(home, "--me", "a.test").returncode == 0
    (home / "control" / "concurrencylocal").write_bytes(b"3\n")
    (home / "queue" / "todo" / "keep").write_bytes(b"")
    os.chmod(home / "queue" / "todo", 0o777)
    assert qpy_init(home, "--me", "b.test").returncode == 0
    assert (home / "control" / "me").read_bytes() == b"a.test\n"
    assert (home / "control" / "concurrencylocal").read_bytes() == b"3\n"
    assert (home / "queue" / "todo" / "keep").exists()
    assert stat.S_IMODE((home / "queue" / "todo").stat().st_mode) == 0o750


def test_ordinary_user_gets_an_instance_owned_by_itself():
    need_root()
    base = Path(tempfile.mkdtemp(prefix="qpy-user-"))
    try:
        nobody = pwd.getpwnam("nobody")
        os.chown(base, nobody.pw_uid, nobody.pw_gid)
        home = base / "inst"
        r = qpy_init(home, "--me", "u.test", user="nobody")
        assert r.returncode == 0, r.stderr
        assert b"single-user mode" in r.stdout
        for entry in hier.DIRS:
            full = home / entry.path if entry.path else home
            st = full.lstat()
            assert st.st_uid == nobody.pw_uid, entry.path
            assert stat.S_IMODE(st.st_mode) == entry.mode, entry.path
    finally:
        subprocess.run(["rm", "-rf", str(base)])


def test_root_with_accounts_gets_qmail_owners_and_modes():
    ensure_qmail_accounts()
    base = Path(tempfile.mkdtemp(prefix="qpy-root-"))
    try:
        home = base / "inst"
        r = qpy_init(home, "--me", "r.test")
        assert r.returncode == 0, r.stderr
        assert b"privileged mode" in r.stdout
        assert hier.check(str(home), priv=True) == []
        qmailq = pwd.getpwnam(auto.QMAILQ).pw_uid
        qmails = pwd.getpwnam(auto.QMAILS).pw_uid
        qmailr = pwd.getpwnam(auto.QMAILR).pw_uid
        assert (home / "queue").stat().st_uid == qmailq
        assert (home / "queue" / "mess" / "7").stat().st_uid == qmailq
        assert (home / "queue" / "info" / "7").stat().st_uid == qmails
        assert (home / "queue" / "lock" / "trigger").stat().st_uid == qmails
        assert stat.S_IMODE((home / "queue" / "lock" / "trigger").stat().st_mode) == 0o622
        assert (home / "queue" / "lock" / "tcpto").stat().st_uid == qmailr
        assert (home / "control").stat().st_uid == 0
        assert stat.S_IMODE((home / "alias").stat().st_mode) == 0o2755
        # Twice is harmless and repairs a broken mode.
        os.chmod(home / "queue" / "intd", 0o777)
        assert qpy_init(home).returncode == 0
        assert hier.check(str(home), priv=True) == []
    finally:
        subprocess.run(["rm", "-rf", str(base)])


def test_unwritable_home_is_a_clear_error():
    need_root()
    base = Path(tempfile.mkdtemp(prefix="qpy-ro-"))
    try:
        os.chmod(base, 0o755)  # nobody cannot write here
        r = qpy_init(base / "inst", user="nobody")
        assert r.returncode == 111
        assert r.stderr.startswith(b"qpy: fatal: unable to create")
        assert r.stderr.count(b"\n") == 1
    finally:
        subprocess.run(["rm", "-rf", str(base)])


def qpy_cmd(*args: str) -> subprocess.CompletedProcess:
    code = "import sys; from qpy.programs.qpy import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, timeout=60)


def test_user_add_writes_assign_cdb_and_maildir(home):
    r = qpy_cmd("user", "add", "Alice", "--home", str(home))
    assert r.returncode == 0, r.stderr
    assert qpy_cmd("user", "add", "bob", "--home", str(home)).returncode == 0
    assert qpy_cmd("user", "add", "alice", "--home", str(home)).returncode == 0  # again: replaced
    text = (home / "users" / "assign").read_bytes()
    assert text.count(b"=alice:") == 1 and text.endswith(b".\n")
    for sub in ("tmp", "new", "cur"):
        assert stat.S_IMODE((home / "users" / "alice" / "Maildir" / sub).stat().st_mode) == 0o700
    from qpy import users
    a = users.lookup(b"Alice-List")
    assert (a.home, a.dash, a.ext) == (str(home / "users" / "alice").encode(), b"-", b"List")
    assert a.uid == os.getuid()
    assert sorted(qpy_cmd("user", "list", "--home", str(home)).stdout.split()) == [b"alice", b"bob"]


def test_user_add_refuses_names_that_could_escape(home):
    for bad in ("../x", "a/b", "", "-x", "a" * 40):
        r = qpy_cmd("user", "add", "--home", str(home), "--", bad)
        assert r.returncode == 100, bad
        assert r.stderr.startswith(b"qpy: fatal: bad user name")
    assert not (home / "users" / "assign").exists()


def test_status_reports_queue_and_not_running(home):
    from qpy import qmailq
    assert qmailq.queue_message(b"x\n", b"a@b", [b"c@d"]) == ""
    r = qpy_cmd("status", "--home", str(home))
    assert r.returncode == 0
    assert b"qmail-send: not running\n" in r.stdout
    assert b"messages in queue: 1\nmessages in queue but not yet preprocessed: 1\n" in r.stdout


def test_status_counts_quarantined_messages_apart(home):
    from qpy import qmailq, queuedir
    for _ in range(2):
        assert qmailq.queue_message(b"x\n", b"a@b", [b"c@d"]) == ""
    q = home / "queue"
    msgid = queuedir.scan_flat(str(q), "todo")[0]
    (q / "quarantine" / str(msgid)).write_bytes(b"unknown record type in todo\n")
    (q / "quarantine" / f"{msgid}.todo").write_bytes((q / "todo" / str(msgid)).read_bytes())
    (q / "todo" / str(msgid)).unlink()
    (q / "intd" / str(msgid)).unlink()
    r = qpy_cmd("status", "--home", str(home))
    assert r.returncode == 0
    assert (b"messages in queue: 1\nmessages in queue but not yet preprocessed: 1\n"
            b"messages in quarantine (corrupt queue files): 1\n") in r.stdout
