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
import time
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


# -- limits on what one client may cost (qpy.smtplimits) ------------------------------------


class Live:
    """qmail-smtpd on pipes, driven step by step; reply lines come with their arrival time."""

    def __init__(self, home: Path, env: dict | None = None, guard: float = 60) -> None:
        self.proc = subprocess.Popen([str(home / "bin" / "qmail-smtpd")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env={**os.environ, **ENV, "QMAILHOME": str(home), **(env or {})})
        self.guard = threading.Timer(guard, self.proc.kill)   # a session that never ends fails
        self.guard.start()
        self.started = time.monotonic()

    def send(self, data: bytes) -> None:
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass

    def line(self) -> tuple[float, bytes]:
        """(seconds since the start, the next reply line)."""
        line = self.proc.stdout.readline()
        return time.monotonic() - self.started, line

    def finish(self) -> tuple[bytes, bytes, int]:
        """(the rest of the output, fd 2, exit code) once the session has ended by itself."""
        out = self.proc.stdout.read()
        err = self.proc.stderr.read()
        self.guard.cancel()
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        return out, err, self.proc.wait(timeout=30)


def rcpts(count: int, start: int = 0) -> bytes:
    return b"".join(b"RCPT TO:<r%d@test.example>\r\n" % i for i in range(start, start + count))


def test_recipient_1001_gets_452_and_the_message_keeps_1000(home):
    """A new instance's control/maxrcpt is 1000: RFC 5321 §4.5.3.1.10's 452 for the next."""
    assert (home / "control" / "maxrcpt").read_bytes() == b"1000\n"
    result = session(home, b"EHLO c\r\nMAIL FROM:<s@x.example>\r\n" + rcpts(1001)
                     + b"DATA\r\nx: y\r\n\r\nhi\r\n.\r\nQUIT\r\n")
    lines = result.stdout.split(b"\r\n")
    start = lines.index(b"250 2.1.0 ok") + 1
    assert lines[start:start + 1000] == [b"250 2.1.5 ok"] * 1000
    assert lines[start + 1000] == b"452 4.5.3 too many recipients (#4.5.3)"
    assert lines[start + 1001] == b"354 go ahead"
    assert lines[start + 2].startswith(b"250 2.0.0 ok ") or lines[start + 1002].startswith(b"250 2.0.0 ok ")
    (_, envelope), = queued(home).values()
    assert envelope.count(b"\0T") == 1000 and b"Tr999@test.example\0" in envelope
    assert b"Tr1000@" not in envelope and result.returncode == 0


def test_maxrcpt_env_overrides_the_file(home):
    control(home, "maxrcpt", "0\n")
    result = session(home, b"HELO c\r\nMAIL FROM:<s@x.example>\r\n" + rcpts(3) + b"QUIT\r\n",
                     {"MAXRCPT": "2"})
    assert result.stdout.split(b"\r\n")[3:7] == [b"250 ok", b"250 ok",
                                                b"452 too many recipients (#4.5.3)", b"221 test.example"]


def test_recipient_flood_is_cut_with_421(home):
    """Past maxrcpt, as many 452s again are quiet; each further one is an error, and the
    20th error closes the session: nothing is stored, whatever the client keeps sending."""
    control(home, "maxrcpt", "10\n")
    result = session(home, b"EHLO c\r\nMAIL FROM:<s@x.example>\r\n" + rcpts(100000))
    lines = result.stdout.split(b"\r\n")
    start = lines.index(b"250 2.1.0 ok") + 1
    assert lines[start:] == ([b"250 2.1.5 ok"] * 10 + [b"452 4.5.3 too many recipients (#4.5.3)"] * 30
                             + [b"421 4.7.0 too many errors, closing connection (#4.7.0)", b""])
    assert result.returncode == 1
    assert result.stderr == b"qmail-smtpd: closed 192.0.2.7: too many errors, closing connection (#4.7.0)\n"


def test_21_bad_commands_get_20_errors_then_421(home):
    """Postfix's smtpd_hard_error_limit: the 20th error reply is followed by 421 and the end."""
    result = session(home, b"HELO c\r\n" + b"BOGUS\r\n" * 21 + b"QUIT\r\n")
    assert result.stdout.split(b"\r\n") == (
        [b"220 test.example ESMTP", b"250 test.example"] + [b"502 unimplemented (#5.5.1)"] * 20
        + [b"421 too many errors, closing connection (#4.7.0)", b""])
    assert result.returncode == 1


def test_errors_are_counted_afresh_after_an_accepted_message(home):
    control(home, "maxerrors", "3\n")
    txn = b"MAIL FROM:<s@x.example>\r\nRCPT TO:<a@test.example>\r\nDATA\r\nx: y\r\n.\r\n"
    result = session(home, b"HELO c\r\n" + b"BOGUS\r\n" * 2 + txn + b"BOGUS\r\n" * 2 + b"QUIT\r\n")
    assert result.stdout.count(b"502 ") == 4 and result.stdout.endswith(b"221 test.example\r\n")
    result = session(home, b"HELO c\r\n" + b"BOGUS\r\n" * 3 + b"QUIT\r\n")
    assert result.stdout.endswith(b"502 unimplemented (#5.5.1)\r\n421 too many errors, closing"
                                  b" connection (#4.7.0)\r\n")


def test_junk_commands_past_maxjunk_count_as_errors(home):
    control(home, "maxjunk", "3\n")
    control(home, "maxerrors", "2\n")
    result = session(home, b"EHLO c\r\nNOOP\r\nRSET\r\nVRFY x\r\nHELP\r\nNOOP\r\nNOOP\r\n")
    assert result.stdout.split(b"\r\n")[-7:] == [
        b"250 2.0.0 ok", b"250 2.0.0 flushed", b"252 2.0.0 send some mail, i'll try my best",
        b"214 2.0.0 notqmail home page: https://notqmail.org", b"250 2.0.0 ok",
        b"421 4.7.0 too many errors, closing connection (#4.7.0)", b""]
    assert result.returncode == 1


def test_slowloris_is_cut_at_the_session_deadline(home):
    """One byte every 0.2 s never trips the 5 s read timeout, but the 2 s session ends."""
    control(home, "timeoutsmtpd", "5\n")
    control(home, "timeoutsmtpdsession", "2\n")
    live = Live(home)
    assert live.line()[1] == b"220 test.example ESMTP\r\n"
    stop = threading.Event()

    def trickle() -> None:
        while not stop.is_set() and live.proc.poll() is None:
            live.send(b"N")
            time.sleep(0.2)
    threading.Thread(target=trickle, daemon=True).start()
    when, line = live.line()
    stop.set()
    out, err, code = live.finish()
    assert line == b"421 session time limit exceeded, closing connection (#4.4.2)\r\n"
    assert when >= 2 and code == 1 and out == b""
    assert err == b"qmail-smtpd: closed 192.0.2.7: session time limit exceeded, closing connection (#4.4.2)\n"


def test_data_slower_than_mindatarate_is_cut(home):
    """5 bytes a second in DATA never trips the 1 s read timeout; 1000 bytes/s is required."""
    control(home, "timeoutsmtpd", "1\n")
    control(home, "timeoutsmtpdsession", "0\n")
    control(home, "mindatarate", "1000\n")
    live = Live(home)
    live.send(b"HELO c\r\nMAIL FROM:<s@x.example>\r\nRCPT TO:<a@test.example>\r\nDATA\r\n")
    while live.line()[1] != b"354 go ahead\r\n":
        pass
    started = time.monotonic()
    stop = threading.Event()

    def trickle() -> None:
        while not stop.is_set() and live.proc.poll() is None:
            live.send(b"x")
            time.sleep(0.2)
    threading.Thread(target=trickle, daemon=True).start()
    line = live.proc.stdout.readline()
    elapsed = time.monotonic() - started
    stop.set()
    out, err, code = live.finish()
    assert line == b"421 data rate too low, closing connection (#4.4.2)\r\n"
    assert elapsed >= 1 and code == 1
    assert queued(home) == {} and leftovers(home) == []


def test_stress_mode_shortens_the_read_timeout(home):
    """QPYSTRESS=1 (tcpserver's slots nearly full): a thirtieth of timeoutsmtpd, at most 10 s."""
    control(home, "timeoutsmtpd", "30\n")
    live = Live(home, {"QPYSTRESS": "1"}, guard=15)
    assert live.line()[1] == b"220 test.example ESMTP\r\n"
    when, line = live.line()        # stdin stays open and silent
    out, err, code = live.finish()
    assert line == b"451 timeout (#4.4.2)\r\n" and when >= 1 and code == 1
    live = Live(home, {"QPYSTRESS": ""})     # not under stress: the full 30 s
    assert live.line()[1] == b"220 test.example ESMTP\r\n"
    live.send(b"QUIT\r\n")
    assert live.line()[1] == b"221 test.example\r\n"
    live.finish()


def test_huge_helo_never_reaches_the_received_line(home):
    """A command line over 4096 bytes is refused (RFC 5321 §4.5.3.1.4 allows it); a long one
    under the cap is accepted but only its first 255 bytes go into Received."""
    big = b"h" * (1 << 20)
    txn = b"MAIL FROM:<s@x.example>\r\nRCPT TO:<a@test.example>\r\nDATA\r\nx: y\r\n.\r\n"
    result = session(home, b"HELO " + big + b"\r\n" + txn + b"HELO " + b"k" * 4000 + b"\r\n" + txn
                     + b"QUIT\r\n")
    lines = result.stdout.split(b"\r\n")
    assert lines[1] == b"500 sorry, line too long (#5.5.2)"
    assert result.returncode == 0
    messages = [mess for mess, _ in queued(home).values()]
    assert len(messages) == 2 and all(len(m) < 1024 for m in messages)
    assert sum(b"(HELO " + b"k" * 255 + b")" in m for m in messages) == 1


def test_auth_failures_wait_longer_each_time_then_421(home, tmp_path):
    """authfaildelay 1: the first 535 after >= 1 s, the second >= 2 s after it; maxauthfail 2
    closes the session; each attempt is logged with the address and the user, never the password."""
    env = prepare(home, "auth", tmp_path)
    control(home, "authfaildelay", "1\n")
    control(home, "maxauthfail", "2\n")
    live = Live(home, env)
    wrong = b"AUTH PLAIN " + base64.b64encode(b"\0alice\0hunter2") + b"\r\n"
    live.send(b"EHLO c\r\n")
    while not live.line()[1].startswith(b"250 "):
        pass
    sent = time.monotonic() - live.started
    live.send(wrong)
    first, line1 = live.line()
    live.send(wrong)
    second, line2 = live.line()
    out, err, code = live.finish()
    assert line1 == line2 == b"535 5.7.8 authorization failed (#5.7.8)\r\n"
    assert first - sent >= 1 and second - first >= 2
    assert out == b"421 4.7.0 too many authentication failures, closing connection (#4.7.0)\r\n"
    assert code == 1
    assert err == (b"qmail-smtpd: auth failed 127.0.0.1 user alice mechanism PLAIN\n" * 2
                   + b"qmail-smtpd: closed 127.0.0.1: too many authentication failures,"
                   b" closing connection (#4.7.0)\n")
    assert b"hunter2" not in err


def test_auth_user_name_is_escaped_in_the_log(home, tmp_path):
    env = prepare(home, "auth", tmp_path)
    control(home, "authfaildelay", "0\n")
    login = base64.b64encode(b"\0ev il\nqmail-smtpd: auth ok\0x")
    result = session(home, b"EHLO c\r\nAUTH PLAIN " + login + b"\r\nQUIT\r\n", env)
    assert result.stderr == b"qmail-smtpd: auth failed 127.0.0.1 user ev?il?qmail-smtpd:?auth?ok mechanism PLAIN\n"


def test_new_instance_refuses_over_10_mb_with_552(home):
    """A new instance's databytes is Postfix's 10 MB: SIZE= and DATA both get 552 5.3.4."""
    from qpy import hier
    control(home, "databytes", hier.control_defaults(b"test.example")["databytes"])  # BASE's is 0
    assert b"\r\n250-SIZE 10485760\r\n" in session(home, b"EHLO c\r\nQUIT\r\n").stdout
    body = b"x" * 998 + b"\r\n"
    result = session(home, b"EHLO c\r\nMAIL FROM:<s@x.example> SIZE=10485761\r\n"
                     b"MAIL FROM:<s@x.example>\r\nRCPT TO:<a@test.example>\r\nDATA\r\n"
                     + body * 10600 + b".\r\nQUIT\r\n")
    too_big = b"552 5.3.4 sorry, that message size exceeds my databytes limit (#5.3.4)"
    assert result.stdout.split(b"\r\n")[-7:] == [
        too_big, b"250 2.1.0 ok", b"250 2.1.5 ok", b"354 go ahead", too_big,
        b"221 2.0.0 test.example", b""]
    assert queued(home) == {}


# -- SRS recipients (qpy.srs): refused at RCPT unless they verify --------------------------

def srs_instance(home: Path) -> dict[str, bytes]:
    """srs.test.example is the SRS domain, in neither rcpthosts nor locals; rcptcheck on.
    Returns addresses: valid, forged, expired, malformed, one at another domain."""
    from qpy import srs
    control(home, "srs_domain", "srs.test.example\n")
    control(home, "srs_secrets", "first secret\n")
    control(home, "rcpthosts", "test.example\n")
    control(home, "rcptcheck", "1\n")
    valid = srs.forward_sender(b"alice@orig.example")
    assert valid.startswith(b"SRS0=") and valid.endswith(b"@srs.test.example")
    return {"valid": valid,
            "srs1": srs.forward_sender(b"SRS0=abcd=QQ=orig.example=bob@first.example"),
            "forged": valid.replace(b"=alice@", b"=mallory@"),
            "expired": srs.forward_sender(b"alice@orig.example", time.time() - 30 * 86400),
            "malformed": b"SRS0=abcd@srs.test.example",
            "elsewhere": valid.replace(b"@srs.test.example", b"@srs.other.example")}


def test_srs_recipients_checked_at_rcpt(home):
    a = srs_instance(home)
    rcpt = b"".join(b"RCPT TO:<%s>\r\n" % a[k] for k in
                    ("valid", "forged", "expired", "malformed", "elsewhere", "srs1"))
    result = session(home, b"EHLO c\r\nMAIL FROM:<s@x.example>\r\n" + rcpt
                     + b"DATA\r\nx: y\r\n.\r\nQUIT\r\n")
    assert result.stdout.split(b"\r\n")[-11:-3] == [
        b"250 2.1.0 ok", b"250 2.1.5 ok",
        b"550 5.7.1 forged SRS address (#5.7.1)", b"550 5.7.1 expired SRS address (#5.7.1)",
        b"550 5.1.1 malformed SRS address (#5.1.1)",
        b"553 5.7.1 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)",
        b"250 2.1.5 ok", b"354 go ahead"]
    assert result.stdout.split(b"\r\n")[-3].startswith(b"250 2.0.0 ok ")
    [(_, envelope)] = queued(home).values()
    assert envelope.count(b"\0T") == 2       # the queue writer may already have turned them back


def test_srs_refusal_after_helo_and_case_folded_valid_address(home):
    a = srs_instance(home)
    result = session(home, b"HELO c\r\nMAIL FROM:<s@x.example>\r\nRCPT TO:<%s>\r\n"
                     b"RCPT TO:<%s>\r\nQUIT\r\n" % (a["forged"], a["valid"].lower()))
    assert result.stdout.split(b"\r\n")[2:5] == [
        b"250 ok", b"550 forged SRS address (#5.7.1)", b"250 ok"]


def test_srs_refusals_count_as_errors(home):
    a = srs_instance(home)
    control(home, "maxerrors", "2\n")
    result = session(home, b"HELO c\r\nMAIL FROM:<s@x.example>\r\n"
                     + b"RCPT TO:<%s>\r\n" % a["forged"] * 3)
    assert result.stdout.split(b"\r\n")[3:] == [
        b"550 forged SRS address (#5.7.1)", b"550 forged SRS address (#5.7.1)",
        b"421 too many errors, closing connection (#4.7.0)", b""]


def test_srs_off_leaves_rcpt_to_rcpthosts(home):
    a = srs_instance(home)
    os.unlink(home / "control" / "srs_secrets")
    result = session(home, b"HELO c\r\nMAIL FROM:<s@x.example>\r\nRCPT TO:<%s>\r\nQUIT\r\n"
                     % a["forged"])
    assert result.stdout.split(b"\r\n")[3] == (
        b"553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)")


def test_unreadable_srs_secret_is_421_only_for_srs_recipients(home):
    a = srs_instance(home)
    os.unlink(home / "control" / "srs_secrets")
    os.mkdir(home / "control" / "srs_secrets")
    result = session(home, b"HELO c\r\nMAIL FROM:<s@x.example>\r\n"
                     b"RCPT TO:<postmaster@test.example>\r\nRCPT TO:<%s>\r\nQUIT\r\n" % a["valid"])
    assert result.stdout.split(b"\r\n")[3:] == [
        b"250 ok", b"421 unable to read controls (#4.3.0)", b""]
    assert result.returncode == 1


def test_privileged_qmaild_reads_the_srs_secret(priv_home):
    """The secret is qmaild's, group qmail, 0440: qmail-smtpd, qmaild by then, verifies."""
    import pwd
    import stat as st
    from qpy import srs
    os.chmod(priv_home.parent, 0o755)
    secret = priv_home / "control" / "srs_secrets"
    info = secret.stat()
    assert (info.st_uid, st.S_IMODE(info.st_mode)) == (pwd.getpwnam("qmaild").pw_uid, 0o440)
    control(priv_home, "rcpthosts", "test.example\n")      # the SRS domain (me) is listed...
    control(priv_home, "srs_domain", "srs.test.example\n")  # ...this one is not
    valid = srs.forward_sender(b"alice@orig.example")
    forged = valid.replace(b"=alice@", b"=mallory@")
    result = session(priv_home, b"HELO c\r\nMAIL FROM:<s@x.example>\r\nRCPT TO:<%s>\r\n"
                     b"RCPT TO:<%s>\r\nQUIT\r\n" % (valid, forged))
    assert result.stdout.split(b"\r\n")[2:5] == [
        b"250 ok", b"250 ok", b"550 forged SRS address (#5.7.1)"], result.stderr
