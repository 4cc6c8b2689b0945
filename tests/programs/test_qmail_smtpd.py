"""qmail-smtpd as a real subprocess on stdin/stdout, with a tcpserver environment.

Golden transcripts: ``tests/data/qmail-smtpd/<case>.in`` is what the client
sends (a few large inputs are generated below, see GENERATED), ``<case>.ref`` is
the server's output, its exit code and every message it queued (mess/ file and
todo/ envelope, read back byte for byte), normalised as follows:

- ``250 ok <unix time> qp <pid>`` → ``250 ok TIME qp QP<n>`` (n = order in the
  transcript); the same pid in the queue files (``qmail <pid> invoked``,
  ``p<pid>``) → ``QP<n>``;
- dates ``D Mon YYYY hh:mm:ss -0000`` → ``DATE``; ``by uid <n>`` / ``u<n>`` → ``UID``;
- NUL in an envelope → the two characters ``\\0``.

Every test starts from qmail's own behaviour, which a new instance no longer
has: no databytes limit and no recipient check (BASE); a case's controls go on top.

Set QPY_REGOLD=1 to rewrite the .ref files (then read every diff!).
"""
from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import control, run
from qpy import cdb
from smtpdkit import CHECKPASSWORD, CLEARED, leftovers, queued

DATA = Path(__file__).resolve().parent.parent / "data" / "qmail-smtpd"

ENV = {"PROTO": "TCP", "TCPREMOTEIP": "192.0.2.7", "TCPREMOTEHOST": "client.example",
       "TCPREMOTEPORT": "40000", "TCPLOCALIP": "192.0.2.1", "TCPLOCALHOST": "mx.test.example",
       "TCPLOCALPORT": "25"}
BASE = {"databytes": "0\n", "rcptcheck": "0\n"}
# case → control files to write (None deletes), other files, environment to add, the log
# lines expected on fd 2.
CASES: dict[str, dict] = {
    "quit": {},
    "helo_verbs": {},
    "unknown_verbs": {},
    "eof_without_quit": {},
    "eof_mid_command": {},
    "ehlo": {},
    "ehlo_size": {"control": {"databytes": "1000\n"}},
    "mail_rcpt_data": {},
    "no_helo": {},
    "helo_same_as_remotehost": {},
    "received_escaping": {"env": {"TCPREMOTEHOST": "evil\nX-Injected: yes", "TCPREMOTEINFO": "id ent\r"}},
    "received_info": {"env": {"TCPREMOTEINFO": "ident", "TCPLOCALHOST": None}},
    "transaction_states": {},
    "addresses": {"control": {"localiphost": "lip.example\n"}, "env": {
        "RELAYCLIENT": "", "TCPLOCALIP": "2001:db8::25"}},
    "address_errors": {},
    "rcpthosts": {"control": {"rcpthosts": "test.example\n.sub.example\n"}, "morercpthosts": [
        b"more.example", b".dot.example"]},
    "open_relay_without_rcpthosts": {"control": {"rcpthosts": None}},
    "relayclient": {"env": {"RELAYCLIENT": "-x"}},
    "badmailfrom": {"control": {"badmailfrom": "bad@x.example\n# comment\n@spam.example\n"}},
    "databytes": {"control": {"databytes": "20\n"}},
    "databytes_env": {"control": {"databytes": "5\n"}, "env": {"DATABYTES": "20xyz"}},
    "bare_lf_in_data": {},
    "bare_lf_commands": {},
    "bare_cr_in_data": {},
    "empty_message": {},
    "eof_in_data": {},
    "nul_in_commands": {},
    "no_controls": {"control": {"me": None, "smtpgreeting": None}},
    "smtpgreeting": {"control": {"smtpgreeting": "mx.example hello there\n"}},
    "smtputf8": {},
    "esmtp_errors": {},
    "overlong_line": {},
    "hops": {},
    "auth": {"env": {"TCPREMOTEIP": "127.0.0.1"}, "checkpassword": True,
             "control": {"authfaildelay": "0\n"}, "log": [
                 b"auth failed 127.0.0.1 user alice mechanism PLAIN",
                 b"auth deferred 127.0.0.1 user tempfail mechanism PLAIN",
                 b"auth ok 127.0.0.1 user alice mechanism LOGIN"]},
    "auth_plain_challenge": {"env": {"TCPREMOTEIP": "::1"}, "checkpassword": True,
                             "log": [b"auth ok ::1 user alice mechanism PLAIN"]},
    "auth_needs_tls": {"checkpassword": True},
    "rcptcheck": {"control": {"rcptcheck": "1\n"}, "files": {"alias/.qmail-known": "./Maildir/\n"}},
    "rcptcheck_off": {"control": {"rcptcheck": "0\n"}},
}


def _hops_input() -> bytes:
    """99 hop lines pass; 98 Received + 2 Delivered-To do not; body lines never count."""
    head = b"HELO x\r\n"
    txn = b"MAIL FROM:<s@x.example>\r\nRCPT TO:<a@test.example>\r\nDATA\r\n"
    msg1 = b"Received: from a\r\n" * 99 + b"\r\nbody\r\n.\r\n"
    msg2 = b"received: x\r\n" * 98 + b"Delivered-To: a\r\nDELIVERED-TO: b\r\n\r\n.\r\n"
    msg3 = b"Received: one\r\n\r\n" + b"Received: body\r\n" * 150 + b".\r\n"
    return head + txn + msg1 + txn + msg2 + txn + msg3 + b"QUIT\r\n"


GENERATED = {
    "overlong_line": lambda: (b"HELO x\r\nNOOP " + b"x" * (1 << 20) + b"\r\nNOOP\r\n"
                              + b"MAIL FROM:<" + b"y" * (3 << 20) + b"\nQUIT\r\n"),
    "hops": _hops_input,
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, request):
    for name in CLEARED:
        monkeypatch.delenv(name, raising=False)
    if "home" in request.fixturenames:      # qmail's behaviour, not a new instance's
        home = request.getfixturevalue("home")
        for name, text in BASE.items():
            control(home, name, text)


def session(home: Path, data: bytes, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """Run qmail-smtpd with ENV plus ``env`` (a None value unsets)."""
    full = dict(ENV)
    full.update(env or {})
    unset = [k for k, v in full.items() if v is None]
    full = {k: v for k, v in full.items() if v is not None}
    if unset:
        base = {k: v for k, v in os.environ.items() if k not in unset}
        base.update(full, QMAILHOME=str(home))
        return subprocess.run([str(home / "bin" / "qmail-smtpd")], input=data, capture_output=True,
                              env=base, timeout=kw.get("timeout", 60))
    return run(home, "qmail-smtpd", input=data, env=full, **kw)


DATE = re.compile(rb"\d{1,2} [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d -0000")
ACCEPT = re.compile(rb"250 ((?:2\.0\.0 )?)ok \d+ qp (\d+)")


def render(home: Path, result: subprocess.CompletedProcess) -> bytes:
    """The normalised transcript + exit code + queue, as stored in a .ref file."""
    qps = ACCEPT.findall(result.stdout)
    names = {qp: b"QP%d" % (i + 1) for i, (_, qp) in enumerate(qps)}
    text = ACCEPT.sub(lambda m: b"250 " + m[1] + b"ok TIME qp " + names[m[2]], result.stdout)
    text += b"--- exit %d\n" % result.returncode
    messages = queued(home)
    assert set(messages) == set(names), "queued messages must be exactly the acknowledged ones"
    for qp, name in names.items():
        mess, envelope = messages[qp]
        mess = DATE.sub(b"DATE", mess.replace(b"qmail %s invoked" % qp, b"qmail " + name + b" invoked"))
        mess = re.sub(rb"invoked by uid \d+", b"invoked by uid UID", mess)
        envelope = re.sub(rb"^u\d+\0p\d+\0", b"uUID\0p" + name + b"\0", envelope)
        text += b"--- message " + name + b"\n" + mess
        text += b"--- envelope " + name + b"\n" + envelope.replace(b"\0", b"\\0") + b"\n"
    return text


def prepare(home: Path, case: str, tmp_path: Path) -> dict:
    """Write the case's control files; return its environment."""
    spec = CASES[case]
    for name, text in spec.get("control", {}).items():
        if text is None:
            (home / "control" / name).unlink(missing_ok=True)
        else:
            control(home, name, text)
    for name, text in spec.get("files", {}).items():
        (home / name).write_text(text)
    if "morercpthosts" in spec:
        cdb.rebuild(str(home / "control" / "morercpthosts.cdb"), [(k, b"") for k in spec["morercpthosts"]])
    env = dict(spec.get("env", {}))
    if spec.get("checkpassword"):
        script = tmp_path / "checkpassword"
        script.write_text(CHECKPASSWORD)
        env["CHECKPASSWORD"] = f"{sys.executable} {script} /bin/true"
    return env


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_transcript(home, tmp_path, case):
    env = prepare(home, case, tmp_path)
    data = GENERATED[case]() if case in GENERATED else (DATA / f"{case}.in").read_bytes()
    result = session(home, data, env)
    assert result.stderr == b"".join(b"qmail-smtpd: %s\n" % line for line in CASES[case].get("log", []))
    assert leftovers(home) == []
    got = render(home, result)
    ref = DATA / f"{case}.ref"
    if os.environ.get("QPY_REGOLD"):
        ref.write_bytes(got)
    assert got == ref.read_bytes()


def test_every_input_file_has_a_case():
    assert {p.stem for p in DATA.glob("*.in")} | set(GENERATED) == set(CASES)
    assert {p.stem for p in DATA.glob("*.ref")} == set(CASES)


QQ_REPLIES = [
    (0, b"250 ok "),
    (11, b"554 envelope address too long for qq (#5.1.3)"),
    (31, b"554 mail server permanently rejected message (#5.3.0)"),
    (51, b"451 qq out of memory (#4.3.0)"),
    (52, b"451 qq timeout (#4.3.0)"),
    (53, b"451 qq write error or disk full (#4.3.0)"),
    (54, b"451 qq read error (#4.3.0)"),
    (55, b"451 qq unable to read configuration (#4.3.0)"),
    (56, b"451 qq trouble making network connection (#4.3.0)"),
    (61, b"451 qq trouble in home directory (#4.3.0)"),
    (62, b"451 qq trouble creating files in queue (#4.3.0)"),
    (66, b"451 qq trouble creating files in queue (#4.3.0)"),
    (71, b"451 mail server temporarily rejected message (#4.3.0)"),
    (72, b"451 connection to mail server timed out (#4.4.1)"),
    (73, b"451 connection to mail server rejected (#4.4.1)"),
    (74, b"451 communication with mail server failed (#4.4.2)"),
    (81, b"451 qq internal bug (#4.3.0)"),
    (91, b"451 qq internal bug (#4.3.0)"),
    (120, b"451 unable to exec qq (#4.3.0)"),
    (25, b"554 qq permanent problem (#5.3.0)"),
    (100, b"451 qq temporary problem (#4.3.0)"),
    (82, b"554 sorry, your message looks like spam (#5.7.1)"),
    (-9, b"451 qq crashed (#4.3.0)"),
]

TXN = b"HELO x\r\nMAIL FROM:<s@x.example>\r\nRCPT TO:<a@test.example>\r\nDATA\r\nx: y\r\n.\r\nQUIT\r\n"


@pytest.mark.parametrize("code,reply", QQ_REPLIES)
def test_reply_for_each_qmail_queue_exit_code(home, tmp_path, code, reply):
    """Only exit 0 gets 250; every other code gets qmail_close()'s text (docs/protocols.md §1)."""
    qq = tmp_path / "qq"
    body = "cat >/dev/null; cat <&1 >/dev/null; "
    if code == 82:
        body += "printf 'Dsorry, your message looks like spam (#5.7.1)' >&6; exit 82\n"
    elif code < 0:
        body += f"kill {-code} $$\n"
    else:
        body += f"exit {code}\n"
    qq.write_text("#!/bin/sh\n" + body)
    qq.chmod(0o755)
    result = session(home, TXN, {"QMAILQUEUE": str(qq)})
    lines = result.stdout.split(b"\r\n")
    assert lines[5].startswith(reply), lines
    assert lines[6].startswith(b"221 ") and result.returncode == 0


def test_unrunnable_qmailqueue_is_451(home):
    result = session(home, TXN, {"QMAILQUEUE": "/nonexistent/qmail-queue"})
    assert result.stdout.split(b"\r\n")[5] == b"451 unable to exec qq (#4.3.0)"


def test_exec_path_queues_the_same_as_warm(home):
    """QPY_EXEC=1: qmail-queue exec'd from bin/ instead of forked warm; same bytes queued."""
    for env in ({}, {"QPY_EXEC": "1"}):
        assert session(home, TXN, env).stdout.split(b"\r\n")[5].startswith(b"250 ok ")
    (a_mess, a_env), (b_mess, b_env) = queued(home).values()
    strip = lambda m: DATE.sub(b"DATE", m.split(b"\n", 1)[1])     # noqa: E731
    assert strip(a_mess) == strip(b_mess) and a_env.split(b"\0", 2)[2] == b_env.split(b"\0", 2)[2]


def test_silent_client_gets_451_timeout(home):
    control(home, "timeoutsmtpd", "1\n")
    proc = subprocess.Popen([str(home / "bin" / "qmail-smtpd")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, **ENV, QMAILHOME=str(home)))
    proc.stdin.write(b"HELO x\r\nMAIL FROM:<s@x.example>\r\nRCPT TO:<a@test.example>\r\nDATA\r\nhalf\r\n")
    proc.stdin.flush()
    guard = threading.Timer(30, proc.kill)
    guard.start()
    out = proc.stdout.read()        # stdin stays open: only the timeout can end the session
    err = proc.stderr.read()
    guard.cancel()
    proc.stdin.close()
    proc.wait(timeout=30)
    assert out.endswith(b"354 go ahead\r\n451 timeout (#4.4.2)\r\n")
    assert proc.returncode == 1 and err == b""
    assert queued(home) == {} and leftovers(home) == []


def test_unreadable_control_is_421(home):
    (home / "control" / "rcpthosts").unlink()
    (home / "control" / "rcpthosts").mkdir()        # reading it fails with EISDIR
    result = session(home, b"HELO x\r\n")
    assert result.stdout == b"421 unable to read controls (#4.3.0)\r\n"
    assert result.returncode == 1
    assert result.stderr.startswith(b"qmail-smtpd: unable to read controls")


def test_corrupt_morercpthosts_is_421(home):
    control(home, "morercpthosts.cdb", b"short")
    result = session(home, b"HELO x\r\n")
    assert (result.stdout, result.returncode) == (b"421 unable to read controls (#4.3.0)\r\n", 1)


def test_auth_temporary_failure_is_454(home, tmp_path):
    env = prepare(home, "auth", tmp_path)
    login = base64.b64encode(b"\0tempfail\0x")
    result = session(home, b"EHLO c\r\nAUTH PLAIN " + login + b"\r\nQUIT\r\n", env)
    assert b"454 4.7.0 temporary authentication failure (#4.7.0)\r\n" in result.stdout


def test_privileged_instance_runs_as_qmaild(priv_home):
    """Started as root on a privileged instance, qmail-smtpd becomes qmaild before it reads."""
    import pwd
    qmaild = pwd.getpwnam("qmaild")
    os.chmod(priv_home.parent, 0o755)
    proc = subprocess.Popen([str(priv_home / "bin" / "qmail-smtpd")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, **ENV, QMAILHOME=str(priv_home)))
    try:
        assert proc.stdout.readline() == b"220 test.example ESMTP\r\n"
        status = Path(f"/proc/{proc.pid}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert set(map(int, uids)) == {qmaild.pw_uid}
    finally:
        out, err = proc.communicate(b"QUIT\r\n", timeout=30)
    assert out == b"221 test.example\r\n" and proc.returncode == 0 and err == b""
