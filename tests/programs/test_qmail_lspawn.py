"""qmail-lspawn fed real commands on a pipe, delivering real queued messages.

Single-user tests use the ``home`` fixture (messages queued by the real qmail-queue);
privileged tests (root) use ``priv_home`` and a real passwd user created for the run.
"""
from __future__ import annotations

import mailbox
import os
import pwd
from pathlib import Path

import pytest

from conftest import run, unsrs
from localusers import home_user
from qpy import auto, qmailq, queuedir
from qpy.programs import qmail_lspawn

MSG = b"Subject: hello\n\nbody\n"


def queued(home: Path, body: bytes = MSG) -> bytes:
    """Queue a message with the real qmail-queue; return its path relative to queue/mess."""
    before = set(queuedir.scan_flat(str(home / "queue"), "todo"))
    assert qmailq.queue_message(body, b"s@example.org", [b"r@example.org"]) == ""
    (msgid,) = set(queuedir.scan_flat(str(home / "queue"), "todo")) - before
    return queuedir.mess_rel(msgid).encode()


def cmd(slot: int, messid: bytes, sender: bytes, recipient: bytes) -> bytes:
    return bytes([slot]) + messid + b"\0" + sender + b"\0" + recipient + b"\0"


def lspawn(home: Path, commands: bytes, env: dict[str, str] | None = None,
           args: list[str] | None = None, **kw) -> dict[int, bytes]:
    """Run qmail-lspawn to EOF; return {slot: report}."""
    r = run(home, "qmail-lspawn", ["./Maildir/"] if args is None else args, input=commands,
            env=env, timeout=60, **kw)
    assert (r.returncode, r.stderr) == (0, b""), r
    out = r.stdout
    assert out[:1] == bytes([auto.SPAWN_LIMIT])
    reports = {}
    i = 1
    while i < len(out):
        j = out.index(b"\0", i + 1)
        reports[out[i]] = out[i + 1:j]
        i = j + 1
    return reports


def both(home: Path, commands: bytes, **kw) -> dict[int, bytes]:
    """Run warm and with QPY_EXEC=1; the reports must be identical."""
    warm = lspawn(home, commands, **kw)
    env = dict(kw.pop("env", None) or {}, QPY_EXEC="1")
    assert lspawn(home, commands, env=env, **kw) == warm
    return warm


def maildir(path: Path) -> list[bytes]:
    """Messages in a maildir (created if missing)."""
    md = mailbox.Maildir(str(path), factory=None, create=True)
    return [md.get_bytes(k) for k in sorted(md.keys())]


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.write_text(text)
    path.chmod(mode)


@pytest.mark.parametrize("status,report", [
    (0, b"Kout"), (111, b"Zout"), (71, b"Zout"), (74, b"Zout"), (75, b"Zout"), (100, b"Dout"),
    (1, b"Dout"), (99, b"Dout"), (-11, b"Zqmail-local crashed.\n"),
    (112, b"ZInternal qmail-lspawn bug.\n"), (113, b"ZNot allowed to perform deliveries as root.\n"),
    (115, b"ZNFS failure in qmail-local.\n"), (116, b"ZUnable to find alias user!\n"),
    (117, b"ZTrouble reading users/cdb in qmail-lspawn.\n"),
    (118, b"ZTemporary failure in qmail-lspawn.\n"), (119, b"ZOut of memory in qmail-lspawn.\n"),
    (120, b"ZUnable to run qmail-local.\n"), (121, b"ZUnable to run qmail-getpw.\n"),
    (126, b"DUnable to run qmail-local.\n")])
def test_report_mapping(status, report):
    assert qmail_lspawn.report(status, b"out\0ignored") == report


def test_no_argument_is_usage(home):
    r = run(home, "qmail-lspawn", [], input=b"")
    assert (r.returncode, r.stdout) == (100, b"")


def test_alias_account_delivery_and_reports(home):
    alias = home / "alias"
    maildir(alias / "Maildir")
    write(alias / ".qmail-joe", "./Maildir/\n")
    write(alias / ".qmail-prog", "|echo \"$SENDER $RECIPIENT $USER $HOME\"; exit 111\n")
    write(alias / ".qmail-bad", "|echo nope; exit 100\n")
    m = queued(home)
    reports = both(home, cmd(0, m, b"s@example.org", b"joe@test.example")
                   + cmd(1, m, b"s@example.org", b"prog@test.example")
                   + cmd(2, m, b"", b"bad@test.example")
                   + cmd(3, m, b"", b"nobody@test.example")
                   + cmd(4, m, b"", b"@test.example")
                   + cmd(5, m, b"", b"no-at"))
    user = pwd.getpwuid(os.getuid()).pw_name.encode()
    assert reports == {
        0: b"Kdid 1+0+0\n",
        1: b"Zs@example.org prog@test.example " + user + b" " + str(alias).encode() + b"\n",
        2: b"Dnope\n",
        3: b"DSorry, no mailbox here by that name. (#5.1.1)\n",
        4: b"K",
        5: b"DSorry, address must include host name. (#5.1.3)\n"}
    got = maildir(alias / "Maildir")
    assert len(got) == 2          # once warm, once exec'd
    for data in got:
        head, rest = data.split(b"\n", 2)[:2], data.split(b"\n", 2)[2]
        assert head == [b"Return-Path: <s@example.org>", b"Delivered-To: joe@test.example"]
        assert rest.startswith(b"Received: (qmail ") and rest.endswith(b"\n" + MSG)


def test_users_cdb_exact_and_wildcard(home, tmp_path):
    kim = tmp_path / "kim"
    lists = tmp_path / "lists"
    for d in (kim, lists):
        d.mkdir()
        d.chmod(0o755)
    maildir(kim / "Maildir")
    maildir(lists / "Maildir")
    write(lists / ".qmail-pre-foo", "./Maildir/\n")
    (home / "users" / "assign").write_text(
        f"=kim:kim:12345:12345:{kim}:::\n+list-:lists:12345:12345:{lists}:-:pre-:\n.\n")
    assert run(home, "qmail-newu").returncode == 0
    m = queued(home)
    reports = both(home, cmd(0, m, b"", b"Kim@test.example") + cmd(1, m, b"", b"list-Foo@test.example")
                   + cmd(2, m, b"", b"list-bar@test.example"))
    assert reports == {0: b"Kdid 1+0+0\n", 1: b"Kdid 1+0+0\n",
                       2: b"DSorry, no mailbox here by that name. (#5.1.1)\n"}
    assert len(maildir(kim / "Maildir")) == len(maildir(lists / "Maildir")) == 2
    assert b"Delivered-To: list-Foo@test.example\n" in maildir(lists / "Maildir")[0]


def test_defaultdelivery_argument_is_used(home, tmp_path):
    kim = tmp_path / "kim"
    kim.mkdir()
    kim.chmod(0o755)
    (home / "users" / "assign").write_text(f"=kim:kim:1:1:{kim}:::\n.\n")
    assert run(home, "qmail-newu").returncode == 0
    m = queued(home)
    reports = lspawn(home, cmd(0, m, b"", b"kim@test.example"), args=["./Mailbox"])
    assert reports == {0: b"Kdid 1+0+0\n"}
    assert [msg["Subject"] for msg in mailbox.mbox(str(kim / "Mailbox"))] == ["hello"]


def test_corrupt_users_cdb(home):
    (home / "users" / "cdb").write_bytes(b"garbage")
    m = queued(home)
    assert lspawn(home, cmd(9, m, b"", b"joe@test.example")) == {
        9: b"ZTrouble reading users/cdb in qmail-lspawn.\n"}


def test_long_output_is_truncated(home):
    write(home / "alias" / ".qmail-big", "|head -c 5000 /dev/zero | tr '\\0' x; exit 100\n")
    m = queued(home)
    assert both(home, cmd(0, m, b"", b"big@test.example")) == {
        0: b"D" + b"x" * 2966 + b"\nError report too long, sorry.\n"}


def test_output_cut_at_nul(home):
    write(home / "alias" / ".qmail-nul", "|printf 'a\\000b'; exit 0\n")
    m = queued(home)
    assert lspawn(home, cmd(0, m, b"", b"nul@test.example")) == {0: b"Ka"}


def test_forward_from_alias_is_queued(home):
    write(home / "alias" / ".qmail-fw", "&dest@example.net\n")
    m = queued(home)
    before = set(queuedir.scan_flat(str(home / "queue"), "todo"))
    reports = lspawn(home, cmd(0, m, b"s@example.org", b"fw@test.example"))
    assert reports[0].startswith(b"Kdid 0+1+0\nqp ")
    (new,) = set(queuedir.scan_flat(str(home / "queue"), "todo")) - before
    todo = (home / "queue" / queuedir.todo(new)).read_bytes()
    fields = todo.split(b"\0")
    assert unsrs(fields[-3][1:]) == b"s@example.org" and fields[-2:] == [b"Tdest@example.net", b""]


# -- privileged mode --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_user():
    """A passwd user with a home (0755, its own, with a Maildir) in a world-traversable temp dir."""
    with home_user("l", maildir=True) as pw:
        yield pw


def priv_message(home: Path, body: bytes = b"Received: x\n" + MSG) -> bytes:
    """A mess file as qmail-queue leaves it: owned by qmailq, named by its inode."""
    tmp = home / "queue" / "pid" / f"t{os.getpid()}"
    tmp.write_bytes(body)
    ino = tmp.stat().st_ino
    dest = home / "queue" / queuedir.mess(ino)
    os.link(tmp, dest)
    tmp.unlink()
    q = pwd.getpwnam(auto.QMAILQ)
    os.chown(dest, q.pw_uid, q.pw_gid)
    dest.chmod(0o644)
    return queuedir.mess_rel(ino).encode()


def test_privileged_delivery_runs_as_the_recipient(priv_home, real_user):
    name = real_user.pw_name.encode()
    homedir = Path(real_user.pw_dir)
    dq = homedir / ".qmail-ext"
    write(dq, "|id -u; id -G\n./Maildir/\n")
    os.chown(dq, real_user.pw_uid, real_user.pw_gid)
    m = priv_message(priv_home)
    reports = both(priv_home, cmd(0, m, b"s@example.org", name + b"@test.example")
                   + cmd(1, m, b"s@example.org", name + b"-ext@test.example"))
    ids = b"%d\n%d\n" % (real_user.pw_uid, real_user.pw_gid)
    assert reports == {0: b"Kdid 1+0+0\n", 1: b"K" + ids + b"did 1+0+1\n"}
    new = homedir / "Maildir" / "new"
    assert len(os.listdir(new)) == 4
    assert {(new / n).stat().st_uid for n in os.listdir(new)} == {real_user.pw_uid}


def test_privileged_unknown_user_goes_to_the_alias_account(priv_home, real_user):
    alias = priv_home / "alias"
    write(alias / ".qmail-default", "|id -un; echo $HOME $EXT\n")
    m = priv_message(priv_home)
    reports = both(priv_home, cmd(0, m, b"", b"Some-One@test.example"))
    assert reports == {0: b"Kalias\n" + str(alias).encode() + b" Some-One\ndid 0+0+1\n"}


def test_privileged_refuses_root(priv_home, real_user):
    (priv_home / "users" / "assign").write_text(f"=boss:root:0:0:{priv_home / 'alias'}:::\n.\n")
    assert run(priv_home, "qmail-newu").returncode == 0
    m = priv_message(priv_home)
    assert both(priv_home, cmd(3, m, b"", b"boss@test.example")) == {
        3: b"ZNot allowed to perform deliveries as root.\n"}


def test_privileged_users_cdb_uid_is_applied(priv_home, real_user):
    other = Path(real_user.pw_dir)
    (priv_home / "users" / "assign").write_text(
        f"=box:{real_user.pw_name}:{real_user.pw_uid}:{real_user.pw_gid}:{other}:::\n.\n")
    assert run(priv_home, "qmail-newu").returncode == 0
    write(other / ".qmail", "|id -u\n")
    os.chown(other / ".qmail", real_user.pw_uid, real_user.pw_gid)
    m = priv_message(priv_home)
    try:
        assert lspawn(priv_home, cmd(0, m, b"", b"box@test.example")) == {
            0: b"K%d\ndid 0+0+1\n" % real_user.pw_uid}
    finally:
        (other / ".qmail").unlink()


def test_privileged_message_with_wrong_owner(priv_home):
    m = priv_message(priv_home)
    os.chown(priv_home / "queue" / "mess" / m.decode(), 0, 0)
    assert lspawn(priv_home, cmd(0, m, b"", b"x@test.example")) == {
        0: b"ZSorry, message has wrong owner. (#4.3.5)\n"}


def test_a_dead_idle_worker_does_not_take_lspawn_down(home):
    """A delivery worker killed while idle (OOM killer, an admin): the next command that
    would have gone to it is run another way.  Run warm, as qmail-start runs it (SIGPIPE at
    its default action): before, the command's sendmsg to the dead worker raised SIGPIPE and
    killed qmail-lspawn, and qmail-send stopped ("lost spawn connection")."""
    import select
    import signal
    import subprocess
    import sys
    import time
    alias = home / "alias"
    maildir(alias / "Maildir")
    write(alias / ".qmail-joe", "./Maildir/\n")
    m = queued(home)
    code = "import sys; from qpy import warm; sys.exit(warm.run('qmail-lspawn', ['./Maildir/']))"
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ, QMAILHOME=str(home)))
    try:
        proc.stdin.write(cmd(0, m, b"s@example.org", b"joe@test.example"))
        proc.stdin.flush()
        out = b""
        while out.count(b"\0") < 1:          # the limit byte, then slot 0's report
            assert select.select([proc.stdout], [], [], 30)[0]
            out += os.read(proc.stdout.fileno(), 4096)
        workers = [int(p) for p in os.listdir("/proc") if p.isdigit()
                   and open(f"/proc/{p}/stat", "rb").read().rsplit(b")", 1)[1].split()[1]
                   == str(proc.pid).encode()]
        assert workers                       # the idle worker that delivered slot 0
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        proc.stdin.write(cmd(1, m, b"s@example.org", b"joe@test.example"))
        proc.stdin.flush()
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (proc.returncode, err) == (0, b"")
    assert out + rest == bytes([auto.SPAWN_LIMIT]) + b"\0Kdid 1+0+0\n\0\x01Kdid 1+0+0\n\0"
