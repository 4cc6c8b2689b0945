"""qmail-start's process tree: fds, arguments, accounts (docs/programs.md "Delivery daemons").

With QPY_EXEC=1 qmail-start execs QMAILHOME/bin/<program>; here those are small
programs that record what they were given (open fds and which pipe each is,
argv, uid/gid/groups, cwd, umask, environment) and exit.  The warm path runs the
real daemons in tests/integration/test_delivery.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import need_root

RECORDER = r'''#!{python} -I
import fcntl, json, os, sys, time
out = os.environ["RECORD_DIR"]
name = os.path.basename(sys.argv[0])
fds = {{}}
for fd in range(64):
    try:
        target = os.readlink("/proc/self/fd/%d" % fd)
    except OSError:
        continue
    if fd > 2 and target.startswith("/proc/"):
        continue
    mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    fds[fd] = [target, {{os.O_RDONLY: "r", os.O_WRONLY: "w", os.O_RDWR: "rw"}}[mode]]
mask = os.umask(0)
info = dict(argv=sys.argv[1:], fds=fds, uid=os.getuid(), euid=os.geteuid(), gid=os.getgid(),
            groups=sorted(os.getgroups()), cwd=os.getcwd(), umask=mask,
            mark=os.environ.get("RECORD_MARK"))
with open(os.path.join(out, name + ".tmp"), "w") as f:
    json.dump(info, f)
os.rename(os.path.join(out, name + ".tmp"), os.path.join(out, name + ".json"))
if name == "qmail-send":
    deadline = time.time() + 30
    while time.time() < deadline and len(os.listdir(out)) < int(os.environ["RECORD_COUNT"]):
        time.sleep(0.02)
    sys.exit(7)
'''

DAEMONS = ("qmail-lspawn", "qmail-rspawn", "qmail-clean", "qmail-send")


def install_recorders(home: Path, out: Path) -> Path:
    """Replace the daemons in home/bin by the recorder; return a logger recorder path."""
    text = RECORDER.format(python=sys.executable)
    for name in DAEMONS:
        (home / "bin" / name).write_text(text)
        os.chmod(home / "bin" / name, 0o755)
    logger = out.parent / "logger"
    logger.write_text(text)
    os.chmod(logger, 0o755)
    out.mkdir()
    os.chmod(out, 0o777)
    return logger


def start(home: Path, out: Path, args: list[str], count: int, stdout: Path) -> int:
    with open(stdout, "wb") as f:
        r = subprocess.run([str(home / "bin" / "qmail-start"), *args], stdin=subprocess.DEVNULL,
                           stdout=f, timeout=60,
                           env=dict(os.environ, QMAILHOME=str(home), QPY_EXEC="1",
                                    RECORD_DIR=str(out), RECORD_MARK="passed",
                                    RECORD_COUNT=str(count)))
    return r.returncode


def records(out: Path, count: int) -> dict[str, dict]:
    deadline = time.monotonic() + 30
    while len(list(out.glob("*.json"))) < count:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}


def fd(rec: dict, n: int) -> list[str]:
    return rec["fds"][str(n)]


def check_tree(rec: dict[str, dict], log_target: str) -> None:
    """Every pipe connects qmail-send with the right daemon, in the right direction."""
    send, lspawn, rspawn, clean = (rec["qmail-send"], rec["qmail-lspawn"], rec["qmail-rspawn"],
                                   rec["qmail-clean"])
    assert sorted(send["fds"]) == [str(n) for n in range(7)]
    assert fd(send, 0) == [log_target, "w"]
    for child, to_fd, from_fd in ((lspawn, 1, 2), (rspawn, 3, 4), (clean, 5, 6)):
        assert sorted(child["fds"]) == ["0", "1", "2"]
        assert fd(child, 2) == ["/dev/null", "rw"]
        assert fd(child, 0)[1] == "r" and fd(send, to_fd) == [fd(child, 0)[0], "w"]
        assert fd(child, 1)[1] == "w" and fd(send, from_fd) == [fd(child, 1)[0], "r"]
        assert fd(child, 0)[0].startswith("pipe:")
    pipes = [fd(send, n)[0] for n in range(1, 7)]
    assert len(set(pipes)) == 6
    assert lspawn["argv"] and rspawn["argv"] == clean["argv"] == send["argv"] == []
    for r in rec.values():
        assert r["cwd"] == "/" and r["umask"] == 0o077 and r["mark"] == "passed"


def test_tree_without_logger_logs_to_stdout(home, tmp_path):
    out = tmp_path / "rec"
    install_recorders(home, out)
    stdout = tmp_path / "stdout"
    assert start(home, out, ["./Maildir/"], 4, stdout) == 7  # qmail-send's exit code
    rec = records(out, 4)
    assert set(rec) == set(DAEMONS)
    check_tree(rec, str(stdout))
    assert rec["qmail-lspawn"]["argv"] == ["./Maildir/"]


def test_default_delivery_is_mailbox(home, tmp_path):
    out = tmp_path / "rec"
    install_recorders(home, out)
    assert start(home, out, [], 4, tmp_path / "stdout") == 7
    rec = records(out, 4)
    assert rec["qmail-lspawn"]["argv"] == ["./Mailbox"]
    for r in rec.values():  # single-user mode: nobody changes uid or gid
        assert (r["uid"], r["euid"], r["gid"]) == (os.getuid(), os.geteuid(), os.getgid())


def test_logger_gets_the_log_pipe_and_its_arguments(home, tmp_path):
    out = tmp_path / "rec"
    logger = install_recorders(home, out)
    stdout = tmp_path / "stdout"
    assert start(home, out, ["./Maildir/", str(logger), "-x", "y z"], 5, stdout) == 7
    rec = records(out, 5)
    log = rec["logger"]
    assert log["argv"] == ["-x", "y z"]
    assert sorted(log["fds"]) == ["0", "1"]
    assert fd(log, 1) == [str(stdout), "w"]          # the logger writes where we wrote
    assert fd(log, 0)[0].startswith("pipe:") and fd(log, 0)[1] == "r"
    check_tree(rec, fd(log, 0)[0])


def test_closed_fd0_fails_silently(home, tmp_path):
    out = tmp_path / "rec"
    install_recorders(home, out)
    r = subprocess.run([str(home / "bin" / "qmail-start")], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=60, close_fds=True,
                       env=dict(os.environ, QMAILHOME=str(home), QPY_EXEC="1",
                                RECORD_DIR=str(out), RECORD_COUNT="4"),
                       preexec_fn=lambda: os.close(0))
    assert (r.returncode, r.stdout, r.stderr) == (111, b"", b"")


def test_privileged_accounts(priv_home, tmp_path):
    need_root()
    import grp
    import pwd
    base = priv_home.parent
    out = base / "rec"
    install_recorders(priv_home, out)
    logger = base / "logger"
    stdout = base / "stdout"
    assert start(priv_home, out, ["./Maildir/", str(logger)], 5, stdout) == 7
    rec = records(out, 5)
    qmail = grp.getgrnam("qmail").gr_gid
    nofiles = grp.getgrnam("nofiles").gr_gid
    want = {"qmail-lspawn": (0, qmail), "qmail-rspawn": (pwd.getpwnam("qmailr").pw_uid, qmail),
            "qmail-clean": (pwd.getpwnam("qmailq").pw_uid, qmail),
            "qmail-send": (pwd.getpwnam("qmails").pw_uid, qmail),
            "logger": (pwd.getpwnam("qmaill").pw_uid, nofiles)}
    for name, (uid, gid) in want.items():
        r = rec[name]
        assert (r["uid"], r["euid"], r["gid"]) == (uid, uid, gid), name
        assert qmail in r["groups"] or name == "logger"
        assert 0 not in r["groups"], name
    assert rec["logger"]["groups"] == [nofiles]
    check_tree(rec, fd(rec["logger"], 0)[0])

