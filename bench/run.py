#!/usr/bin/env python3
"""bench/run.py - qpy side by side with Postfix on this machine, in one run.

    sudo python3 bench/run.py [-n 2000] [--sessions 10,50] [--prefill 10000,100000]

Runs, for each number of concurrent sessions, the same SMTP load (bench/smtpload.py:
N messages of 1 KB) against a fresh qpy instance (``qpy run``, single-user mode,
Maildir delivery) and a fresh private Postfix (Debian's, configured by
tests/postfix.py on a loopback port, Maildir delivery through ``virtual``), and
prints acceptance rate, end-to-end rate into the Maildir, accept→Maildir latency
percentiles and server CPU per message (utime+stime of the whole server process
tree, from /proc), with the qpy/Postfix ratios.  Then qpy alone: queue-only
(messages/s into the queue: qmail-queue's writer in-process as qmail-smtpd uses it,
warm fork, exec), delivery-only (qmail-send draining a queue pre-filled, by 4
processes running qmail-queue's own writer, with 10 000 and 100 000 messages; rate
and CPU per message at each size).  For both servers (at the first session
count) also memory per idle SMTP session (PSS and RSS from /proc/<pid>/smaps_rollup)
and accept→Maildir latency on an idle instance (one client, 50 messages in turn).
Every figure comes from this one run on this machine.  On ext4 without a journal a
create skips every inode freed in its block group in the last minutes, so one
server's files must not share a block group with another's: each scratch directory
is made below a directory marked as the top of a hierarchy (``chattr +T``, where ext4
spreads new directories over block groups), and all are removed only at the end.
Needs root for Postfix; without it the Postfix columns are skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
TICK = os.sysconf("SC_CLK_TCK")
SCRATCH_ROOT: Path | None = None  # holds every scratch directory; removed at the end
SCRATCH_PARENT: str | None = None  # --dir: where SCRATCH_ROOT is made (default: $TMPDIR)


def scratch(prefix: str) -> Path:
    """A new temporary directory in a block group of its own, kept until the run ends."""
    global SCRATCH_ROOT
    if SCRATCH_ROOT is None:
        SCRATCH_ROOT = Path(tempfile.mkdtemp(prefix="qpy-bench-root-", dir=SCRATCH_PARENT))
        os.chmod(SCRATCH_ROOT, 0o755)
        subprocess.run(["chattr", "+T", str(SCRATCH_ROOT)], stderr=subprocess.DEVNULL, check=False)
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=SCRATCH_ROOT))
    os.chmod(base, 0o755)
    return base


# -- process trees and /proc ---------------------------------------------------------
def children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(name))
    return kids


def tree(root: int) -> list[int]:
    kids = children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def cpu_seconds(root: int) -> float:
    """utime+stime+cutime+cstime summed over a live process tree."""
    total = 0
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15])
        except (OSError, ValueError):
            pass
    return total / TICK


def mem_kb(root: int, field: str = "Pss:") -> int:
    """Sum of one smaps_rollup field (Pss:, Rss:) over a live process tree, in KB."""
    total = 0
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith(field):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


# -- servers ---------------------------------------------------------------------------
def as_nobody(home: Path, env: dict) -> dict:
    """As root: ``qpy run`` refuses a single-user instance owned by root, so the instance
    belongs to ``nobody`` (its ancestors made searchable); Popen keywords to run as it."""
    import pwd
    pw = pwd.getpwnam("nobody")
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, pw.pw_uid, pw.pw_gid)
    for parent in home.parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)
    env.update(HOME="/", USER="nobody", LOGNAME="nobody")

    def become() -> None:
        os.setgroups([])
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
    return {"preexec_fn": become, "cwd": "/"}


class Qpy:
    name = "qpy"
    rcpt = "bench@localhost"

    def __init__(self, base: Path) -> None:
        self.home = base / "qpy-home"
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> None:
        code = "import sys; from qpy.programs.qpy import main; sys.exit(main(sys.argv[1:]))"
        env = dict(os.environ)
        env.pop("QMAILHOME", None)
        kw = as_nobody(self.home, env) if os.geteuid() == 0 else {}
        self.proc = subprocess.Popen([sys.executable, "-c", code, "run", "--home", str(self.home),
                                      "--port", "0", "--user", "bench"], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True, **kw)
        buf = b""
        while b"qpy: SMTP on" not in buf:
            chunk = self.proc.stdout.readline()
            if not chunk:
                raise RuntimeError(buf.decode())
            buf += chunk
        self.port = int(buf.split(b"qpy: SMTP on 127.0.0.1:")[1].split(b",")[0])
        self.drain = subprocess.Popen(["cat"], stdin=self.proc.stdout, stdout=subprocess.DEVNULL)

    @property
    def maildir(self) -> Path:
        return self.home / "users" / "bench" / "Maildir"

    @property
    def root_pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(2)
            self.proc.wait(120)
            self.drain.wait(10)
            self.proc = None


class PostfixServer:
    name = "postfix"
    rcpt = "user@pf.test"

    def __init__(self, base: Path) -> None:
        from postfix import Postfix
        self.pf = Postfix(base)
        self.port = self.pf.port

    def start(self) -> None:
        self.pf.start()

    @property
    def maildir(self) -> Path:
        return self.pf.mail / self.pf.user

    @property
    def root_pid(self) -> int:
        return int((self.pf.queue / "pid" / "master.pid").read_text().split()[0])

    def stop(self) -> None:
        self.pf.cleanup()


# -- measurements ----------------------------------------------------------------------
def smtp_load(server, n: int, size: int, sessions: int) -> dict:
    before = cpu_seconds(server.root_pid)
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "smtpload.py"), "--port", str(server.port),
                        "-n", str(n), "-s", str(size), "-c", str(sessions), "--rcpt", server.rcpt,
                        "--maildir", str(server.maildir)], capture_output=True, check=True, timeout=3600)
    result = json.loads(r.stdout)
    time.sleep(0.5)
    result["cpu_ms_per_msg"] = round((cpu_seconds(server.root_pid) - before) * 1000 / max(1, n), 3)
    return result


def idle_sessions(server, count: int = 30) -> dict:
    """PSS and RSS added per idle SMTP session, in KB (30: fewer than either server's session limit)."""
    before = {f: mem_kb(server.root_pid, f) for f in ("Pss:", "Rss:")}
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        s.recv(512)
        socks.append(s)
    time.sleep(1.0)
    after = {f: mem_kb(server.root_pid, f) for f in ("Pss:", "Rss:")}
    for s in socks:
        s.sendall(b"QUIT\r\n")
        s.close()
    return {"pss_kb": round((after["Pss:"] - before["Pss:"]) / count, 1),
            "rss_kb": round((after["Rss:"] - before["Rss:"]) / count, 1)}


def queue_only(n: int) -> dict:
    """Messages per second into the queue: in-process writer (qmailq.start() → DirectJob,
    what qmail-smtpd uses in single-user mode), warm fork of qmail-queue, and exec."""
    out = {}
    from qpy import qmailq
    paths = [("warm", "", "qmailq.QueueJob()"), ("exec", "1", "qmailq.QueueJob()")]
    if hasattr(qmailq, "start"):        # (a qpy older than the in-process writer has none)
        paths.insert(0, ("direct", "", "qmailq.start()"))
    for label, force, job in paths:
        base = scratch("qpy-bench-q-")
        home = base / "qmail"
        code = (
            "import os, sys, time\n"
            "from qpy import hier, qmailq\n"
            f"hier.install({str(home)!r}, b'localhost', False)\n"
            f"os.environ['QMAILHOME'] = {str(home)!r}\n"
            f"os.environ['QPY_EXEC'] = {force!r}\n"
            "from qpy.programs import qmail_queue\n"
            "msg = b'Subject: x\\n\\n' + b'x' * 1000 + b'\\n'\n"
            "t = time.perf_counter()\n"
            f"for i in range({n}):\n"
            f"    job = {job}\n"
            "    job.put(msg)\n"
            "    assert job.close(b'a@b', [b'c@d']) == ''\n"
            "print(time.perf_counter() - t)\n")
        env = dict(os.environ)
        env.pop("QMAILQUEUE", None)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, env=env)
        secs = float(r.stdout)
        out[label] = round(n / secs, 1)
    return out


FILLERS = 4     # parallel prefill processes (each writes with qmail-queue's own writer in-process)


def prefill(home: Path, count: int) -> float:
    """Queue ``count`` 1 KB messages for bench@localhost; return the seconds it took."""
    subprocess.run([sys.executable, "-c",
                    "from qpy import hier, instance\n"
                    f"hier.install({str(home)!r}, b'localhost', False)\n"
                    f"instance.add_user({str(home)!r}, b'bench')\n"], check=True)
    fill = (
        "import os, sys\n"
        f"os.environ['QMAILHOME'] = {str(home)!r}\n"
        "from qpy import qmailq\n"
        "msg = b'Subject: x\\n\\n' + b'x' * 1000 + b'\\n'\n"
        "for i in range(int(sys.argv[1])):\n"
        "    job = qmailq.start() if hasattr(qmailq, 'start') else qmailq.QueueJob()\n"
        "    job.put(msg)\n"
        "    assert job.close(b'a@b', [b'bench@localhost']) == ''\n")
    env = dict(os.environ)
    env.pop("QMAILQUEUE", None)
    env.pop("QPY_EXEC", None)
    start = time.perf_counter()
    shares = [count // FILLERS + (1 if k < count % FILLERS else 0) for k in range(FILLERS)]
    procs = [subprocess.Popen([sys.executable, "-c", fill, str(k)], env=env) for k in shares if k]
    for proc in procs:
        if proc.wait() != 0:
            raise RuntimeError("prefill failed")
    return time.perf_counter() - start


def delivery_only(count: int) -> dict:
    """qmail-send draining ``count`` pre-queued messages into one Maildir."""
    base = scratch("qpy-bench-d-")
    home = base / "qmail"
    fill_secs = prefill(home, count)
    new = home / "users" / "bench" / "Maildir" / "new"
    env = dict(os.environ, QMAILHOME=str(home))
    env.pop("QPY_EXEC", None)
    start = time.perf_counter()
    proc = subprocess.Popen([str(home / "bin" / "qmail-start"), "./Maildir/"], cwd=home,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    cpu = 0.0
    try:
        while True:
            done = len(os.listdir(new))
            if done >= count:
                break
            if proc.poll() is not None:
                raise RuntimeError("qmail-send exited")
            cpu = cpu_seconds(proc.pid)
            time.sleep(0.2 if count < 20000 else 1.0)
        secs = time.perf_counter() - start
        cpu = max(cpu, cpu_seconds(proc.pid))
    finally:
        proc.send_signal(15)
        proc.wait(120)
    return {"messages": count, "prefill_seconds": round(fill_secs, 1), "seconds": round(secs, 1),
            "rate": round(count / secs, 1), "cpu_ms_per_msg": round(cpu * 1000 / count, 3)}


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=2000, help="messages per SMTP load")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--sessions", default="10,50")
    ap.add_argument("--prefill", default="10000,100000", help="delivery-only queue sizes ('' to skip)")
    ap.add_argument("--queue-only", type=int, default=2000)
    ap.add_argument("--no-postfix", action="store_true")
    ap.add_argument("--dir", help="make every scratch directory (queues, Maildirs) below DIR,"
                    " e.g. on the file system a queue will live on (default: $TMPDIR or /tmp)")
    args = ap.parse_args()
    global SCRATCH_PARENT
    SCRATCH_PARENT = args.dir
    sessions = [int(x) for x in args.sessions.split(",") if x]
    with_postfix = not args.no_postfix and os.geteuid() == 0 and shutil.which("postfix") is not None
    report: dict = {"machine": {"cores": os.cpu_count(), "python": sys.version.split()[0]}}
    for c in sessions:
        row = {}
        for cls in ([Qpy, PostfixServer] if with_postfix else [Qpy]):
            base = scratch("qpy-bench-")
            server = cls(base)
            server.start()
            try:
                smtp_load(server, min(200, args.n), args.size, c)   # warm-up
                row[server.name] = smtp_load(server, args.n, args.size, c)
                if c == sessions[0]:
                    row[server.name]["idle_session_kb"] = idle_sessions(server)
                    idle = smtp_load(server, 50, args.size, 1)      # one client: an idle instance
                    row[server.name]["idle_latency_ms_p50"] = idle["latency_ms_p50"]
                    row[server.name]["idle_latency_ms_p90"] = idle["latency_ms_p90"]
            finally:
                server.stop()
        report[f"smtp_{c}_sessions"] = row
        q = row["qpy"]
        line = (f"{c:>3} sessions  qpy: accept {q['accept_rate']}/s, end-to-end {q['end_to_end_rate']}/s, "
                f"p50 {q['latency_ms_p50']} ms, cpu {q['cpu_ms_per_msg']} ms/msg")
        if "postfix" in row:
            p = row["postfix"]
            line += (f" | postfix: accept {p['accept_rate']}/s, end-to-end {p['end_to_end_rate']}/s, "
                     f"p50 {p['latency_ms_p50']} ms, cpu {p['cpu_ms_per_msg']} ms/msg"
                     f" | ratio accept {ratio(q['accept_rate'], p['accept_rate'])},"
                     f" end-to-end {ratio(q['end_to_end_rate'], p['end_to_end_rate'])}")
        print(line, flush=True)
    for c in sessions[:1]:
        for name, r in report[f"smtp_{c}_sessions"].items():
            print(f"idle SMTP session ({name}): {r['idle_session_kb']} KB; accept→Maildir on an idle"
                  f" instance (1 session, 50 messages): p50 {r['idle_latency_ms_p50']} ms,"
                  f" p90 {r['idle_latency_ms_p90']} ms", flush=True)
    if args.queue_only:
        report["queue_only_per_s"] = queue_only(args.queue_only)
        print(f"queue-only: {report['queue_only_per_s']}", flush=True)
    for count in [int(x) for x in args.prefill.split(",") if x]:
        d = delivery_only(count)
        report[f"delivery_only_{count}"] = d
        print(f"delivery-only {count}: {d}", flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    try:
        main()
    finally:
        if SCRATCH_ROOT is not None:
            shutil.rmtree(SCRATCH_ROOT, ignore_errors=True)
