"""qpy.shim: our programs named by QMAILQUEUE, QMAILREMOTE and .qmail lines run warm, alike to exec.

Each hook runs the same program twice, warm and with QPY_EXEC=1, and the results
(queued files, delivered messages, reports, exit codes, output bytes) must be equal.
Which path ran is read from /proc while the program runs: a warm child keeps its
parent's command name (/proc/<pid>/comm) and command line; an exec'd one shows its own.
"""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import control, unsrs
from qpy import auto, qmailq, queuedir, shim
from smtpsink import SMTPSink

MSG = b"Subject: hook\nFrom: a@example.org\n\nfirst line\nsecond line\n"
MODES = {"warm": {}, "exec": {"QPY_EXEC": "1"}}


# -- /proc ----------------------------------------------------------------------------------

def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def cmdline(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]


def children(pid: int) -> list[int]:
    """Every process whose parent is ``pid``."""
    kids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(b")", 1)[1].split()[1]) == pid:
                kids.append(int(name))
    return kids


def wait_for(what, timeout: float = 20):
    """Poll ``what()`` until it returns something true; return that."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = what()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def reading_a_pipe(pid: int) -> bool:
    """True while ``pid`` sleeps in read(2) on a pipe: past any exec, inside the program."""
    try:
        wchan = Path(f"/proc/{pid}/wchan").read_text()
        syscall = Path(f"/proc/{pid}/syscall").read_text()
    except OSError:
        return False
    return "pipe" in wchan or (os.uname().machine == "x86_64" and syscall.startswith("0 0x0 "))


def script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def queue_contents(home: Path) -> list[tuple[bytes, bytes]]:
    """Every queued message: (mess without its Received line, todo from the F record on)."""
    out = []
    for msgid in queuedir.scan_flat(str(home / "queue"), "todo"):
        mess = (home / "queue" / queuedir.mess(msgid)).read_bytes()
        todo = (home / "queue" / queuedir.todo(msgid)).read_bytes()
        out.append((mess.split(b"\n", 1)[1], todo[todo.index(b"\0F") + 1:]))
    return sorted(out)


# -- recognising our programs ----------------------------------------------------------------

def console_script(path: Path, module: str, quote: str = "'") -> Path:
    text = f"#!{sys.executable}\n" + shim.CONSOLE_SCRIPT.format(module=module).replace("'", quote)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_instance_shims_source_shims_and_console_scripts_are_ours(home, tmp_path):
    assert shim.ours(str(home / "bin" / "qmail-queue")) == "qmail-queue"
    assert shim.ours(str(home / "bin" / "except")) == "except"
    assert shim.ours(os.path.join(shim.SOURCE_BIN, "forward")) == "forward"
    assert shim.ours(str(console_script(tmp_path / "a" / "qmail-remote", "qmail_remote"))) == "qmail-remote"
    assert shim.ours(str(console_script(tmp_path / "b" / "dot-forward", "dot_forward", '"'))) == "dot-forward"


def test_the_name_alone_proves_nothing(home, tmp_path):
    text = (home / "bin" / "qmail-queue").read_text()
    cases = {
        "qmail-queue": "#!/bin/sh\nexec cat\n",                              # a wrapper script
        "forward": text,                                                     # another program's shim
        "bouncesaying": text.replace("qmail_queue", "bouncesaying") + "print()\n",  # one line more
        "preline": text.replace("qmail_queue", "preline").replace(sys.executable, "/usr/bin/python2"),
        "condredirect": Path(shim.SOURCE_BIN, "condredirect").read_text(),  # a source shim elsewhere
        "qmail-nothing": text.replace("qmail_queue", "qmail_nothing"),       # not a program of ours
    }
    for name, body in cases.items():
        p = tmp_path / name
        p.write_text(body)
        p.chmod(0o755)
        assert shim.ours(str(p)) is None, name
    p = tmp_path / "x" / "qmail-inject"
    p.parent.mkdir()
    p.write_text(text.replace("qmail_queue", "qmail_inject"))
    assert shim.ours(str(p)) is None          # not executable
    p.chmod(0o755)
    assert shim.ours(str(p)) == "qmail-inject"
    os.mkfifo(tmp_path / "qmail-send")
    assert shim.ours(str(tmp_path / "qmail-send")) is None      # a FIFO: no wait for a writer
    (tmp_path / "qmail-clean").mkdir()
    assert shim.ours(str(tmp_path / "qmail-clean")) is None
    assert shim.ours(str(tmp_path / "nowhere" / "qmail-queue")) is None


def test_find_searches_path_and_qpy_exec_finds_nothing(home, tmp_path, monkeypatch):
    script(tmp_path / "first" / "forward", "exit 0\n").chmod(0o644)   # not executable: skipped
    env = {"PATH": f"{tmp_path / 'first'}:{home / 'bin'}"}
    assert shim.find("forward", True, env) == ("forward", str(home / "bin" / "forward"))
    assert shim.find("forward", False, env) is None                  # execv: ./forward, none here
    assert shim.find(str(home / "bin" / "forward")) == ("forward", str(home / "bin" / "forward"))
    monkeypatch.setenv("QPY_EXEC", "1")
    assert shim.find(str(home / "bin" / "forward")) is None


@pytest.mark.parametrize("command,argv", [
    (b"/q/bin/forward a@b.example", [b"/q/bin/forward", b"a@b.example"]),
    (b"forward  a@b\tc-d+e=f%g,h:i", [b"forward", b"a@b", b"c-d+e=f%g,h:i"]),
    (b"./bin/bouncesaying no", [b"./bin/bouncesaying", b"no"]),
    (b"", None), (b"   ", None),
    (b"A=b forward x", None),                  # an assignment
    (b"forward 'a b'", None), (b'forward "a"', None), (b"forward a\\ b", None),
    (b"forward $USER", None), (b"forward `id`", None), (b"forward a; b", None),
    (b"forward a | b", None), (b"forward a & b", None), (b"forward < x", None),
    (b"forward > x", None), (b"forward *", None), (b"forward ?", None), (b"forward [a]", None),
    (b"~/bin/forward", None), (b"forward #c", None), (b"forward (a)", None),
    (b"forward {a}", None), (b"! forward", None), (b"forward caf\xc3\xa9", None),
])
def test_only_plain_words_skip_the_shell(command, argv):
    assert shim.words(command) == argv


@pytest.mark.parametrize("pwd", [None, "/", "link", "real", "real/.", "relative", "gone"])
def test_shell_environ_is_what_bin_sh_passes_on(tmp_path, monkeypatch, pwd):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    monkeypatch.chdir(real)
    values = {"/": "/", "relative": "real", "gone": str(tmp_path / "gone")}
    env = {"A": "1"} if pwd is None else {"A": "1", "PWD": values.get(pwd, str(tmp_path / pwd))}
    out = subprocess.run(["/bin/sh", "-c", "env"], env=env, capture_output=True).stdout
    assert shim.shell_environ({os.fsencode(k): os.fsencode(v) for k, v in env.items()}) == dict(
        line.split(b"=", 1) for line in out.splitlines())


def test_exit_codes_are_the_interpreters(capsys):
    assert [shim.exit_code(v) for v in (None, 0, 3, 256)] == [0, 0, 3, 256]
    assert shim.exit_code("bye") == 1
    assert capsys.readouterr().err == "bye\n"


# -- what the program sees: one child, both ways ------------------------------------------

PROBE = ("printf 'comm %s\\n' \"$(cat /proc/$PPID/comm)\"\n"
         "printf 'fds %s\\n' \"$(ls /proc/$PPID/fd | sort -n | tr '\\n' ' ')\"\n"
         "printf 'sig %s\\n' \"$(grep -E '^Sig(Ign|Blk|Cgt)' /proc/$PPID/status | tr '\\n\\t' '  ')\"\n"
         "env | grep -v -e '^UFLINE=' -e '^QPY_EXEC=' | LC_ALL=C sort\n"
         "cat\n"
         "echo probe-err >&2\n"
         "exit 7\n")


def seen(probe_output: bytes) -> bytes:
    """The probe's output without its first line (the parent's comm, which tells warm from exec).

    glibc's two internal signals (32 and 33) are out of every program's reach: posix_spawn
    (qmail-local's /bin/sh) leaves them ignored in what it starts, and a process that once
    changed ids with several threads (pytest, after other tests) keeps glibc's handler for
    33, which a warm child inherits.  So they are masked out of SigIgn and SigCgt.
    """
    def mask(m: re.Match) -> bytes:
        return m.group(1) + b"%016x" % (int(m.group(2), 16) & ~(3 << 31))
    return re.sub(rb"(Sig(?:Ign|Cgt): )([0-9a-f]+)", mask, probe_output.split(b"\n", 1)[1])


def become_in_child(argv: list[str], stdin: bytes, env: dict[str, str]) -> tuple[int, bytes, bytes]:
    """Fork; in the child (an inheritable fd 50, a close-on-exec fd 51, unflushed output), become argv."""
    r0, w0 = os.pipe()
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 111
        try:
            for fd, to in ((r0, 0), (w1, 1), (w2, 2)):
                os.dup2(fd, to)
            for fd in (r0, w0, r1, w1, r2, w2):
                os.close(fd)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 50)                       # inheritable (dup2's default)
            os.dup2(null, 51, inheritable=False)
            os.close(null)
            sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)))
            sys.stdout.write("parent's pending output\n")     # an exec would drop it
            os.environ.clear()
            os.environ.update(env)
            code = shim.become(argv)
        except BaseException as e:
            os.write(2, repr(e).encode())
        os._exit(code)
    for fd in (r0, w1, w2):
        os.close(fd)
    os.write(w0, stdin)
    os.close(w0)
    out = b""
    while chunk := os.read(r1, 65536):
        out += chunk
    err = b""
    while chunk := os.read(r2, 65536):
        err += chunk
    os.close(r1)
    os.close(r2)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), out, err


def test_become_gives_a_warm_program_what_the_exec_gives_it(home, tmp_path):
    """preline runs the probe: its parent (preline) is inspected from inside while it waits."""
    probe = script(tmp_path / "probe", PROBE)
    runs = {}
    for mode, extra in MODES.items():
        env = {"PATH": "/usr/bin:/bin", "QMAILHOME": str(home), "UFLINE": "From x\n",
               "RPLINE": "Return-Path: <x>\n", "DTLINE": "Delivered-To: y\n", **extra}
        runs[mode] = become_in_child([str(home / "bin" / "preline"), "-f", str(probe)], MSG, env)
    (wcode, wout, werr), (xcode, xout, xerr) = runs["warm"], runs["exec"]
    assert wout.startswith(b"comm %s\n" % comm(os.getpid()).encode()), wout
    assert xout.startswith(b"comm preline\n"), xout
    assert (wcode, werr) == (xcode, xerr) == (7, b"probe-err\n")
    assert seen(wout) == seen(xout)
    fds = re.search(rb"fds ([\d ]*)\n", xout).group(1).split()
    assert b"50" in fds and b"51" not in fds
    assert xout.endswith(b"Return-Path: <x>\nDelivered-To: y\n" + MSG)


def test_become_execs_what_is_not_ours(home, tmp_path):
    fake = script(tmp_path / "bin" / "bouncesaying", "echo fake \"$@\"; exit 3\n")
    for extra in MODES.values():
        assert become_in_child([str(fake), "a"], b"", {"PATH": "/usr/bin:/bin", **extra}) == (
            3, b"fake a\n", b"")
        assert become_in_child(["/bin/cat"], b"x\n", {**extra}) == (0, b"x\n", b"")
        code, out, err = become_in_child([str(tmp_path / "none")], b"", {**extra})
        assert (code, out) == (111, b"") and b"FileNotFoundError" in err


def test_become_gives_the_interpreters_exit_and_output(home):
    for extra in MODES.values():
        env = {"PATH": "/usr/bin:/bin", "QMAILHOME": str(home), **extra}
        assert become_in_child([str(home / "bin" / "bouncesaying"), "no thanks"], b"", env) == (
            100, b"", b"no thanks\n")
        assert become_in_child([str(home / "bin" / "bouncesaying")], b"", env) == (
            100, b"", b"bouncesaying: usage: bouncesaying error [ program [ arg ... ] ]\n")


# -- QMAILQUEUE ---------------------------------------------------------------------------------

HEAD = (b"From: a@example.org\nTo: b@example.net\nDate: Thu, 1 Jan 2026 00:00:00 +0000\n"
        b"Message-ID: <fixed@example.org>\nSubject: hook\n\n")


def inject_while_watching(home: Path, env: dict[str, str]) -> tuple[int, bytes, str, list[bytes]]:
    """qmail-inject with the body held back: the queue program waits for it, and is watched."""
    p = subprocess.Popen([str(home / "bin" / "qmail-inject"), "b@example.net"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=dict(os.environ, **env))
    try:
        p.stdin.write(HEAD + b"first line\n")
        p.stdin.flush()
        (child,) = wait_for(lambda: children(p.pid))
        wait_for(lambda: reading_a_pipe(child))
        name, line = comm(child), cmdline(child)
        _, err = p.communicate(b"second line\n", timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    return p.returncode, err, name, line


def test_qmailqueue_naming_our_qmail_queue_runs_warm_from_qmail_inject(home):
    qq = str(home / "bin" / "qmail-queue")
    warm = inject_while_watching(home, {"QMAILQUEUE": qq})
    cold = inject_while_watching(home, {"QMAILQUEUE": qq, "QPY_EXEC": "1"})
    assert warm[:2] == cold[:2] == (0, b"")
    assert (warm[2], cold[2]) == ("qmail-inject", "qmail-queue")
    assert warm[3][-2:] == [str(home / "bin" / "qmail-inject").encode(), b"b@example.net"]
    assert cold[3][-1] == qq.encode()
    a, b = queue_contents(home)
    assert a == b
    assert re.fullmatch(rb"F[^\0]*@test\.example\0Tb@example\.net\0", a[1])
    assert a[0].endswith(b"Subject: hook\n\nfirst line\nsecond line\n")


def test_qmailqueue_job_warm_and_exec_queue_the_same(home, monkeypatch):
    """In this process: the job's own child is the queue program."""
    monkeypatch.setenv("QMAILQUEUE", str(home / "bin" / "qmail-queue"))
    seen = []
    for extra in MODES.values():
        monkeypatch.delenv("QPY_EXEC", raising=False)
        for k, v in extra.items():
            monkeypatch.setenv(k, v)
        job = qmailq.start()
        assert isinstance(job, qmailq.QueueJob)
        job.put(MSG)
        wait_for(lambda: reading_a_pipe(job.pid))
        seen.append((comm(job.pid), cmdline(job.pid)))
        assert job.close(b"s@example.org", [b"r@example.net"]) == ""
    assert seen[0][1] == cmdline(os.getpid())               # warm: this very interpreter's line
    assert seen[1][0] == "qmail-queue"
    a, b = queue_contents(home)
    assert a == b == (MSG, b"Fs@example.org\0Tr@example.net\0")


def test_qmailqueue_not_ours_is_exec_as_before(home, tmp_path, monkeypatch):
    fake = script(tmp_path / "bin" / "qmail-queue", "cat >/dev/null; cat <&1 >/dev/null; exit 31\n")
    monkeypatch.setenv("QMAILQUEUE", str(fake))
    for extra in MODES.values():
        for k, v in extra.items():
            monkeypatch.setenv(k, v)
        assert qmailq.queue_message(b"x\n", b"s@x", [b"r@y"]) == (
            "Dmail server permanently rejected message (#5.3.0)")
    assert queue_contents(home) == []


# -- QMAILREMOTE --------------------------------------------------------------------------------

def queued_for_remote(home: Path) -> bytes:
    before = set(queuedir.scan_flat(str(home / "queue"), "todo"))
    assert qmailq.queue_message(MSG, b"s@example.org", [b"r@example.net"]) == ""
    (msgid,) = set(queuedir.scan_flat(str(home / "queue"), "todo")) - before
    return queuedir.mess_rel(msgid).encode()


def rspawn_while_watching(home: Path, messid: bytes, env: dict[str, str]):
    """qmail-rspawn with one command; the sink looks at the delivering child during MAIL."""
    state: dict = {}

    def on_mail(arg: bytes) -> None:
        (child,) = children(state["pid"])
        state["comm"], state["cmdline"] = comm(child), cmdline(child)
        return None

    with SMTPSink("127.0.0.1", replies={"MAIL": on_mail}) as sink:
        control(home, "smtproutes", f"example.net:[127.0.0.1]:{sink.port}\n")
        p = subprocess.Popen([str(home / "bin" / "qmail-rspawn")], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=dict(os.environ, **env))
        state["pid"] = p.pid
        out, err = p.communicate(b"\0" + messid + b"\0s@example.org\0u@example.net\0", timeout=60)
        sink.wait_idle()
        data = [(m.mail_from, m.rcpts, m.data) for m in sink.messages]
    assert (p.returncode, err) == (0, b"")
    return out, data, state.get("comm"), state.get("cmdline")


def test_qmailremote_naming_our_qmail_remote_runs_warm(home, tmp_path):
    m = queued_for_remote(home)
    qr = str(home / "bin" / "qmail-remote")
    warm = rspawn_while_watching(home, m, {"QMAILREMOTE": qr})
    cold = rspawn_while_watching(home, m, {"QMAILREMOTE": qr, "QPY_EXEC": "1"})
    bare = rspawn_while_watching(home, m, {"QMAILREMOTE": "qmail-remote",
                                           "PATH": f"{home / 'bin'}:/usr/bin:/bin"})
    assert warm[:2] == cold[:2] == bare[:2]
    assert warm[0] == bytes([auto.SPAWN_LIMIT]) + b"\0K127.0.0.1 accepted message.\nRemote host said: 250 ok queued\n\0"
    assert warm[1][0][2].endswith(b"\r\nfirst line\r\nsecond line\r\n")
    assert (warm[2], cold[2], bare[2]) == ("qmail-rspawn", "qmail-remote", "qmail-rspawn")
    assert cold[3][-4:] == [qr.encode(), b"example.net", b"s@example.org", b"u@example.net"]


def test_qmailremote_not_ours_is_exec_as_before(home, tmp_path):
    m = queued_for_remote(home)
    fake = script(tmp_path / "bin" / "qmail-remote", 'printf "r\\0K%s %s\\0" "$1" "$(head -c 9)"\n')
    for extra in MODES.values():
        r = subprocess.run([str(home / "bin" / "qmail-rspawn")], capture_output=True, timeout=60,
                           input=b"\0" + m + b"\0s@example.org\0u@example.net\0",
                           env=dict(os.environ, QMAILREMOTE=str(fake), **extra))
        assert (r.returncode, r.stdout, r.stderr) == (
            0, bytes([auto.SPAWN_LIMIT]) + b"\0Kexample.net Received:\0", b"")


# -- .qmail program lines ----------------------------------------------------------------------

@pytest.fixture
def user(tmp_path: Path) -> Path:
    h = tmp_path / "user"
    h.mkdir()
    h.chmod(0o755)
    return h


def local(home: Path, user: Path, dotqmail: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """qmail-local for joe@example.com with ``dotqmail`` as his .qmail."""
    (user / ".qmail").write_text(dotqmail)
    msgfile = user.parent / "message"
    msgfile.write_bytes(MSG)
    with open(msgfile, "rb") as f:
        return subprocess.run([str(home / "bin" / "qmail-local"), "--", "joe", str(user), "joe", "",
                               "", "example.com", "s@example.org", "./Maildir/"],
                              stdin=f, capture_output=True, timeout=60, env=dict(os.environ, **env))


def test_dot_qmail_line_naming_our_program_runs_warm_and_sees_what_sh_gives(home, user, tmp_path):
    probe = script(tmp_path / "probe", PROBE)
    line = f"|{home / 'bin' / 'preline'} -f {probe}\n"
    warm, cold = (local(home, user, line, extra) for extra in MODES.values())
    assert (warm.returncode, warm.stderr) == (cold.returncode, cold.stderr) == (111, b"probe-err\n")
    assert warm.stdout.startswith(b"comm qmail-local\n")
    assert cold.stdout.startswith(b"comm preline\n")
    assert seen(warm.stdout) == seen(cold.stdout)
    assert b"PWD=%s\n" % os.fsencode(user) in cold.stdout
    assert cold.stdout.endswith(b"Return-Path: <s@example.org>\nDelivered-To: joe@example.com\n" + MSG)
    bare = local(home, user, f"|preline -f {probe}\n", {"PATH": f"{home / 'bin'}:/usr/bin:/bin"})
    assert bare.stdout.startswith(b"comm qmail-local\n")
    quoted = local(home, user, f"|{home / 'bin' / 'preline'} -f '{probe}'\n", {})
    assert quoted.stdout.startswith(b"comm preline\n")          # not plain words: /bin/sh


def test_dot_qmail_forward_warm_and_exec_queue_the_same(home, user):
    line = f"|{home / 'bin' / 'forward'} other@example.net\n"
    runs = [local(home, user, line, extra) for extra in MODES.values()]
    for r in runs:
        assert (r.returncode, r.stdout) == (0, b"did 0+0+1\n")
        assert re.fullmatch(rb"forward: qp \d+\n", r.stderr)
    a, b = queue_contents(home)
    assert a == b and a[0] == b"Delivered-To: joe@example.com\n" + MSG
    sender, rest = a[1].split(b"\0", 1)            # a forward's sender goes through SRS
    assert unsrs(sender[1:]) == b"s@example.org" and rest == b"Tother@example.net\0"


def test_dot_qmail_bouncesaying_warm_and_exec_bounce_the_same(home, user):
    line = f"|{home / 'bin' / 'bouncesaying'} No-mail-here.\n"
    for extra in MODES.values():
        r = local(home, user, line, extra)
        assert (r.returncode, r.stdout, r.stderr) == (100, b"", b"No-mail-here.\n")


def test_dot_qmail_program_not_ours_runs_through_sh_as_before(home, user, tmp_path):
    fake = script(tmp_path / "bin" / "forward", 'echo "fake $*"; echo "$0" >&2\n')
    for extra in MODES.values():
        r = local(home, user, f"|{fake} a@b\n", extra)
        assert (r.returncode, r.stdout, r.stderr) == (0, b"fake a@b\ndid 0+0+1\n",
                                                     os.fsencode(fake) + b"\n")
