#!/usr/bin/env python3
"""bench/faults.py - the fault campaign: kills, full disks, low limits and attacks, counted.

    python3 bench/faults.py kill    [--kills 1000] [--sessions 5] [--group 0.3] [--seed N]
    sudo python3 bench/faults.py enospc [--messages 40] [--stages queue,preprocess,bounce,maildir,log]
    python3 bench/faults.py limits  [--nofile 12,16,24,32,64] [--as-mb 24,28,32,40,64] [--big-kb 4096]
    python3 bench/faults.py attacks [--rcpts 2500] [--slots 160] [--loris 90] [--auth-seconds 30]
    sudo python3 bench/faults.py all    (each of the above in turn, the attacks last)

Every section runs real ``qpy run`` instances on 127.0.0.1 (single-user mode; as root, as
the account ``nobody``, because qpy run refuses to run a single-user instance as root) and
talks SMTP to them with smtplib.  Every message carries a unique ``X-Fault-Id`` and a body
derived from it, so the Maildir alone tells what was lost (accepted with a 250 and never
delivered), truncated (delivered but not byte for byte what was sent), or duplicated: a
*delivery* duplicate is the same queue message (the qp of its Received line) delivered
twice, which qmail allows for deliveries in flight when qmail-send dies (at most
concurrencylocal per kill, docs/queue.md §5); a *submission* duplicate is one X-Fault-Id
queued twice because the client never saw the 250 and sent it again (at most one per
session per kill).  Figures are printed as they come, then one ``PASS``/``FAIL`` line per
property; the exit status is 1 if any property failed.

kill     SIGKILLs at random moments under a continuous SMTP load: single processes (the
         runner, qmail-send, qmail-lspawn, qmail-rspawn, qmail-clean, tcpserver, a
         qmail-smtpd session, a delivery child, qmail-queued/qmail-pickup where they run)
         or, with probability --group, every process of the instance at once (all
         stopped first, then killed).  When the instance does not stand any more it is
         restarted (leftover processes are counted as orphans and killed).  At the end
         the load's retries finish, everything accepted must be delivered, and after a
         clean restart the queue must read empty (no mess/, intd/, todo/, info/, local/,
         remote/ or bounce/ file; pid/ scratch files of killed writers are only counted:
         qmail-clean removes them after 36 h, as qmail does, since a live writer may own one).
         Also counted: partial deliveries left in the Maildir's tmp/ (readers clean those).
enospc   (root) each stage on a fresh instance whose home, Maildir and log/ are three
         small tmpfs mounts, one of them filled to the last byte at the right moment:
         queue    the queue write (SMTP while the queue's file system is full; then every
                  process is SIGKILLed before space returns, so each 250 must already be
                  on disk);
         preprocess qmail-send stopped (SIGSTOP) while messages are queued, the disk filled,
                  qmail-send continued;
         bounce   deliveries to an address whose .qmail says ``|exit 100`` with qmail-lspawn
                  stopped until the disk is full: bounce/<id> and the bounce itself;
         maildir  the Maildir's file system full: deliveries deferred, none partial;
         log      log/'s file system full: the runner must keep serving.
         Then space returns; every message must arrive (or, for bounce, its bounce), whole.
         Also reported: whether it recovered without a poke (a trigger pull or SIGALRM).
limits   a fresh instance started with RLIMIT_NOFILE (``ulimit -n``) or RLIMIT_AS (``ulimit
         -v``) at each value, under load: it must refuse to start with a message or serve
         with temporary failures only (4xx, never 5xx), no daemon may die (no crash loop),
         and after a restart without the limit everything accepted is delivered.
attacks  the attacks of issue 15 against one instance (``control/checkpassword`` set to
         /bin/false so AUTH is offered): a recipient flood (--rcpts RCPTs in one
         transaction, pipelined, by a client that ignores the limit; then one that stops at
         the first refusal and sends its message, which qmail-send then delivers), slot exhaustion (--slots idle connections from
         127.0.0.2), slowloris (--loris connections from 127.0.0.3 sending a byte every
         --drip s, for --slowloris s), AUTH brute force (--auth-sessions sessions from
         127.0.0.4 guessing for --auth-seconds s).  During each: the resident memory of every
         process of the instance (sampled every 0.25 s: peak RSS per role, peak total PSS,
         which counts the pages warm forks share once) and an
         honest client on 127.0.0.1 sending a message every 0.5 s (time to its 250,
         failures).  The figures are what the server does today; the PASS lines check
         that the honest client was served and memory stayed bounded (--rss-mb).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import resource
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CODE = "import sys; from qpy.programs.qpy import main; sys.exit(main(sys.argv[1:]))"
USER = "fault"                       # the instance's virtual user: fault@localhost
RCPT = f"{USER}@localhost"
SENDER = f"{USER}@localhost"         # bounces come back to the same Maildir
QUEUE_DIRS = ("mess", "intd", "todo", "info", "local", "remote", "bounce", "pid")
SPLIT_DIRS = ("mess", "info", "local", "remote")
RESULTS: list[tuple[str, bool, str]] = []       # (property, ok, detail) of the whole run


def say(text: str) -> None:
    print(text, flush=True)


def check(name: str, ok: bool, detail: str = "") -> bool:
    """Record and print one property."""
    RESULTS.append((name, ok, detail))
    say(f"{'PASS' if ok else 'FAIL'}: {name}" + (f" ({detail})" if detail else ""))
    return ok


# -- accounts, scratch space -------------------------------------------------------------
def account() -> tuple[int, int] | None:
    """(uid, gid) to run instances as: nobody when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    import pwd
    pw = pwd.getpwnam("nobody")
    return pw.pw_uid, pw.pw_gid


def scratch(prefix: str = "qpy-faults-") -> Path:
    """A world-traversable temporary directory (the instance's account must reach it)."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(base, 0o755)
    return base


def give(path: Path, ids: tuple[int, int] | None) -> None:
    if ids is not None:
        os.chown(path, *ids)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- /proc -------------------------------------------------------------------------------
def proc_table() -> dict[int, tuple[int, int, bytes]]:
    """pid → (ppid, pgid, cmdline) of every process."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read()
        except (OSError, IndexError):
            continue
        if fields[0] == b"Z":
            continue
        out[int(name)] = (int(fields[1]), int(fields[2]), cmd)
    return out


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kb(pid: int) -> int:
    """Proportional set size: shared pages (a warm fork's) counted once over their sharers."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def fd_target(pid: int, fd: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return ""


def signal_quietly(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except OSError:
        return False


# -- one qpy run instance ------------------------------------------------------------------
class StartFailed(Exception):
    """qpy run exited or hung before it listened."""


class Instance:
    """A ``qpy run`` on ``home`` and ``port``, its output in a file, its processes from /proc."""

    CORE = ("runner", "send", "lspawn", "rspawn", "clean", "tcpserver")

    def __init__(self, home: Path, port: int, ids: tuple[int, int] | None,
                 rlimits: dict[int, int] | None = None) -> None:
        self.home, self.port, self.ids, self.rlimits = home, port, ids, rlimits or {}
        self.key = str(home).encode()
        self.proc: subprocess.Popen | None = None
        self.outpath = home.parent / f"{home.name}.out"
        self.starts = 0

    @property
    def maildir(self) -> Path:
        return self.home / "users" / USER / "Maildir"

    @property
    def queue(self) -> Path:
        return self.home / "queue"

    def _preexec(self) -> None:
        for res, value in self.rlimits.items():
            resource.setrlimit(res, (value, value))
        if self.ids is not None:
            os.setgroups([])
            os.setgid(self.ids[1])
            os.setuid(self.ids[0])

    def start(self, timeout: float = 60) -> float:
        """Start and wait until SMTP listens; return the seconds it took.  Raises StartFailed."""
        if not self.home.exists():
            self.home.mkdir()
            give(self.home, self.ids)
        env = {k: v for k, v in os.environ.items() if k not in ("QMAILHOME", "QPY_EXEC", "QMAILQUEUE")}
        if self.ids is not None:
            env.update(HOME="/", USER="nobody", LOGNAME="nobody")
        out = open(self.outpath, "ab")
        mark = out.tell()
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CODE, "run", "--home", str(self.home), "--port", str(self.port),
             "--user", USER], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=env, start_new_session=True, preexec_fn=self._preexec, cwd="/")
        out.close()
        self.starts += 1
        pattern = re.compile(rb"qpy: SMTP on [^:]+:(\d+)")
        while True:
            text = self.output(mark)
            if pattern.search(text):
                return time.monotonic() - t0
            if self.proc.poll() is not None:
                raise StartFailed(f"exit {self.proc.returncode}: " + text.decode("latin-1")[-800:])
            if time.monotonic() - t0 > timeout:
                raise StartFailed("no 'SMTP on' line after %d s: " % timeout + text.decode("latin-1")[-800:])
            time.sleep(0.02)

    def output(self, since: int = 0) -> bytes:
        try:
            with open(self.outpath, "rb") as f:
                f.seek(since)
                return f.read()
        except OSError:
            return b""

    def output_size(self) -> int:
        try:
            return self.outpath.stat().st_size
        except OSError:
            return 0

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pids(self, table: dict | None = None) -> list[int]:
        """Every process of this instance: its cmdline names the home, or an ancestor's does."""
        table = proc_table() if table is None else table
        mine = {pid for pid, (_, _, cmd) in table.items() if self.key in cmd and pid != os.getpid()}
        kids: dict[int, list[int]] = collections.defaultdict(list)
        for pid, (ppid, _, _) in table.items():
            kids[ppid].append(pid)
        todo = list(mine)
        while todo:
            for k in kids.get(todo.pop(), []):
                if k not in mine:
                    mine.add(k)
                    todo.append(k)
        return sorted(mine)

    def roles(self) -> dict[str, list[int]]:
        """role → pids: runner, send, lspawn, rspawn, clean, tcpserver, smtpd, delivery, …"""
        table = proc_table()
        pids = self.pids(table)
        out: dict[str, list[int]] = collections.defaultdict(list)
        role: dict[int, str] = {}
        runner = self.proc.pid if self.running() else None
        for pid in pids:
            cmd = table[pid][2]
            if pid == runner or b"qpy.programs.qpy" in cmd:
                role[pid] = "runner"
            elif b"/bin/qmail-start" in cmd and table[pid][1] == pid:
                role[pid] = "send"
            elif b"/bin/tcpserver" in cmd and table[pid][1] == pid:
                role[pid] = "tcpserver"
            elif b"/bin/qmail-queued" in cmd and table[pid][1] == pid:
                role[pid] = "queued"
            elif b"/bin/qmail-pickup" in cmd and table[pid][1] == pid:
                role[pid] = "pickup"
        send = next((p for p, r in role.items() if r == "send"), None)
        if send is not None:
            pipes = {fd_target(send, 1): "lspawn", fd_target(send, 3): "rspawn",
                     fd_target(send, 5): "clean"}
            for pid in pids:
                if pid not in role and table[pid][0] == send:
                    role[pid] = pipes.get(fd_target(pid, 0), "send-child")
        changed = True
        while changed:                  # below the daemons: sessions, deliveries, writers
            changed = False
            for pid in pids:
                if pid in role or table[pid][0] not in role:
                    continue
                parent = role[table[pid][0]]
                role[pid] = {"tcpserver": "smtpd", "lspawn": "delivery", "rspawn": "remote",
                             "queued": "queued-child", "pickup": "pickup-child"}.get(
                                 parent, parent if parent in ("smtpd", "delivery", "remote")
                                 else parent + "-child")
                changed = True
        for pid in pids:                # orphans: sessions whose tcpserver died, and the like
            if pid not in role:
                cmd = table[pid][2]
                role[pid] = ("smtpd" if b"/bin/tcpserver" in cmd else
                             "orphan-qmail-start" if b"/bin/qmail-start" in cmd else "other")
        for pid in pids:
            out[role[pid]].append(pid)
        return dict(out)

    def core_alive(self) -> list[str]:
        """The core roles that are missing (empty when the instance stands)."""
        roles = self.roles()
        return [r for r in self.CORE if r not in roles]

    def kill_all(self) -> int:
        """Stop every process of the instance (so none forks behind our back), then SIGKILL all."""
        stopped: set[int] = set()
        for _ in range(20):
            new = [p for p in self.pids() if p not in stopped]
            if not new:
                break
            for p in new:
                signal_quietly(p, signal.SIGSTOP)
                stopped.add(p)
        for p in stopped:
            signal_quietly(p, signal.SIGKILL)
        self.reap()
        return len(stopped)

    def reap(self, timeout: float = 10) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + timeout
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self, timeout: float = 60) -> int | None:
        """SIGINT the runner and wait; kill what is left.  Returns its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        code = self.proc.poll()
        left = self.pids()
        if left:
            self.kill_all()
        return code

    def signal_role(self, name: str, sig: int) -> bool:
        pids = self.roles().get(name, [])
        return any([signal_quietly(p, sig) for p in pids])

    def poke(self) -> None:
        """What new mail or an admin would do: pull the trigger and SIGALRM qmail-send."""
        try:
            fd = os.open(self.queue / "lock" / "trigger", os.O_WRONLY | os.O_NONBLOCK)
            os.write(fd, b"\0")
            os.close(fd)
        except OSError:
            pass
        self.signal_role("send", signal.SIGALRM)

    def queue_files(self) -> dict[str, int]:
        """Files left in each queue directory (and quarantine, where there is one)."""
        counts = {}
        for d in QUEUE_DIRS:
            path = self.queue / d
            if d in SPLIT_DIRS:
                counts[d] = sum(len(os.listdir(path / str(i))) for i in range(23) if (path / str(i)).exists())
            elif path.exists():
                counts[d] = len(os.listdir(path))
        for extra in ("quarantine", "corrupt"):
            path = self.queue / extra
            if path.exists():
                counts[extra] = sum(len(files) for _, _, files in os.walk(path))
        return counts

    def settled(self) -> bool:
        """Nothing left to deliver (todo/, info/, local/, remote/ empty)."""
        c = self.queue_files()
        return not any(c.get(d) for d in ("todo", "info", "local", "remote"))

    def log_text(self) -> str:
        return self.output().decode("latin-1")


# -- messages and the Maildir ----------------------------------------------------------
def message(run: str, i: int, big: int = 0) -> bytes:
    """Message ``i`` of a run, CRLF line ends; its body is derived from the id."""
    head = (f"X-Fault-Id: {run}-{i}\r\nFrom: {SENDER}\r\nTo: {RCPT}\r\n"
            f"Subject: fault {i}\r\n\r\n").encode()
    lines = 3 + (i * 7919) % 120 + big
    return head + b"".join(b"%d %d abcdefghijklmnopqrstuvwxyz0123456789\r\n" % (i, k)
                           for k in range(lines))


def stored(run: str, i: int, big: int = 0) -> bytes:
    return message(run, i, big).replace(b"\r\n", b"\n")


FID = re.compile(rb"^X-Fault-Id: (\S+)-(\d+)$", re.M)
QP = re.compile(rb"^Received: \(qmail (\d+) invoked", re.M)


_PARSED: dict[str, tuple] = {}     # Maildir file → what Tally read from it (files never change)


def _parse(path: str, run: str, big) -> tuple:
    """("bounce", [ids]) | ("copy", id, qp, whole) | ("foreign",) for one delivered file."""
    key = path + "\0" + run
    if key in _PARSED:
        return _PARSED[key]
    with open(path, "rb") as f:
        data = f.read()
    head = data.split(b"\n\n", 1)[0]
    if b"\nSubject: failure notice" in head or head.startswith(b"Subject: failure notice"):
        out: tuple = ("bounce", [int(m.group(2)) for m in FID.finditer(data)
                                 if m.group(1).decode() == run])
    else:
        m = FID.search(data)
        if not m or m.group(1).decode() != run:
            out = ("foreign",)
        else:
            i = int(m.group(2))
            qp = QP.search(data)
            out = ("copy", i, int(qp.group(1)) if qp else -1, data[m.start():] == stored(run, i, big(i)))
    _PARSED[key] = out
    return out


class Tally:
    """What one run's messages look like in a Maildir (new/ and cur/)."""

    def __init__(self, maildir: Path, run: str, big=lambda i: 0) -> None:
        self.copies: dict[int, list[int]] = collections.defaultdict(list)  # id → qps
        self.truncated: list[int] = []
        self.bounces: dict[int, int] = collections.Counter()               # id → bounces
        self.foreign = 0
        self.tmp = 0
        for sub in ("new", "cur"):
            try:
                names = os.listdir(maildir / sub)
            except OSError:
                continue
            for name in names:
                try:
                    got = _parse(str(maildir / sub / name), run, big)
                except OSError:
                    continue
                if got[0] == "bounce":
                    for i in got[1]:
                        self.bounces[i] += 1
                elif got[0] == "foreign":
                    self.foreign += 1
                else:
                    self.copies[got[1]].append(got[2])
                    if not got[3]:
                        self.truncated.append(got[1])
        try:
            self.tmp = len(os.listdir(maildir / "tmp"))
        except OSError:
            pass

    def delivered(self) -> set[int]:
        return set(self.copies)

    def delivery_dups(self) -> int:
        """Extra copies of the same queue message (the same qp)."""
        return sum(len(qps) - len(set(qps)) for qps in self.copies.values())

    def submission_dups(self) -> int:
        """Extra queue messages for the same id (a 250 the client never saw)."""
        return sum(len(set(qps)) - 1 for qps in self.copies.values())


def wait_until(pred, timeout: float, poke=None, every: float = 2.0) -> float | None:
    """Wait for ``pred()``; call ``poke`` every ``every`` s.  The seconds it took, or None."""
    t0 = time.monotonic()
    last = t0
    while True:
        if pred():
            return time.monotonic() - t0
        now = time.monotonic()
        if now - t0 > timeout:
            return None
        if poke is not None and now - last >= every:
            poke()
            last = now
        time.sleep(0.1)


# -- SMTP clients ----------------------------------------------------------------------
def send_once(port: int, data: bytes, source: str | None = None, rcpt: str = RCPT,
              timeout: float = 30) -> str:
    """One message on a new connection: "250", another reply code, or "drop"."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=timeout,
                          source_address=(source, 0) if source else None) as s:
            s.sendmail(SENDER, [rcpt], data)
            return "250"
    except smtplib.SMTPRecipientsRefused as e:
        return str(next(iter(e.recipients.values()))[0])
    except smtplib.SMTPResponseException as e:
        return str(e.smtp_code)
    except (OSError, smtplib.SMTPException):
        return "drop"


class Load:
    """``sessions`` threads sending numbered messages; an unaccepted one is sent again."""

    def __init__(self, port: int, sessions: int, run: str, retry: bool = True,
                 limit: int | None = None, big=lambda i: 0, rate: float = 0) -> None:
        self.port, self.sessions, self.run, self.retry, self.limit = port, sessions, run, retry, limit
        self.gap = 1 / rate if rate else 0.0      # seconds between new ids (0: as fast as it goes)
        self.due = time.monotonic()
        self.big = big
        self.lock = threading.Lock()
        self.next = 0
        self.again: collections.deque[int] = collections.deque()
        self.inflight = 0
        self.accepted: collections.Counter[int] = collections.Counter()   # id → 250s
        self.rejected: dict[int, str] = {}                                # id → 5xx
        self.codes: collections.Counter[str] = collections.Counter()
        self.stop_new = threading.Event()
        self.quit = threading.Event()
        self.threads = [threading.Thread(target=self.worker, daemon=True) for _ in range(sessions)]

    def start(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def take(self) -> int | None:
        with self.lock:
            if self.again:
                i = self.again.popleft()
            elif self.stop_new.is_set() or (self.limit is not None and self.next >= self.limit):
                return None
            else:
                now = time.monotonic()
                if self.gap and now < self.due:
                    return -1
                self.due = max(self.due + self.gap, now - 1)
                i = self.next
                self.next += 1
            self.inflight += 1
            return i

    def done(self) -> bool:
        with self.lock:
            return not self.again and not self.inflight and (
                self.stop_new.is_set() or (self.limit is not None and self.next >= self.limit))

    def worker(self) -> None:
        conn: smtplib.SMTP | None = None
        while not self.quit.is_set():
            i = self.take()
            if i == -1:
                time.sleep(min(self.gap, 0.05))
                continue
            if i is None:
                if conn is not None:
                    try:
                        conn.quit()
                    except (OSError, smtplib.SMTPException):
                        pass
                    conn = None
                time.sleep(0.05)
                continue
            code = "drop"
            try:
                if conn is None:
                    conn = smtplib.SMTP("127.0.0.1", self.port, timeout=30)
                conn.sendmail(SENDER, [RCPT], message(self.run, i, self.big(i)))
                code = "250"
            except smtplib.SMTPRecipientsRefused as e:
                code = str(next(iter(e.recipients.values()))[0])
            except smtplib.SMTPResponseException as e:
                code = str(e.smtp_code)
            except (OSError, smtplib.SMTPException):
                code = "drop"
            if code != "250" and conn is not None:
                try:
                    conn.close()
                except OSError:
                    pass
                conn = None
            with self.lock:
                self.inflight -= 1
                self.codes[code] += 1
                if code == "250":
                    self.accepted[i] += 1
                elif code.startswith("5"):
                    self.rejected[i] = code
                elif self.retry:
                    self.again.append(i)
            if code != "250":
                time.sleep(0.05)

    def finish(self, timeout: float) -> bool:
        """Stop new ids, let retries finish; True if every id was accepted or rejected."""
        self.stop_new.set()
        ok = wait_until(self.done, timeout) is not None
        self.quit.set()
        for t in self.threads:
            t.join(35)
        return ok

    def issued(self) -> int:
        return self.next


# -- section: kill ---------------------------------------------------------------------------
WEIGHTS = {"runner": 1, "send": 3, "lspawn": 2, "rspawn": 1, "clean": 2, "tcpserver": 1,
           "smtpd": 3, "delivery": 3, "queued": 1, "pickup": 1}
TRANSIENT = ("smtpd", "delivery", "remote")     # killed alone, the instance stands


def noticed(inst: Instance, mark: int, target: str) -> bool:
    """The runner saw the death: it exited, or said it is stopping (PDEATHSIG for its own)."""
    if not inst.running():
        return True
    if target == "runner":
        return True
    return b"stopping" in inst.output(mark)


def campaign_kill(args) -> None:
    say(f"== kill: {args.kills} SIGKILLs, {args.sessions} SMTP sessions at {args.rate}/s,"
        f" group {args.group}")
    ids = account()
    base = scratch()
    inst = Instance(base / "home", free_port(), ids)
    rng = random.Random(args.seed)
    run = f"k{os.getpid()}"
    events: collections.Counter[str] = collections.Counter()
    restarts, start_failures = 0, 0
    unnoticed: collections.Counter[str] = collections.Counter()    # a core daemon died, nobody saw
    collateral: collections.Counter[str] = collections.Counter()   # a session/delivery kill took a daemon
    orphans: collections.Counter[str] = collections.Counter()      # alive after the runner died
    noticed_s: list[float] = []
    down: list[float] = []
    t_start = time.monotonic()
    inst.start()
    (inst.home / "control" / "concurrencylocal").write_text(f"{args.concurrency}\n")
    inst.stop()
    inst.start()
    load = Load(inst.port, args.sessions, run, rate=args.rate).start()
    try:
        for k in range(args.kills):
            time.sleep(rng.uniform(0, args.gap))
            roles = inst.roles()
            if rng.random() < args.group:
                target = "group"
            else:
                choices = [r for r in WEIGHTS if roles.get(r)]
                target = rng.choices(choices, [WEIGHTS[r] for r in choices])[0]
            t0 = time.monotonic()
            mark = inst.output_size()
            if target == "group":
                inst.kill_all()
            else:
                signal_quietly(rng.choice(roles[target]), signal.SIGKILL)
            events[target] += 1
            if target in TRANSIENT:
                time.sleep(0.3)
                missing = inst.core_alive()
                if not missing:
                    continue
                collateral[f"{target}->{'+'.join(missing)}"] += 1
                say(f"  kill {k}: {target}: took down {missing}")
            elif target != "group":
                took = wait_until(lambda: noticed(inst, mark, target), args.notice)
                if took is None:
                    if not inst.core_alive():
                        continue            # it stands: nothing to restart
                    unnoticed[target] += 1
                    say(f"  kill {k}: {target}: no reaction in {args.notice:.0f} s;"
                        f" missing {inst.core_alive()}")
                else:
                    noticed_s.append(took)
                if target == "runner":      # what outlives it (PDEATHSIG should end the daemons)
                    wait_until(lambda: set(inst.roles()) <= {"smtpd"}, args.notice)
                    for r, pids in inst.roles().items():
                        if r != "smtpd":
                            orphans[r] += 1
            inst.kill_all()
            try:
                inst.start()
            except StartFailed as e:
                start_failures += 1
                say(f"  restart after kill {k} failed: {e}")
                inst.kill_all()
                time.sleep(1)
                inst.start()
            restarts += 1
            down.append(time.monotonic() - t0)
            if (k + 1) % 50 == 0:
                say(f"  {k + 1} kills, {restarts} restarts, {sum(load.accepted.values())} accepted,"
                    f" {time.monotonic() - t_start:.0f} s")
        say(f"  kills done after {time.monotonic() - t_start:.0f} s; finishing the load")
        finished = load.finish(300)
        accepted = set(load.accepted)
        t_deliver = wait_until(lambda: accepted <= Tally(inst.maildir, run).delivered(), args.timeout,
                               poke=inst.poke)
        first_stop = inst.stop()
        inst.start()                    # a clean restart: crash leftovers must go now
        wait_until(inst.settled, 60, poke=inst.poke)
        time.sleep(args.settle)
        last_stop = inst.stop()
    finally:
        load.quit.set()
        inst.kill_all()
    tally = Tally(inst.maildir, run)
    queue = inst.queue_files()
    lost = sorted(accepted - tally.delivered())
    bound_delivery = sum(n for t, n in events.items() if t not in ("smtpd", "tcpserver")) * args.concurrency
    bound_submission = sum(events.values()) * args.sessions
    noticed_s.sort()
    down.sort()
    figures = {
        "kills": dict(events), "restarts": restarts, "seconds": round(time.monotonic() - t_start),
        "restart_failures": start_failures, "unnoticed": dict(unnoticed),
        "collateral": dict(collateral), "orphans_after_runner_kill": dict(orphans),
        "noticed_s_p50": round(noticed_s[len(noticed_s) // 2], 2) if noticed_s else None,
        "noticed_s_max": round(noticed_s[-1], 2) if noticed_s else None,
        "down_s_p50": round(down[len(down) // 2], 2) if down else None,
        "down_s_max": round(down[-1], 2) if down else None,
        "ids_sent": load.issued(), "accepted": len(accepted), "replies": dict(load.codes),
        "delivered": len(tally.delivered()), "lost": len(lost), "truncated": len(tally.truncated),
        "delivery_dups": tally.delivery_dups(), "submission_dups": tally.submission_dups(),
        "bounces": sum(tally.bounces.values()), "maildir_tmp_left": tally.tmp,
        "deliver_wait_s": None if t_deliver is None else round(t_deliver, 1),
        "queue_after_restart": queue, "stop_codes": [first_stop, last_stop],
    }
    say("kill figures: " + json.dumps(figures))
    check("kill: load finished (every id accepted or refused)", finished)
    check("kill: 0 lost", not lost, f"{len(lost)} lost: {lost[:10]}")
    check("kill: 0 truncated", not tally.truncated, f"{tally.truncated[:10]}")
    check("kill: no 5xx", not load.rejected, f"{dict(list(load.rejected.items())[:5])}")
    check("kill: delivery duplicates within qmail's bound",
          tally.delivery_dups() <= bound_delivery, f"{tally.delivery_dups()} <= {bound_delivery}")
    check("kill: submission duplicates within one per session per kill",
          tally.submission_dups() <= bound_submission, f"{tally.submission_dups()} <= {bound_submission}")
    check("kill: no bounce", not tally.bounces, f"{sum(tally.bounces.values())}")
    messages = {d: n for d, n in queue.items() if d != "pid"}
    check("kill: queue empty after a clean restart (pid/ scratch files aside: qmail-clean's 36 h)",
          not any(messages.values()), json.dumps(queue))
    check("kill: every restart succeeded", not start_failures, f"{start_failures}")
    check("kill: a session or delivery killed never takes a daemon with it", not collateral,
          json.dumps(dict(collateral)))
    check("kill: every dead daemon noticed by the runner", not unnoticed, json.dumps(dict(unnoticed)))
    check("kill: nothing but SMTP sessions outlives the runner", not orphans, json.dumps(dict(orphans)))
    if not args.keep:
        _rmtree(base)


def _rmtree(path: Path) -> None:
    import shutil
    shutil.rmtree(path, ignore_errors=True)


# -- section: enospc ---------------------------------------------------------------------------
class Mounts:
    """tmpfs mounts made here, unmounted at the end."""

    def __init__(self) -> None:
        self.points: list[Path] = []

    def tmpfs(self, path: Path, size: str, ids: tuple[int, int] | None) -> None:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                       check=True)
        self.points.append(path)
        give(path, ids)

    def close(self) -> None:
        for p in reversed(self.points):
            subprocess.run(["umount", "-l", str(p)], check=False)
        self.points.clear()


def fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` to the last byte; return the filler file."""
    path = directory / ".filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 20, 1 << 12, 1):
            chunk = b"\0" * size
            while True:
                try:
                    os.write(fd, chunk)
                except OSError:
                    break
    finally:
        os.close(fd)
    return path


def unfill(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def maildirmake(path: Path, ids) -> None:
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(mode=0o700, exist_ok=True)
        give(path / sub, ids)
    os.chmod(path, 0o700)


def enospc_instance(base: Path, name: str, ids, mounts: Mounts, sizes: dict[str, str]) -> Instance:
    """A fresh instance whose home, Maildir and log/ are tmpfs mounts of their own."""
    home = base / name
    mounts.tmpfs(home, sizes["home"], ids)
    inst = Instance(home, free_port(), ids)
    inst.start()
    inst.stop()
    mounts.tmpfs(inst.maildir, sizes["maildir"], ids)
    maildirmake(inst.maildir, ids)
    mounts.tmpfs(home / "log", sizes["log"], ids)
    return inst


def stage_queue(inst: Instance, run: str, args) -> dict:
    n, ids = args.messages, account()
    inst.start()
    filler = fill(inst.home)
    codes = {i: send_once(inst.port, message(run, i)) for i in range(n)}
    up = inst.core_alive()
    inst.kill_all()                 # a 250 must already be on disk
    unfill(filler)
    inst.start()
    accepted_full = {i for i, c in codes.items() if c == "250"}
    later = {i: send_once(inst.port, message(run, i)) for i in range(n) if i not in accepted_full}
    sent_again = [i for i, c in later.items() if c != "250"]
    t = wait_until(lambda: set(range(n)) <= Tally(inst.maildir, run).delivered(), 60, poke=inst.poke)
    return {"codes_while_full": dict(collections.Counter(codes.values())), "missing_while_full": up,
            "accepted_while_full": sorted(accepted_full), "refused_after": sent_again,
            "deliver_s": t}


def stage_preprocess(inst: Instance, run: str, args) -> dict:
    n, ids = args.messages, account()
    inst.start()
    inst.signal_role("send", signal.SIGSTOP)
    codes = {i: send_once(inst.port, message(run, i)) for i in range(n)}
    filler = fill(inst.home)
    mark = inst.output_size()
    inst.signal_role("send", signal.SIGCONT)
    time.sleep(args.full_wait)
    up = inst.core_alive()
    during = inst.output(mark).decode("latin-1")
    unfill(filler)
    alone = wait_until(lambda: set(range(n)) <= Tally(inst.maildir, run).delivered(), args.alone)
    t = alone if alone is not None else wait_until(
        lambda: set(range(n)) <= Tally(inst.maildir, run).delivered(), 60, poke=inst.poke)
    return {"codes": dict(collections.Counter(codes.values())), "missing_while_full": up,
            "log_lines_while_full": len(during.splitlines()),
            "warnings_while_full": [l for l in during.splitlines() if re.search(r"warning|trouble|alert", l)][:3],
            "recovered_alone_s": alone, "deliver_s": t}


def stage_bounce(inst: Instance, run: str, args) -> dict:
    n, ids = args.messages, account()
    dot = inst.home / "users" / USER / ".qmail-fail"
    dot.write_bytes(b"|exit 100\n")
    give(dot, ids)
    inst.start()
    inst.signal_role("lspawn", signal.SIGSTOP)
    codes = {i: send_once(inst.port, message(run, i), rcpt=f"{USER}-fail@localhost") for i in range(n)}
    wait_until(lambda: not inst.queue_files().get("todo"), 30)
    filler = fill(inst.home)
    mark = inst.output_size()
    inst.signal_role("lspawn", signal.SIGCONT)
    time.sleep(args.full_wait + 3)
    up = inst.core_alive()
    during = inst.output(mark).decode("latin-1")
    unfill(filler)
    accepted = {i for i, c in codes.items() if c == "250"}
    alone = wait_until(lambda: accepted <= set(Tally(inst.maildir, run).bounces), args.alone)
    t = alone if alone is not None else wait_until(
        lambda: accepted <= set(Tally(inst.maildir, run).bounces), 120, poke=inst.poke)
    time.sleep(2)
    return {"codes": dict(collections.Counter(codes.values())), "missing_while_full": up,
            "warnings_while_full": [l for l in during.splitlines() if re.search(r"warning|trouble|alert", l)][:3],
            "recovered_alone_s": alone, "bounced_s": t, "accepted": sorted(accepted)}


def stage_maildir(inst: Instance, run: str, args) -> dict:
    n, ids = args.messages, account()
    inst.start()
    filler = fill(inst.maildir)
    codes = {i: send_once(inst.port, message(run, i)) for i in range(n)}
    time.sleep(args.full_wait)
    up = inst.core_alive()
    partial = len(os.listdir(inst.maildir / "new")) + len(os.listdir(inst.maildir / "cur"))
    tmp_full = len(os.listdir(inst.maildir / "tmp"))
    unfill(filler)
    alone = wait_until(lambda: set(range(n)) <= Tally(inst.maildir, run).delivered(), args.alone)
    t = alone if alone is not None else wait_until(
        lambda: set(range(n)) <= Tally(inst.maildir, run).delivered(), 60, poke=inst.poke)
    return {"codes": dict(collections.Counter(codes.values())), "missing_while_full": up,
            "files_in_new_while_full": partial, "files_in_tmp_while_full": tmp_full,
            "recovered_alone_s": alone, "deliver_s": t}


def stage_log(inst: Instance, run: str, args) -> dict:
    n, ids = args.messages, account()
    inst.start()
    filler = fill(inst.home / "log")
    codes = {i: send_once(inst.port, message(run, i)) for i in range(n)}
    t_full = wait_until(lambda: set(range(n)) <= Tally(inst.maildir, run).delivered(), 60)
    up = inst.core_alive()
    size_full = (inst.home / "log" / "current").stat().st_size if (inst.home / "log" / "current").exists() else 0
    unfill(filler)
    more = {i: send_once(inst.port, message(run, i)) for i in range(n, n + 5)}
    t = wait_until(lambda: set(range(n + 5)) <= Tally(inst.maildir, run).delivered(), 60, poke=inst.poke)
    grew = wait_until(lambda: (inst.home / "log" / "current").exists() and
                      (inst.home / "log" / "current").stat().st_size > size_full, 20)
    codes.update(more)
    return {"codes": dict(collections.Counter(codes.values())), "missing_while_full": up,
            "delivered_while_full_s": t_full, "deliver_s": t, "log_written_again_s": grew,
            "runner_said": [l for l in inst.log_text().splitlines() if "log/current" in l
                            and "queue in" not in l][:3]}


STAGES = {"queue": stage_queue, "preprocess": stage_preprocess, "bounce": stage_bounce,
          "maildir": stage_maildir, "log": stage_log}


def campaign_enospc(args) -> None:
    say(f"== enospc: {args.messages} messages per stage")
    if os.geteuid() != 0:
        say("enospc: skipped (needs root to mount tmpfs)")
        return
    ids = account()
    base = scratch()
    mounts = Mounts()
    sizes = {"home": "24m", "maildir": "8m", "log": "2m"}
    try:
        for name in [s for s in args.stages.split(",") if s]:
            run = f"e{name}{os.getpid()}"
            inst = enospc_instance(base, name, ids, mounts, sizes)
            try:
                fig = STAGES[name](inst, run, args)
            except StartFailed as e:
                check(f"enospc {name}: instance runs", False, str(e))
                continue
            finally:
                code = inst.stop()
            died = fig.get("missing_while_full") or []
            tally = Tally(inst.maildir, run)
            if name == "bounce":
                want = set(fig["accepted"])
                got = tally.bounces
                fig.update(bounces=sum(got.values()), missing_bounces=sorted(want - set(got)),
                           double=sorted(i for i, c in got.items() if c > 1))
            else:
                codes250 = fig.get("codes") or fig.get("codes_while_full")
                fig.update(delivered=len(tally.delivered()), truncated=tally.truncated,
                           delivery_dups=tally.delivery_dups())
            fig.update(stop_code=code, queue=inst.queue_files())
            say(f"enospc {name} figures: " + json.dumps(fig, default=str))
            check(f"enospc {name}: every daemon alive while full", not died, f"missing {died}")
            five = {c: n for c, n in (fig.get("codes") or fig.get("codes_while_full")).items()
                    if c.startswith("5")}
            check(f"enospc {name}: only temporary failures (no 5xx)", not five, json.dumps(five))
            if name == "bounce":
                check(f"enospc {name}: one bounce per message once space returns",
                      not fig["missing_bounces"] and not fig["double"],
                      f"missing {fig['missing_bounces'][:10]}, double {fig['double'][:10]}")
            else:
                want = args.messages + (5 if name == "log" else 0)
                check(f"enospc {name}: nothing lost once space returns",
                      len(tally.delivered()) == want and not tally.truncated,
                      f"{len(tally.delivered())}/{want} delivered, {len(tally.truncated)} truncated")
            if name == "queue":
                check("enospc queue: every 250 while full was on disk (delivered after SIGKILL)",
                      set(fig["accepted_while_full"]) <= tally.delivered())
            check(f"enospc {name}: queue empty at the end",
                  not any(fig["queue"].get(d) for d in ("todo", "info", "local", "remote", "bounce",
                                                        "intd")), json.dumps(fig["queue"]))
    finally:
        mounts.close()
        if not args.keep:
            _rmtree(base)


# -- section: limits (EMFILE, memory) ------------------------------------------------------
def limit_trial(label: str, rlimits: dict[int, int], args, ids, base: Path) -> None:
    run = f"l{label}{os.getpid()}"
    inst = Instance(base / label, free_port(), ids)
    inst.start()                                  # created without the limit
    inst.stop()
    inst.rlimits = rlimits
    t0 = time.monotonic()
    mark = inst.output_size()
    try:
        inst.start(timeout=30)
        time.sleep(args.grace)          # a daemon that cannot start dies in this time
        missing = inst.core_alive()
        if missing:
            inst.stop(10)
            raise StartFailed(f"missing {missing} {args.grace:.0f} s after the start: "
                              + inst.output(mark).decode("latin-1")[-600:])
    except StartFailed as e:
        text = str(e)
        hung = "no 'SMTP on' line" in text and inst.running()
        inst.kill_all()
        said = [l for l in text.splitlines() if "exited" in l or "alert" in l or "rror" in l]
        say(f"limits {label}: did not start ({time.monotonic() - t0:.1f} s): {said[-3:] or text[-300:]}")
        check(f"limits {label}: refuses to start (or stops) at once, no hang", not hung, text[-200:])
        return
    lines = args.big_kb * 1024 // 52           # every 10th message is about --big-kb KB
    big = (lambda i: lines if i % 10 == 0 else 0)
    load = Load(inst.port, args.sessions, run, retry=False, big=big).start()
    deaths: list[str] = []
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        missing = inst.core_alive()
        for m in missing:
            if m not in deaths:
                deaths.append(m)
        if "runner" in missing:
            break
        time.sleep(0.25)
    load.stop_new.set()
    load.finish(60)
    out_lines = [l for l in inst.log_text().splitlines() if re.search(r"(?i)error|unable|memory|too many|trouble", l)]
    inst.stop()
    inst.rlimits = {}
    inst.start()
    accepted = set(load.accepted)
    t = wait_until(lambda: accepted <= Tally(inst.maildir, run, big).delivered(), 120, poke=inst.poke)
    inst.stop()
    tally = Tally(inst.maildir, run, big)
    lost = accepted - tally.delivered()
    fig = {"replies": dict(load.codes), "accepted": len(accepted), "delivered": len(tally.delivered()),
           "lost": len(lost), "truncated": len(tally.truncated), "daemons_died": deaths,
           "deliver_after_s": t, "sample_log": out_lines[:4]}
    say(f"limits {label} figures: " + json.dumps(fig))
    five = {c: n for c, n in load.codes.items() if c.startswith("5")}
    check(f"limits {label}: only temporary failures (no 5xx)", not five, json.dumps(five))
    check(f"limits {label}: no daemon died", not deaths, f"{deaths}")
    check(f"limits {label}: every 250 delivered after the limit is lifted", not lost and not tally.truncated,
          f"{len(lost)} lost, {len(tally.truncated)} truncated")


def campaign_limits(args) -> None:
    say(f"== limits: RLIMIT_NOFILE {args.nofile}, RLIMIT_AS {args.as_mb} MB, {args.seconds} s each")
    ids = account()
    base = scratch()
    try:
        for n in [int(x) for x in args.nofile.split(",") if x]:
            limit_trial(f"nofile{n}", {resource.RLIMIT_NOFILE: n}, args, ids, base)
        for mb in [int(x) for x in args.as_mb.split(",") if x]:
            limit_trial(f"as{mb}mb", {resource.RLIMIT_AS: mb << 20}, args, ids, base)
    finally:
        if not args.keep:
            _rmtree(base)


# -- section: attacks -------------------------------------------------------------------------
HONEST = iter(range(900000, 10 ** 9))      # ids of the honest client's messages


class Watch:
    """While an attack runs: RSS of every process (peak per role, peak total) and an honest client."""

    def __init__(self, inst: Instance, run: str) -> None:
        self.inst, self.run = inst, run
        self.peak_role: dict[str, int] = collections.defaultdict(int)
        self.peak_total = 0
        self.peak_procs = 0
        self.lat: list[float] = []
        self.fail: collections.Counter[str] = collections.Counter()
        self.stop = threading.Event()
        self.n = 0
        self.threads = [threading.Thread(target=self.sample, daemon=True),
                        threading.Thread(target=self.honest, daemon=True)]

    def __enter__(self) -> "Watch":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(40)

    def sample(self) -> None:
        while not self.stop.is_set():
            total = 0
            roles = self.inst.roles()
            count = 0
            for role, pids in roles.items():
                for p in pids:
                    total += pss_kb(p)
                    count += 1
                    self.peak_role[role] = max(self.peak_role[role], rss_kb(p))
            self.peak_total = max(self.peak_total, total)
            self.peak_procs = max(self.peak_procs, count)
            self.stop.wait(0.25)

    def honest(self) -> None:
        while not self.stop.is_set():
            t0 = time.monotonic()
            code = send_once(self.inst.port, message(self.run, next(HONEST)), source="127.0.0.1",
                             timeout=60)
            self.n += 1
            if code == "250":
                self.lat.append(time.monotonic() - t0)
            else:
                self.fail[code] += 1
            self.stop.wait(max(0.0, 0.5 - (time.monotonic() - t0)))

    def figures(self) -> dict:
        lat = sorted(self.lat)
        return {"honest_sent": self.n, "honest_ok": len(lat), "honest_fail": dict(self.fail),
                "honest_p50_s": round(lat[len(lat) // 2], 3) if lat else None,
                "honest_max_s": round(lat[-1], 3) if lat else None,
                "pss_peak_total_mb": round(self.peak_total / 1024, 1), "procs_peak": self.peak_procs,
                "rss_peak_mb": {r: round(kb / 1024, 1) for r, kb in sorted(self.peak_role.items())}}


class Raw:
    """A raw SMTP connection for the attacker (reads replies with a deadline)."""

    def __init__(self, port: int, source: str, timeout: float = 30) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0))
        self.buf = b""

    def reply(self, timeout: float = 30) -> bytes:
        """One whole reply's last line (b"" on EOF)."""
        self.sock.settimeout(timeout)
        while True:
            m = re.search(rb"(?m)^(\d{3}) [^\n]*\n", self.buf)
            if m:
                self.buf = self.buf[m.end():]
                return m.group(0)
            chunk = self.sock.recv(65536)
            if not chunk:
                return b""
            self.buf += chunk

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def rcpt_session(port: int, count: int, stop_at_refusal: bool) -> dict:
    """One transaction with up to ``count`` RCPTs (pipelined 500 at a time), then DATA."""
    c = Raw(port, "127.0.0.5")
    greet = c.reply()
    c.send(b"EHLO flood.example\r\nMAIL FROM:<%s>\r\n" % SENDER.encode())
    c.reply()
    c.reply()
    ok, first_refusal, refused, dropped, sent = 0, None, 0, False, 0
    t0 = time.monotonic()
    while sent < count and not dropped and not (stop_at_refusal and refused):
        k = min(500, count - sent)
        c.send(b"RCPT TO:<%s>\r\n" % RCPT.encode() * k)
        for j in range(k):
            r = c.reply(60)
            if not r:
                dropped = True
                break
            if r.startswith(b"250"):
                ok += 1
            else:
                refused += 1
                if first_refusal is None:
                    first_refusal = (sent + j, r.strip().decode("latin-1"))
        sent += k
    data_reply = b""
    if not dropped:
        c.send(b"DATA\r\n")
        r = c.reply(60)
        if r.startswith(b"354"):
            c.send(message("flood", 0) + b".\r\n")
            data_reply = c.reply(300)
        else:
            data_reply = r
        c.send(b"QUIT\r\n")
    c.close()
    return {"greeting": greet[:3].decode(), "rcpts_sent": sent, "rcpts_accepted": ok,
            "refused": refused, "first_refusal": first_refusal, "dropped": dropped,
            "data_reply": data_reply.strip().decode("latin-1"),
            "seconds": round(time.monotonic() - t0, 1)}


def attack_rcpt_flood(inst: Instance, args) -> dict:
    """A client that ignores the limit, then one that stops at it and sends its message
    (qmail-send then delivers to every accepted recipient: its memory is measured too)."""
    flood = rcpt_session(inst.port, args.rcpts, stop_at_refusal=False)
    polite = rcpt_session(inst.port, args.rcpts, stop_at_refusal=True)
    t0 = time.monotonic()
    done = None
    want = polite["rcpts_accepted"] if polite["data_reply"].startswith("250") else 0
    copies = lambda: len(Tally(inst.maildir, "flood").copies.get(0, []))   # noqa: E731
    if want:
        done = wait_until(lambda: copies() >= want and inst.settled(), 600)
    return {"ignoring_the_limit": flood, "stopping_at_the_limit": polite,
            "copies_delivered": copies(),
            "delivered_all_s": None if done is None else round(time.monotonic() - t0, 1)}


def sources(first: int, count: int) -> list[str]:
    """Loopback addresses 127.0.0.<first>… (one attacker with many addresses: a botnet)."""
    return [f"127.0.0.{first + k}" for k in range(count)]


def attack_slots(inst: Instance, args) -> dict:
    conns, greeted, refused, silent = [], 0, 0, 0
    t0 = time.monotonic()
    addrs = sources(20, args.slot_sources)
    for k in range(args.slots):
        try:
            c = Raw(inst.port, addrs[k % len(addrs)], timeout=5)
        except OSError:
            refused += 1
            continue
        try:
            r = c.reply(2)
        except OSError:
            r = None
        if r is None:
            silent += 1                 # connected, no greeting: waiting for a slot
            conns.append(c)
        elif r.startswith(b"220"):
            greeted += 1
            conns.append(c)
        else:
            refused += 1
            c.close()
    time.sleep(args.hold)
    alive = 0
    for c in conns:
        try:
            c.send(b"NOOP\r\n")
            if c.reply(2).startswith(b"250"):
                alive += 1
        except OSError:
            pass
        c.close()
    return {"tried": args.slots, "sources": len(addrs), "greeted": greeted, "refused_or_421": refused,
            "no_greeting": silent, "held_s": args.hold, "still_served_after_hold": alive,
            "seconds": round(time.monotonic() - t0, 1)}


def attack_slowloris(inst: Instance, args) -> dict:
    conns = []
    addrs = sources(40, max(1, (args.loris + 14) // 15))
    for k in range(args.loris):
        try:
            c = Raw(inst.port, addrs[k % len(addrs)], timeout=10)
            if c.reply(10).startswith(b"220"):
                conns.append([c, time.monotonic(), None])
            else:
                c.close()
        except OSError:
            pass
    t0 = time.monotonic()
    payload = b"HELO slow.example\r\n" * 1000
    k = 0
    while time.monotonic() - t0 < args.slowloris and any(x[2] is None for x in conns):
        time.sleep(args.drip)
        for x in conns:
            if x[2] is not None:
                continue
            try:
                x[0].send(payload[k:k + 1])
                x[0].sock.settimeout(0.01)
                try:
                    if x[0].sock.recv(4096) == b"":
                        x[2] = time.monotonic() - x[1]
                except (socket.timeout, BlockingIOError):
                    pass
            except OSError:
                x[2] = time.monotonic() - x[1]
        k += 1
    closed = sorted(x[2] for x in conns if x[2] is not None)
    for x in conns:
        x[0].close()
    return {"connections": len(conns), "sources": len(addrs), "drip_s": args.drip,
            "watched_s": args.slowloris, "dropped_by_server": len(closed),
            "dropped_after_s_median": round(closed[len(closed) // 2], 1) if closed else None,
            "dropped_after_s_max": round(closed[-1], 1) if closed else None,
            "still_open": len(conns) - len(closed)}


def attack_auth(inst: Instance, args) -> dict:
    import base64
    counts = collections.Counter()
    lock = threading.Lock()
    stop = time.monotonic() + args.auth_seconds
    per_session: list[int] = []

    def one(k: int) -> None:
        tries = 0
        while time.monotonic() < stop:
            try:
                c = Raw(inst.port, "127.0.0.4", timeout=30)
                c.reply()
                c.send(b"EHLO brute.example\r\n")
                ehlo = c.reply()
                while time.monotonic() < stop:
                    guess = base64.b64encode(b"\0%s\0guess%d-%d" % (USER.encode(), k, tries))
                    c.send(b"AUTH PLAIN " + guess + b"\r\n")
                    r = c.reply(60)
                    tries += 1
                    with lock:
                        counts[r[:3].decode() or "eof"] += 1
                    if not r or r.startswith(b"421"):
                        break
                c.close()
            except OSError:
                with lock:
                    counts["connect-fail"] += 1
                time.sleep(0.1)
        with lock:
            per_session.append(tries)

    t0 = time.monotonic()
    threads = [threading.Thread(target=one, args=(k,), daemon=True) for k in range(args.auth_sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(args.auth_seconds + 120)
    secs = time.monotonic() - t0
    guesses = sum(n for code, n in counts.items() if code in ("535", "454", "235"))
    return {"sessions": args.auth_sessions, "seconds": round(secs, 1), "replies": dict(counts),
            "guesses": guesses, "guesses_per_s": round(guesses / secs, 1),
            "auth_log_lines": len(re.findall(r"(?i)auth", inst.log_text()))}


ATTACKS = {"rcpt-flood": attack_rcpt_flood, "slots": attack_slots, "slowloris": attack_slowloris,
           "auth": attack_auth}


def campaign_attacks(args) -> None:
    say("== attacks")
    ids = account()
    base = scratch()
    inst = Instance(base / "home", free_port(), ids)
    run = f"a{os.getpid()}"
    try:
        inst.start()
        inst.stop()
        cp = inst.home / "control" / "checkpassword"
        cp.write_text("/bin/false\n")
        give(cp, ids)
        inst.start()
        with Watch(inst, run) as idle:
            time.sleep(3)
        say("attack baseline (idle, honest client only): " + json.dumps(idle.figures()))
        for name in [a for a in args.attacks.split(",") if a]:
            with Watch(inst, run) as w:
                fig = ATTACKS[name](inst, args)
                time.sleep(1)
            fig.update(w.figures())
            fig["instance_up"] = not inst.core_alive()
            say(f"attack {name} figures: " + json.dumps(fig))
            check(f"attack {name}: instance still up", fig["instance_up"], f"{inst.core_alive()}")
            check(f"attack {name}: honest client served", w.lat and not w.fail,
                  f"{len(w.lat)} ok, failures {dict(w.fail)}, max {fig['honest_max_s']} s")
            big = max(w.peak_role.values(), default=0) / 1024
            check(f"attack {name}: memory bounded (every process's RSS < {args.rss_mb:g} MB,"
                  f" total PSS < {args.pss_mb:g} MB)",
                  big < args.rss_mb and w.peak_total / 1024 < args.pss_mb,
                  f"largest {big:.1f} MB, total {fig['pss_peak_total_mb']} MB")
            if not inst.running():
                inst.kill_all()
                inst.start()
        inst.stop()
        inst.start()
        wait_until(inst.settled, 60, poke=inst.poke)
        tally = Tally(inst.maildir, run)
        say(f"attacks: honest messages delivered {len(tally.delivered())}, truncated {len(tally.truncated)}")
    finally:
        inst.stop()
        if not args.keep:
            _rmtree(base)


# -- main ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("section", choices=["kill", "enospc", "limits", "attacks", "all"])
    ap.add_argument("--keep", action="store_true", help="keep the scratch directories")
    g = ap.add_argument_group("kill")
    g.add_argument("--kills", type=int, default=1000)
    g.add_argument("--sessions", type=int, default=5, help="SMTP load sessions (kill, limits)")
    g.add_argument("--group", type=float, default=0.3, help="share of kills that take the whole group")
    g.add_argument("--gap", type=float, default=0.5, help="at most this many seconds between kills")
    g.add_argument("--concurrency", type=int, default=10, help="concurrencylocal")
    g.add_argument("--rate", type=float, default=40, help="new messages per second (kill)")
    g.add_argument("--notice", type=float, default=5.0,
                   help="seconds the runner may take to notice a dead daemon")
    g.add_argument("--timeout", type=float, default=300, help="seconds to wait for deliveries")
    g.add_argument("--settle", type=float, default=3.0)
    g.add_argument("--seed", type=int, default=15)
    g = ap.add_argument_group("enospc")
    g.add_argument("--messages", type=int, default=40)
    g.add_argument("--stages", default=",".join(STAGES))
    g.add_argument("--full-wait", type=float, default=5.0,
                   help="seconds the daemons work against the full disk")
    g.add_argument("--alone", type=float, default=30.0,
                   help="seconds to wait for a recovery without a poke once space returns")
    g = ap.add_argument_group("limits")
    g.add_argument("--nofile", default="12,16,24,32,64")
    g.add_argument("--as-mb", default="24,28,32,40,64")
    g.add_argument("--big-kb", type=int, default=4096, help="size of every 10th message (limits)")
    g.add_argument("--grace", type=float, default=3.0, help="seconds a limited instance has to start")
    g.add_argument("--seconds", type=int, default=10, help="load time per limit; AUTH attack time")
    g = ap.add_argument_group("attacks")
    g.add_argument("--attacks", default=",".join(ATTACKS))
    g.add_argument("--rcpts", type=int, default=2500)
    g.add_argument("--slots", type=int, default=160, help="idle connections (slot exhaustion)")
    g.add_argument("--slot-sources", type=int, default=8, help="addresses they come from")
    g.add_argument("--hold", type=float, default=30.0, help="seconds they are held")
    g.add_argument("--loris", type=int, default=90, help="slowloris connections (15 per address)")
    g.add_argument("--drip", type=float, default=5.0, help="seconds between their bytes")
    g.add_argument("--slowloris", type=float, default=120.0, help="seconds they are watched")
    g.add_argument("--auth-sessions", type=int, default=10)
    g.add_argument("--auth-seconds", type=float, default=30.0, help="seconds of AUTH guessing")
    g.add_argument("--rss-mb", type=float, default=200, help="bound on any one process's RSS")
    g.add_argument("--pss-mb", type=float, default=1024, help="bound on the instance's total PSS")
    args = ap.parse_args(argv)
    sections = ["kill", "enospc", "limits", "attacks"] if args.section == "all" else [args.section]
    for s in sections:
        {"kill": campaign_kill, "enospc": campaign_enospc, "limits": campaign_limits,
         "attacks": campaign_attacks}[s](args)
    failed = [name for name, ok, _ in RESULTS if not ok]
    say(f"== {len(RESULTS) - len(failed)} passed, {len(failed)} failed")
    for name in failed:
        say(f"   FAILED: {name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
