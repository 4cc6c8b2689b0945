"""maildrop/ and qmail-pickup: users submit while the daemons are stopped (root only).

An ordinary account runs the instance's bin/qmail-queue with no qmail-queued
running; qmail-pickup (started as root, it becomes qmailq) queues the file as
its owner.  Attacks on the drop directory are made by real ordinary accounts.
"""
from __future__ import annotations

import os
import pwd
import re
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from localusers import SECOND_USER, ensure_user, run_python, submit, uid_of_process, wait_for
from qpy import maildrop
from qpy.auto import SPLIT

MESSAGE = b"From: u@example.test\nSubject: dropped\n\nbody\n\x00\xff\n"
ENVELOPE = b"Fu@example.test\0Tr1@example.test\0Tr2@example.test\0\0"
RECEIVED = re.compile(rb"^Received: \(qmail (\d+) invoked (.+?)\); "
                      rb"\d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d -0000\n")


def pickup(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(home / "bin" / "qmail-pickup"), *args], capture_output=True, timeout=120,
                          env=dict(os.environ, QMAILHOME=str(home)))


def drops(home: Path) -> list[str]:
    return sorted(os.listdir(home / "maildrop"))


def queued(home: Path) -> list[tuple[bytes, bytes, os.stat_result]]:
    out = []
    for name in os.listdir(home / "queue" / "todo"):
        mess = home / "queue" / "mess" / str(int(name) % SPLIT) / name
        out.append((mess.read_bytes(), (home / "queue" / "todo" / name).read_bytes(), mess.stat()))
    return out


def write_as(user: str, path: Path, data: bytes, mode: int = 0o640) -> None:
    """Create a file as ``user`` (so it has that owner, as an attacker's file would)."""
    r = run_python(user, "import os, sys\n"
                   "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)\n"
                   "os.fchmod(fd, int(sys.argv[2], 8))\n"
                   "os.write(fd, sys.stdin.buffer.read())", str(path), oct(mode)[2:], input=data)
    assert r.returncode == 0, r.stderr


def drop_file(message: bytes, envelope: bytes) -> bytes:
    return maildrop.header(len(message)) + message + envelope


def test_submission_while_stopped_lands_in_maildrop_and_pickup_queues_it(priv_home):
    nobody = pwd.getpwnam("nobody")
    code, pid, err = submit(priv_home, "nobody", MESSAGE, ENVELOPE)
    assert (code, err) == (0, b"")
    assert os.listdir(priv_home / "queue" / "todo") == []
    [name] = drops(priv_home)
    assert maildrop.FINAL.match(name)
    st = (priv_home / "maildrop" / name).stat()
    assert (st.st_uid, st.st_gid) == (nobody.pw_uid, pwd.getpwnam("qmailq").pw_gid)
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert (priv_home / "maildrop" / name).read_bytes() == drop_file(MESSAGE, ENVELOPE)

    r = pickup(priv_home, "once")
    assert r.returncode == 0, r.stderr
    assert r.stderr == b"qmail-pickup: queued maildrop/%s (uid %d)\n" % (name.encode(), nobody.pw_uid)
    assert drops(priv_home) == []
    [(mess, todo, mst)] = queued(priv_home)
    m = RECEIVED.match(mess)
    assert m and m.group(2) == b"by uid %d" % nobody.pw_uid
    assert mess[m.end():] == MESSAGE
    assert todo == b"u%d\0p%s\0Fu@example.test\0Tr1@example.test\0Tr2@example.test\0" % (
        nobody.pw_uid, m.group(1))
    assert mst.st_uid == pwd.getpwnam("qmailq").pw_uid


def test_the_owner_is_the_sender_whatever_the_file_says(priv_home):
    """A file written by hand that claims another uid still queues as its owner."""
    nobody = pwd.getpwnam("nobody").pw_uid
    liar = b"Received: (qmail 1 invoked for bounce); 1 Jan 2000 00:00:00 -0000\nu0\0p1\0"
    write_as("nobody", priv_home / "maildrop" / maildrop.final_name(), drop_file(liar, b"F\0Tx@y\0\0"))
    assert pickup(priv_home, "once").returncode == 0
    [(mess, todo, _)] = queued(priv_home)
    assert RECEIVED.match(mess).group(2) == b"by uid %d" % nobody
    assert todo.startswith(b"u%d\0p" % nobody) and todo.endswith(b"\0F\0Tx@y\0")


def test_another_user_can_neither_list_nor_read_a_pending_drop(priv_home):
    ensure_user(SECOND_USER)
    assert submit(priv_home, "nobody", MESSAGE, ENVELOPE)[0] == 0
    [name] = drops(priv_home)
    r = run_python(SECOND_USER, "import os, sys\n"
                   "for act in (lambda: os.listdir(sys.argv[1]), lambda: open(sys.argv[2], 'rb').read(),\n"
                   "            lambda: os.unlink(sys.argv[2]),\n"
                   "            lambda: os.rename(sys.argv[2], sys.argv[1] + '/x')):\n"
                   "    try:\n"
                   "        act(); print('allowed')\n"
                   "    except PermissionError:\n"
                   "        print('denied')",
                   str(priv_home / "maildrop"), str(priv_home / "maildrop" / name))
    assert r.stdout.split() == [b"denied"] * 4, r.stderr
    assert drops(priv_home) == [name]


def test_exit_codes_in_drop_mode_and_nothing_left_behind(priv_home):
    assert submit(priv_home, "nobody", MESSAGE, b"Xa@b\0\0")[0] == 91
    assert submit(priv_home, "nobody", MESSAGE, b"Fa@b\0Tc")[0] == 54
    assert submit(priv_home, "nobody", MESSAGE, b"F" + b"a" * 1003 + b"\0\0")[0] == 11
    assert drops(priv_home) == []


def test_a_maildrop_not_owned_by_the_queue_owner_gets_nothing(priv_home):
    os.chown(priv_home / "maildrop", pwd.getpwnam("nobody").pw_uid, -1)
    ensure_user(SECOND_USER)
    assert submit(priv_home, SECOND_USER, MESSAGE, ENVELOPE)[0] == 62
    assert drops(priv_home) == []


def test_a_symlink_is_removed_and_its_target_untouched(priv_home, tmp_path):
    target = priv_home / "victim"
    target.write_bytes(drop_file(b"secret\n", b"Fa@b\0Tevil@x\0\0"))
    os.chmod(target, 0o644)
    name = maildrop.final_name()
    r = run_python("nobody", "import os, sys; os.symlink(sys.argv[1], sys.argv[2])",
                   str(target), str(priv_home / "maildrop" / name))
    assert r.returncode == 0, r.stderr
    result = pickup(priv_home, "once")
    assert result.returncode == 0
    assert b"removed maildrop/" + name.encode() in result.stderr
    assert drops(priv_home) == [] and os.listdir(priv_home / "queue" / "todo") == []
    assert target.read_bytes() == drop_file(b"secret\n", b"Fa@b\0Tevil@x\0\0")


def test_a_hard_link_to_another_users_file_is_refused(priv_home):
    """The victim's file looks like a drop and its mode lets the attacker link it."""
    victim = ensure_user(SECOND_USER)
    data = drop_file(b"Subject: forged\n\n", b"Fvictim@x\0Tboss@x\0\0")
    victim_dir = priv_home.parent / "victim"
    victim_dir.mkdir()
    os.chown(victim_dir, victim.pw_uid, victim.pw_gid)
    home_file = victim_dir / "notes"
    write_as(SECOND_USER, home_file, data, 0o666)
    name = maildrop.final_name()
    r = run_python("nobody", "import os, sys; os.link(sys.argv[1], sys.argv[2])",
                   str(home_file), str(priv_home / "maildrop" / name))
    assert r.returncode == 0, r.stderr
    assert (priv_home / "maildrop" / name).stat().st_uid == victim.pw_uid
    result = pickup(priv_home, "once")
    assert b"removed maildrop/" + name.encode() in result.stderr and b"hard link" in result.stderr
    assert os.listdir(priv_home / "queue" / "todo") == [] and drops(priv_home) == []
    assert home_file.read_bytes() == data   # only the link in maildrop/ went


def test_a_second_link_made_by_the_owner_is_refused_too(priv_home):
    assert submit(priv_home, "nobody", MESSAGE, ENVELOPE)[0] == 0
    [name] = drops(priv_home)
    other = maildrop.final_name()
    r = run_python("nobody", "import os, sys; os.link(sys.argv[1], sys.argv[2])",
                   str(priv_home / "maildrop" / name), str(priv_home / "maildrop" / other))
    assert r.returncode == 0, r.stderr
    result = pickup(priv_home, "once")
    # The first name seen has two links and goes; the other is then a plain file, queued once.
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and b"hard link (2 links)" in lines[0] and b"queued maildrop/" in lines[1]
    assert drops(priv_home) == [] and len(queued(priv_home)) == 1


@pytest.mark.parametrize("data, reason", [
    (b"garbage", b"bad header"),
    (maildrop.header(500) + b"short", b"no envelope"),
    (drop_file(b"x\n", b"Xa@b\0\0"), b"bad envelope"),
    (drop_file(b"x\n", b"Fa@b\0Tc@d\0"), b"bad envelope"),
    (drop_file(b"x\n", b"Fa@b\0\0trailing"), b"data after the envelope"),
])
def test_a_malformed_file_is_removed_with_a_log_line(priv_home, data, reason):
    name = maildrop.final_name()
    write_as("nobody", priv_home / "maildrop" / name, data)
    r = pickup(priv_home, "once")
    assert r.returncode == 0
    nobody = pwd.getpwnam("nobody").pw_uid
    assert r.stderr == b"qmail-pickup: warning: removed maildrop/%s (uid %d, %d bytes): %s\n" % (
        name.encode(), nobody, len(data), reason)
    assert drops(priv_home) == [] and os.listdir(priv_home / "queue" / "todo") == []


def test_a_fifo_does_not_block_pickup(priv_home):
    name = maildrop.final_name()
    r = run_python("nobody", "import os, sys; os.mkfifo(sys.argv[1], 0o666)",
                   str(priv_home / "maildrop" / name))
    assert r.returncode == 0, r.stderr
    assert submit(priv_home, "nobody", MESSAGE, ENVELOPE)[0] == 0
    result = pickup(priv_home, "once")
    assert b"not a regular file" in result.stderr
    assert drops(priv_home) == [] and len(queued(priv_home)) == 1


def test_a_writer_failure_keeps_the_file_for_later(priv_home):
    assert submit(priv_home, "nobody", MESSAGE, ENVELOPE)[0] == 0
    [name] = drops(priv_home)
    intd = priv_home / "queue" / "intd"
    intd.rename(priv_home / "queue" / "intd.away")
    try:
        r = pickup(priv_home, "once")
        assert r.returncode == 111
        assert b"qq trouble creating files in queue" in r.stderr and b"will try again later" in r.stderr
        assert drops(priv_home) == [name] and os.listdir(priv_home / "queue" / "todo") == []
    finally:
        (priv_home / "queue" / "intd.away").rename(intd)
    assert pickup(priv_home, "once").returncode == 0
    assert drops(priv_home) == [] and len(queued(priv_home)) == 1


def test_stale_partial_files_are_removed_fresh_ones_kept(priv_home):
    old, fresh = "t" + "0" * 32, "t" + "1" * 32
    for name in (old, fresh):
        write_as("nobody", priv_home / "maildrop" / name, b"qpy-drop 1 partial")
    then = time.time() - maildrop.STALE - 60
    os.utime(priv_home / "maildrop" / old, (then, then))
    r = pickup(priv_home, "once")
    assert r.returncode == 0 and b"removed stale maildrop/" + old.encode() in r.stderr
    assert drops(priv_home) == [fresh]


def test_pickup_runs_as_qmailq_and_wakes_on_the_trigger(priv_home):
    proc = subprocess.Popen([str(priv_home / "bin" / "qmail-pickup")], stderr=subprocess.PIPE,
                            env=dict(os.environ, QMAILHOME=str(priv_home)))
    try:
        assert wait_for(lambda: uid_of_process(proc.pid) == pwd.getpwnam("qmailq").pw_uid)
        second = pickup(priv_home)
        assert second.returncode == 111
        assert second.stderr == b"qmail-pickup: fatal: cannot start: qmail-pickup is already running\n"
        assert submit(priv_home, "nobody", MESSAGE, ENVELOPE)[0] == 0   # pokes public/qmail-pickup
        assert wait_for(lambda: len(os.listdir(priv_home / "queue" / "todo")) == 1, 60)
        assert wait_for(lambda: drops(priv_home) == [])
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    assert b"queued maildrop/" in proc.stderr.read()


def test_usage(priv_home):
    r = pickup(priv_home, "twice")
    assert r.returncode == 100 and r.stderr == b"qmail-pickup: usage: qmail-pickup [once]\n"
