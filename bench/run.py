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
(messages/s through qmail-queue, warm fork and exec), delivery-only (qmail-send
draining a queue pre-filled with 10 000 and 100 000 messages; cost per message at
each size) and memory per idle SMTP session (PSS from /proc/<pid>/smaps_rollup).
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


def pss_kb(root: int) -> int:
    total = 0
    for pid in tree(root):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


# -- servers ---------------------------------------------------------------------------
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
        self.proc = subprocess.Popen([sys.executable, "-c", code, "run", "--home", str(self.home),
                                      "--port", "0", "--user", "bench"], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)
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
        self.pf = Postfix()
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


def idle_sessions(server, count: int = 30) -> float:
    """PSS added per idle SMTP session, in KB (fewer sessions than tcpserver's -c 40 limit)."""
    before = pss_kb(server.root_pid)
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        s.recv(512)
        socks.append(s)
    time.sleep(1.0)
    after = pss_kb(server.root_pid)
    for s in socks:
        s.sendall(b"QUIT\r\n")
        s.close()
    return round((after - before) / count, 1)


def queue_only(n: int) -> dict:
    """Messages per second into the queue: warm fork (qpy.qmailq) and exec (QPY_EXEC=1)."""
    out = {}
    for label, force in (("warm", ""), ("exec", "1")):
        base = Path(tempfile.mkdtemp(prefix="qpy-bench-q-"))
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
            "    assert qmailq.queue_message(msg, b'a@b', [b'c@d']) == ''\n"
            "print(time.perf_counter() - t)\n")
        env = dict(os.environ)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, env=env)
        secs = float(r.stdout)
        out[label] = round(n / secs, 1)
        shutil.rmtree(base, ignore_errors=True)
    return out


def delivery_only(count: int) -> dict:
    """qmail-send draining ``count`` pre-queued messages into one Maildir."""
    base = Path(tempfile.mkdtemp(prefix="qpy-bench-d-"))
    home = base / "qmail"
    fill = (
        "import os, sys\n"
        "from qpy import hier, instance, qmailq\n"
        f"hier.install({str(home)!r}, b'localhost', False)\n"
        f"os.environ['QMAILHOME'] = {str(home)!r}\n"
        f"instance.add_user({str(home)!r}, b'bench')\n"
        "from qpy.programs import qmail_queue\n"
        "msg = b'Subject: x\\n\\n' + b'x' * 1000 + b'\\n'\n"
        f"for i in range({count}):\n"
        "    assert qmailq.queue_message(msg, b'a@b', [b'bench@localhost']) == ''\n")
    subprocess.run([sys.executable, "-c", fill], check=True)
    new = home / "users" / "bench" / "Maildir" / "new"
    env = dict(os.environ, QMAILHOME=str(home))
    start = time.perf_counter()
    proc = subprocess.Popen([str(home / "bin" / "qmail-start"), "./Maildir/"], cwd=home,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    cpu = 0.0
    while True:
        done = sum(1 for _ in os.scandir(new))
        if done >= count:
            break
        if proc.poll() is not None:
            raise RuntimeError("qmail-send exited")
        cpu = cpu_seconds(proc.pid)
        time.sleep(0.2)
    secs = time.perf_counter() - start
    cpu = max(cpu, cpu_seconds(proc.pid))
    proc.send_signal(15)
    proc.wait(120)
    shutil.rmtree(base, ignore_errors=True)
    return {"messages": count, "seconds": round(secs, 1), "rate": round(count / secs, 1),
            "cpu_ms_per_msg": round(cpu * 1000 / count, 3)}


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
    args = ap.parse_args()
    sessions = [int(x) for x in args.sessions.split(",") if x]
    with_postfix = not args.no_postfix and os.geteuid() == 0 and shutil.which("postfix") is not None
    report: dict = {"machine": {"cores": os.cpu_count(), "python": sys.version.split()[0]}}
    for c in sessions:
        row = {}
        for cls in ([Qpy, PostfixServer] if with_postfix else [Qpy]):
            base = Path(tempfile.mkdtemp(prefix="qpy-bench-"))
            os.chmod(base, 0o755)
            server = cls(base)
            server.start()
            try:
                smtp_load(server, min(200, args.n), args.size, c)   # warm-up
                row[server.name] = smtp_load(server, args.n, args.size, c)
                if c == sessions[0]:
                    row[server.name]["idle_session_pss_kb"] = idle_sessions(server)
            finally:
                server.stop()
                shutil.rmtree(base, ignore_errors=True)
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
    if args.queue_only:
        report["queue_only_per_s"] = queue_only(args.queue_only)
        print(f"queue-only: {report['queue_only_per_s']}", flush=True)
    for count in [int(x) for x in args.prefill.split(",") if x]:
        d = delivery_only(count)
        report[f"delivery_only_{count}"] = d
        print(f"delivery-only {count}: {d}", flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
