"""qmail-queued: ordinary users queue through the service in privileged mode (root only).

Every test runs the real processes: the service started as root (it becomes qmailq),
and the instance's bin/qmail-queue run as an ordinary account.
"""
from __future__ import annotations

import contextlib
import os
import pwd
import re
import stat
import subprocess
from pathlib import Path

import pytest

from localusers import (python_as, run_python, start_service, stop, submit, uid_of_process,
                        wait_for)
from qpy.auto import SPLIT

MESSAGE = b"From: u@example.test\nSubject: via the service\n\nbody\n\x00\xff\n"
ENVELOPE = b"Fu@example.test\0Tr@example.test\0\0"
RECEIVED = re.compile(rb"^Received: \(qmail (\d+) invoked (.+?)\); "
                      rb"\d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d -0000\n")


@pytest.fixture
def service(priv_home):
    proc = start_service(priv_home)
    yield proc
    if proc.poll() is None:
        stop(proc)


def queued(home: Path) -> list[tuple[bytes, bytes, os.stat_result]]:
    """(mess contents, todo contents, mess stat) of every queued message."""
    out = []
    for name in os.listdir(home / "queue" / "todo"):
        mess = home / "queue" / "mess" / str(int(name) % SPLIT) / name
        out.append((mess.read_bytes(), (home / "queue" / "todo" / name).read_bytes(), mess.stat()))
    return out


def nothing_queued(home: Path) -> bool:
    return (os.listdir(home / "queue" / "todo") == []
            and all(os.listdir(d) == [] for d in (home / "queue" / "mess").iterdir())
            and os.listdir(home / "queue" / "intd") == [] and os.listdir(home / "queue" / "pid") == [])


def test_service_runs_as_qmailq_on_a_socket_everyone_may_use(priv_home, service):
    qmailq = pwd.getpwnam("qmailq")
    assert uid_of_process(service.pid) == qmailq.pw_uid
    sock = (priv_home / "public" / "qmail-queued").lstat()
    assert stat.S_ISSOCK(sock.st_mode) and sock.st_uid == qmailq.pw_uid
    assert stat.S_IMODE(sock.st_mode) == 0o666
    public = (priv_home / "public").stat()
    assert public.st_uid == qmailq.pw_uid and stat.S_IMODE(public.st_mode) == 0o711
    # The rest of the queue stays out of reach.
    assert stat.S_IMODE((priv_home / "queue").stat().st_mode) == 0o750


def test_ordinary_user_queues_through_the_service(priv_home, service):
    nobody = pwd.getpwnam("nobody")
    code, pid, err = submit(priv_home, "nobody", MESSAGE, ENVELOPE)
    assert (code, err) == (0, b"")
    [(mess, todo, st)] = queued(priv_home)
    m = RECEIVED.match(mess)
    assert m and m.group(2) == b"by uid %d" % nobody.pw_uid
    assert int(m.group(1)) == pid   # the qp is the caller's qmail-queue, as with qmail
    assert mess[m.end():] == MESSAGE
    assert todo == b"u%d\0p%d\0Fu@example.test\0Tr@example.test\0" % (nobody.pw_uid, pid)
    assert st.st_uid == pwd.getpwnam("qmailq").pw_uid
    assert os.listdir(priv_home / "maildrop") == []


@pytest.mark.parametrize("account, who", [("qmaild", b"from network"), ("qmails", b"for bounce"),
                                          ("alias", b"by alias")])
def test_qmail_accounts_get_their_received_words(priv_home, service, account, who):
    assert submit(priv_home, account, MESSAGE, ENVELOPE)[0] == 0
    [(mess, todo, _)] = queued(priv_home)
    assert RECEIVED.match(mess).group(2) == who
    assert todo.startswith(b"u%d\0" % pwd.getpwnam(account).pw_uid)


@pytest.mark.parametrize("envelope, code", [
    (b"Xa@b\0Tc@d\0\0", 91),
    (b"Fa@b\0Xc@d\0\0", 91),
    (b"Fa@b\0Tc@d\0", 54),
    (b"", 54),
    (b"F" + b"a" * 1003 + b"\0\0", 11),
])
def test_writer_exit_codes_reach_the_client_unchanged(priv_home, service, envelope, code):
    assert submit(priv_home, "nobody", MESSAGE, envelope)[0] == code
    assert nothing_queued(priv_home)
    assert os.listdir(priv_home / "maildrop") == []


LIAR = r"""
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1] + "/public/qmail-queued")
msg_r, msg_w = os.pipe()
env_r, env_w = os.pipe()
os.write(msg_w, b"Received: (qmail 1 invoked from network); 1 Jan 2000 00:00:00 -0000\nSubject: lie\n\n")
os.close(msg_w)
os.write(env_w, b"Fa@b\0Tc@d\0\0")
os.close(env_w)
fds = {"two": [msg_r, env_r], "one": [msg_r], "three": [msg_r, env_r, msg_r], "none": []}[sys.argv[2]]
if fds:
    socket.send_fds(s, [b"u0\0p1\0uid=0 root"], fds)
else:
    s.sendall(b"u0\0p1\0uid=0 root")
s.shutdown(socket.SHUT_WR)
reply = s.recv(16)
print(reply.hex() or "eof")
"""


def test_a_lying_client_cannot_change_the_recorded_uid(priv_home, service):
    nobody = pwd.getpwnam("nobody").pw_uid
    r = run_python("nobody", LIAR, str(priv_home), "two")
    assert r.stdout.strip() == b"00", r.stderr
    [(mess, todo, _)] = queued(priv_home)
    assert RECEIVED.match(mess).group(2) == b"by uid %d" % nobody
    assert todo.startswith(b"u%d\0p" % nobody) and todo.endswith(b"\0Fa@b\0Tc@d\0")


@pytest.mark.parametrize("fds", ["one", "three", "none"])
def test_a_request_without_exactly_two_fds_gets_no_answer(priv_home, service, fds):
    r = run_python("nobody", LIAR, str(priv_home), fds)
    assert r.stdout.strip() == b"eof", r.stderr
    assert nothing_queued(priv_home)
    assert submit(priv_home, "nobody", MESSAGE, ENVELOPE)[0] == 0   # and the service still serves


IDLE = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1] + "/public/qmail-queued")
print("connected", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def idle_client(home: Path):
    """A client (nobody) that connects and then sends nothing until the block ends."""
    argv, kw = python_as("nobody", IDLE, str(home), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    idle = subprocess.Popen(argv, **kw)
    try:
        assert idle.stdout.readline() == b"connected\n"
        yield
    finally:
        idle.stdin.close()
        idle.wait(30)


def test_a_silent_client_does_not_hold_up_others(priv_home, service):
    with idle_client(priv_home):
        assert submit(priv_home, "nobody", MESSAGE, ENVELOPE)[0] == 0
        assert len(queued(priv_home)) == 1


def test_a_busy_service_sends_the_client_to_maildrop(priv_home):
    proc = start_service(priv_home, "1")      # one submission at a time
    try:
        with idle_client(priv_home):
            assert submit(priv_home, "nobody", MESSAGE, ENVELOPE)[0] == 0
            assert nothing_queued(priv_home)
            [drop] = os.listdir(priv_home / "maildrop")
            assert (priv_home / "maildrop" / drop).stat().st_uid == pwd.getpwnam("nobody").pw_uid
    finally:
        log = stop(proc)
    assert b"qmail-queued: warning: busy, uid %d sent to maildrop" % pwd.getpwnam("nobody").pw_uid in log


def test_a_second_service_refuses_to_start(priv_home, service):
    r = subprocess.run([str(priv_home / "bin" / "qmail-queued")], capture_output=True, timeout=60,
                       env=dict(os.environ, QMAILHOME=str(priv_home)))
    assert r.returncode == 111
    assert r.stderr == b"qmail-queued: fatal: cannot start: qmail-queued is already running\n"
    assert submit(priv_home, "nobody", MESSAGE, ENVELOPE)[0] == 0


def test_stopping_removes_the_socket_so_clients_use_maildrop(priv_home, service):
    assert stop(service) == b""
    assert service.returncode == 0
    assert not (priv_home / "public" / "qmail-queued").exists()
    assert submit(priv_home, "nobody", MESSAGE, ENVELOPE)[0] == 0
    assert nothing_queued(priv_home) and len(os.listdir(priv_home / "maildrop")) == 1


def test_root_writes_the_queue_itself_as_qmailq(priv_home):
    """No service needed: root becomes qmailq, as the setuid bit made qmail-queue."""
    env_r, env_w = os.pipe()
    proc = subprocess.Popen([str(priv_home / "bin" / "qmail-queue")], stdin=subprocess.PIPE, stdout=env_r,
                            env=dict(os.environ, QMAILHOME=str(priv_home)))
    os.close(env_r)
    proc.stdin.write(MESSAGE)
    proc.stdin.close()
    os.write(env_w, ENVELOPE)
    os.close(env_w)
    assert proc.wait(60) == 0
    [(mess, todo, st)] = queued(priv_home)
    assert RECEIVED.match(mess).group(2) == b"by uid 0" and todo.startswith(b"u0\0")
    assert st.st_uid == pwd.getpwnam("qmailq").pw_uid


def test_usage(priv_home):
    r = subprocess.run([str(priv_home / "bin" / "qmail-queued"), "lots"], capture_output=True, timeout=60)
    assert r.returncode == 100 and r.stderr.startswith(b"qmail-queued: usage:")
