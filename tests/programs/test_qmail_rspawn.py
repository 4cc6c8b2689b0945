"""qmail-rspawn: real commands on a pipe, QMAILREMOTE pointing at real scripts (the exec path)."""
from __future__ import annotations

import os
import pwd
import socket
import subprocess
from pathlib import Path

import pytest

from conftest import control, need_root, run
from qpy import auto, qmailq, queuedir
from qpy.programs.qmail_rspawn import translate

MSG = b"Subject: hello\n\nbody\n"


def queued(home: Path) -> bytes:
    before = set(queuedir.scan_flat(str(home / "queue"), "todo"))
    assert qmailq.queue_message(MSG, b"s@example.org", [b"r@example.org"]) == ""
    (msgid,) = set(queuedir.scan_flat(str(home / "queue"), "todo")) - before
    return queuedir.mess_rel(msgid).encode()


def cmd(slot: int, messid: bytes, sender: bytes, recipient: bytes) -> bytes:
    return bytes([slot]) + messid + b"\0" + sender + b"\0" + recipient + b"\0"


def parse(out: bytes) -> dict[int, bytes]:
    assert out[:1] == bytes([auto.SPAWN_LIMIT])
    reports = {}
    i = 1
    while i < len(out):
        j = out.index(b"\0", i + 1)
        reports[out[i]] = out[i + 1:j]
        i = j + 1
    return reports


def rspawn(home: Path, commands: bytes, env: dict[str, str] | None = None, **kw) -> dict[int, bytes]:
    r = run(home, "qmail-rspawn", [], input=commands, env=env, timeout=60, **kw)
    assert (r.returncode, r.stderr) == (0, b""), r
    return parse(r.stdout)


def script(tmp_path: Path, name: str, body: str) -> str:
    p = tmp_path / name
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(0o755)
    return str(p)


@pytest.mark.parametrize("status,output,report", [
    (0, b"r\0K1.2.3.4 accepted message.\nRemote host said: 250 ok\n\0",
     b"K1.2.3.4 accepted message.\nRemote host said: 250 ok\n"),
    (0, b"h1.2.3.4 does not like recipient.\nRemote host said: 550 no\n\0DGiving up on 1.2.3.4.\n\0",
     b"D1.2.3.4 does not like recipient.\nRemote host said: 550 no\nGiving up on 1.2.3.4.\n"),
    (0, b"s1.2.3.4 does not like recipient.\nRemote host said: 450 later\n\0DGiving up on 1.2.3.4.\n\0",
     b"Z1.2.3.4 does not like recipient.\nRemote host said: 450 later\nGiving up on 1.2.3.4.\n"),
    (0, b"r\0Z1.2.3.4 failed on DATA command.\nRemote host said: 451 x\n\0",
     b"Z1.2.3.4 failed on DATA command.\nRemote host said: 451 x\n"),
    (0, b"r\0D1.2.3.4 failed after I sent the message.\nRemote host said: 554 x\n\0",
     b"D1.2.3.4 failed after I sent the message.\nRemote host said: 554 x\n"),
    (0, b"ZSorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n\0",
     b"ZSorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n"),
    (0, b"DSorry, I couldn't find any host named x. (#5.1.2)\n\0",
     b"DSorry, I couldn't find any host named x. (#5.1.2)\n"),
    (0, b"h550 no\0KOops\0", b"D550 no"),          # a recipient report beats a better result
    (0, b"r\0", b"D"),                                # no message report at all: D, empty text
    (0, b"Kno terminator", b"D"),
    (0, b"", b"Zqmail-remote produced no output.\n"),
    (111, b"r\0K.\0", b"ZUnable to run qmail-remote.\n"),
    (100, b"", b"DUnable to run qmail-remote.\n"),
    (3, b"", b"DUnable to run qmail-remote.\n"),
    (-9, b"", b"Zqmail-remote crashed.\n"),
])
def test_translate(status, output, report):
    assert translate(status, output) == report


def test_exec_qmailremote_with_host_sender_recipient(home, tmp_path):
    qr = script(tmp_path, "qr", 'printf "r\\0K%s|%s|%s|%s\\0" "$1" "$2" "$3" "$(head -c 9)"\n'
                                'echo stderr-too >&2\n')
    m = queued(home)
    reports = rspawn(home, cmd(0, m, b"s@example.org", b"u@Remote.Example")
                     + cmd(1, m, b"", b"x@y@host.example"),
                     env={"QMAILREMOTE": qr})
    assert reports == {0: b"KRemote.Example|s@example.org|u@Remote.Example|Received:",
                       1: b"Khost.example||x@y@host.example|Received:"}


@pytest.mark.parametrize("body,report", [
    ('printf "h5.6.7.8 does not like recipient.\\nRemote host said: 550 unknown\\n\\0'
     'DGiving up on 5.6.7.8.\\n\\0"\n',
     b"D5.6.7.8 does not like recipient.\nRemote host said: 550 unknown\nGiving up on 5.6.7.8.\n"),
    ("exit 111\n", b"ZUnable to run qmail-remote.\n"),
    ("exit 5\n", b"DUnable to run qmail-remote.\n"),
    ("kill -9 $$\n", b"Zqmail-remote crashed.\n"),
    ("exit 0\n", b"Zqmail-remote produced no output.\n"),
])
def test_exec_results(home, tmp_path, body, report):
    qr = script(tmp_path, "qr", body)
    m = queued(home)
    assert rspawn(home, cmd(7, m, b"", b"u@h"), env={"QMAILREMOTE": qr}) == {7: report}


def test_qmailremote_missing(home, tmp_path):
    m = queued(home)
    assert rspawn(home, cmd(0, m, b"", b"u@h"), env={"QMAILREMOTE": str(tmp_path / "none")}) == {
        0: b"DUnable to run qmail-remote.\n"}


def test_spawner_checks_apply(home, tmp_path):
    qr = script(tmp_path, "qr", 'printf "r\\0Kok\\0"\n')
    m = queued(home)
    assert rspawn(home, cmd(0, m, b"", b"nohost") + cmd(1, b"x", b"", b"u@h")
                  + cmd(2, m, b"", b"u@h"), env={"QMAILREMOTE": qr}) == {
        0: b"DSorry, address must include host name. (#5.1.3)\n",
        1: b"DInternal error: messid has nonnumerics. (#5.3.5)\n",
        2: b"Kok"}


def test_tcpto_cleared_at_start(home, tmp_path):
    tcpto = home / "queue" / "lock" / "tcpto"
    tcpto.write_bytes(b"\x7f\0\0\x01\x05" + b"\x01" * 1019)
    rspawn(home, b"")
    assert tcpto.read_bytes() == b"\0" * 1024


def test_warm_and_exec_qmail_remote_agree(home):
    """Our own qmail-remote, warm and exec'd: a route to a closed loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    control(home, "smtproutes", f"example.net:[127.0.0.1]:{port}\n")
    m = queued(home)
    warm = rspawn(home, cmd(0, m, b"s@example.org", b"u@example.net"))
    assert warm[0].startswith(b"Z")
    assert rspawn(home, cmd(0, m, b"s@example.org", b"u@example.net"), env={"QPY_EXEC": "1"}) == warm


def test_privileged_as_qmailr(priv_home):
    need_root()
    qr = script(priv_home.parent, "qr", 'printf "r\\0K%s\\0" "$(id -un)"\n')
    body = b"Received: x\n" + MSG
    tmp = priv_home / "queue" / "pid" / "t"
    tmp.write_bytes(body)
    ino = tmp.stat().st_ino
    os.link(tmp, priv_home / "queue" / queuedir.mess(ino))
    tmp.unlink()
    q = pwd.getpwnam(auto.QMAILQ)
    os.chown(priv_home / "queue" / queuedir.mess(ino), q.pw_uid, q.pw_gid)
    r = subprocess.run([str(priv_home / "bin" / "qmail-rspawn")], user=auto.QMAILR,
                       group=auto.GROUP_QMAIL, extra_groups=[],
                       input=cmd(0, queuedir.mess_rel(ino).encode(), b"", b"u@h"),
                       capture_output=True, timeout=60,
                       env=dict(os.environ, QMAILHOME=str(priv_home), QMAILREMOTE=qr))
    assert r.returncode == 0, r.stderr
    assert parse(r.stdout) == {0: b"Kqmailr"}
