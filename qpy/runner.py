"""The foreground runner behind ``qpy run``: everything an instance needs, in one process tree.

Starts, from the instance's bin/, each child in a session of its own:
  queued  ``qmail-queued`` and  pickup ``qmail-pickup``: the queue service and the drop
          directory, through which every caller that does not own the queue submits
          (SECURITY.md) — other local users, and in privileged mode qmail-smtpd itself;
  send    ``qmail-start <defaultdelivery>`` (qmail-send with lspawn, rspawn and clean);
  smtp    ``tcpserver -v -R -H -c 100 -C 20:<421> -b 100 -l <me> [-u qmaild -g nofiles]
          <host> <port> qmail-smtpd``.
Their log lines (qmail-send's activity log on fd 1, the others' fd 2) are shown on the
terminal with the local time and appended to QMAILHOME/log/current.  SIGINT or SIGTERM
stops the listener first, then the rest (qmail-send finishes running deliveries and saves
its schedule), so nothing that was accepted is lost.

WHO       ``decide``: as an ordinary user, an instance whose queue is ours (single-user
          mode: everything runs as us).  As root: a privileged instance (queue owned by
          qmailq; the qmail accounts must be able to read control/, checked at start):
          SMTP as qmaild/nofiles, the queue as qmailq, qmail-send as qmails, deliveries
          as their recipients; an instance owned by an ordinary user: the whole runner
          becomes that user first; an instance owned by root: refused (SMTP and every
          delivery would run as root).  One line says which.
CHILDREN  never outlive the runner: each gets PR_SET_PDEATHSIG = SIGTERM (kept across its
          own privilege drop by qpy.prot), and on every way out of ``run`` — a stop, a
          child's death, an exception — what still runs gets SIGTERM, then SIGKILL after
          STOP_WAIT seconds, is reaped, and each child's process group gets SIGTERM.
LOG       ``LogFile``: log/current grows to ``size`` bytes (default LOG_SIZE, 1 000 000;
          ``qpy run --log-size``), then, as multilog does, it is marked done (0744),
          renamed ``@<TAI64N>.s`` (tai64nlocal reads the name) and a new one is begun;
          at most ``keep`` (LOG_FILES, 10; ``--log-files``) old files stay.  A write that
          fails (ENOSPC, EIO, a read-only or full file system) is reported once on
          stderr; the runner keeps serving and showing lines on the terminal, keeps the
          newest LOG_PENDING bytes of them, and tries the log again every LOG_RETRY s.
"""
from __future__ import annotations

import os
import selectors
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import IO

from qpy import auto, prot, services
from qpy.errors import PermFail, TempFail

STOP_WAIT = 60.0
SMTP_LIMIT = 100        # concurrent SMTP sessions (tcpserver -c; Postfix's default process limit),
                        # and the listen backlog (-b): a burst of connections must not overflow it
LOG_SIZE = 1_000_000    # bytes in log/current before it is rotated (the services' multilog s1000000)
LOG_FILES = 10          # rotated log files kept (multilog's default n10)
LOG_RETRY = 5.0         # seconds between attempts to write a log that failed
LOG_PENDING = 65536     # bytes of newest lines kept for the log while it cannot be written
READERS = (auto.QMAILD, auto.QMAILQ, auto.QMAILS, auto.QMAILR, auto.ALIAS)   # must read control/


def tai64n(now: float) -> str:
    """The TAI64N label of a Unix time, as multilog names its files."""
    sec = int(now)
    return "@%016x%08x" % (2 ** 62 + 10 + sec, int((now - sec) * 1e9))


class LogFile:
    """log/current, rotated as multilog rotates it; a failing write never stops the runner."""

    def __init__(self, directory: str, size: int = LOG_SIZE, keep: int = LOG_FILES,
                 err: IO[str] | None = None) -> None:
        self.dir, self.size, self.keep = directory, max(1, size), max(1, keep)
        self.path = os.path.join(directory, "current")
        self.err = err or sys.stderr
        self.fd: int | None = None
        self.used = 0               # bytes in current (None-regular files never rotate)
        self.regular = True
        self.pending = b""
        self.lost = 0               # lines dropped from pending while the log failed
        self.failed: str | None = None
        self.since = self.retry_at = 0.0

    def write(self, data: bytes) -> None:
        """Append whole lines (now, or once the log can be written again)."""
        self.pending += data
        if len(self.pending) > LOG_PENDING:
            self.trim()
        self.flush()

    def trim(self) -> None:
        """Keep the (maybe half-written) oldest line and the newest LOG_PENDING bytes."""
        head = self.pending.find(b"\n") + 1
        cut = self.pending.find(b"\n", len(self.pending) - LOG_PENDING) + 1
        if cut > head:
            self.lost += self.pending.count(b"\n", head, cut)
            self.pending = self.pending[:head] + self.pending[cut:]

    def flush(self, now: float | None = None) -> None:
        """Write what is pending, unless the log failed less than LOG_RETRY s ago."""
        now = time.monotonic() if now is None else now
        if not self.pending or (self.failed is not None and now < self.retry_at):
            return
        try:
            self.write_pending()
        except OSError as e:
            self.failing(e, now)
            return
        if self.failed is not None:
            self.recovered(now)

    def open(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        st = os.fstat(self.fd)
        self.regular, self.used = stat.S_ISREG(st.st_mode), st.st_size

    def write_pending(self) -> None:
        """Whole lines into current, rotating before a line that would take it past size."""
        if self.fd is None:
            self.open()
        assert self.fd is not None
        while self.pending:
            line = self.pending.find(b"\n") + 1 or len(self.pending)
            room = self.size - self.used if self.regular else len(self.pending)
            if self.regular and self.used and line > room:
                self.rotate()
                continue
            take = max(line, self.pending.rfind(b"\n", 0, room) + 1)
            n = os.write(self.fd, self.pending[:take])
            self.pending = self.pending[n:]
            self.used += n

    def rotate(self) -> None:
        """multilog's rotation: current is synced, marked done, renamed @<tai64n>.s."""
        assert self.fd is not None
        os.fsync(self.fd)
        os.fchmod(self.fd, 0o744)
        os.rename(self.path, os.path.join(self.dir, tai64n(time.time()) + ".s"))
        os.close(self.fd)
        self.fd = None
        old = sorted(n for n in os.listdir(self.dir) if n.startswith("@") and n.endswith(".s"))
        for name in old[:-self.keep]:
            try:
                os.unlink(os.path.join(self.dir, name))
            except FileNotFoundError:
                pass
        self.open()

    def failing(self, e: OSError, now: float) -> None:
        """Report the first failure once; reopen (a replaced file, space freed) later."""
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None
        if self.failed is None:
            self.failed, self.since = e.strerror or str(e), now
            self.report(f"qpy: unable to write {self.path}: {self.failed}; still serving, log"
                        f" lines go to the terminal only, retrying every {LOG_RETRY:g} s")
        self.retry_at = now + LOG_RETRY

    def recovered(self, now: float) -> None:
        note = (f"qpy: {self.path} writable again after {now - self.since:.0f} s ({self.failed})"
                + (f"; {self.lost} lines went to the terminal only" if self.lost else ""))
        self.failed, self.lost = None, 0
        self.report(note)
        self.write(time.strftime("%Y-%m-%d %H:%M:%S ").encode() + note.encode() + b"\n")

    def report(self, line: str) -> None:
        try:
            self.err.write(line + "\n")
            self.err.flush()
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        self.flush(float("inf"))
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@dataclass
class Mode:
    """Who runs what: ``decide``'s answer."""

    line: str                               # said at start, one line
    priv: bool = False
    smtp_ids: tuple[int, int] | None = None  # tcpserver -u/-g
    owner: prot.Account | None = None        # root on a user's instance: become its owner


def decide(home: str) -> Mode:
    """The mode of ``home`` for this caller; PermFail (one line) if it must not run."""
    euid = os.geteuid()
    try:
        st = os.stat(os.path.join(home, "queue"))
    except FileNotFoundError:
        if euid == 0:
            raise PermFail("refusing to create a single-user instance as root (SMTP and every"
                           " delivery would run as root): run qpy run as an ordinary user, or"
                           " make a privileged instance with qpy init or qpy install")
        return Mode(f"single-user mode: everything runs as {_name(euid)}")
    except OSError as e:
        raise TempFail(f"unable to stat {home}/queue: {e.strerror}") from e
    if euid != 0:
        qmailq = prot.lookup_user(auto.QMAILQ)
        if st.st_uid != euid and qmailq is not None and st.st_uid == qmailq.uid:
            raise PermFail(f"{home} is a privileged instance: run qpy run as root, or run its"
                           " services (qpy install)")
        if st.st_uid != euid:
            raise PermFail(f"{home}/queue belongs to {_name(st.st_uid)}: run qpy run as that"
                           " user, or as root for a privileged instance")
        return Mode(f"single-user mode: everything runs as {_name(euid)}")
    if prot.privileged(home):
        return privileged(home)
    if st.st_uid == 0:
        raise PermFail("refusing to run as root: this single-user instance belongs to root, so"
                       " SMTP and every delivery would run as root; use an instance of an"
                       " ordinary user, or a privileged one (qpy init or qpy install)")
    owner = prot.account_of(st.st_uid)
    return Mode(f"running as {owner.name}, the owner of {home}/queue, not as root (single-user"
                " mode)", owner=owner)


def privileged(home: str) -> Mode:
    """A privileged instance: the accounts it needs must reach control/ (not a 0700 home)."""
    qmaild = prot.account(auto.QMAILD, True)
    nofiles = prot.lookup_group(auto.GROUP_NOFILES)
    if nofiles is None:
        raise TempFail(f"no group {auto.GROUP_NOFILES}: run qpy install")
    blind = [name for name in READERS if not can_read(name, os.path.join(home, "control", "me"))]
    if blind:
        raise TempFail(f"{', '.join(blind)} cannot read {home}/control/me: a directory on the"
                       " way is closed to them (a 0700 home?); move the instance or open the"
                       " path (chmod o+x)")
    return Mode(f"privileged mode: SMTP runs as {auto.QMAILD}, the queue as {auto.QMAILQ},"
                f" qmail-send as {auto.QMAILS}, deliveries as their recipients", priv=True,
                smtp_ids=(qmaild.uid, nofiles))


def can_read(name: str, path: str) -> bool:
    """True if account ``name`` can open ``path`` (tried in a child that becomes it)."""
    acct = prot.lookup_user(name)
    if acct is None:
        return False
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            prot.drop_to(acct.uid, acct.gid)
            os.close(os.open(path, os.O_RDONLY))
            code = 0
        except BaseException:
            pass
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def _name(uid: int) -> str:
    return prot.account_of(uid).name


class Runner:
    """Own the child processes and their log pipes."""

    def __init__(self, home: str, host: str, port: int, me: str,
                 defaultdelivery: str = "./Maildir/", out: IO[str] | None = None,
                 mode: Mode | None = None, log_size: int = LOG_SIZE,
                 log_files: int = LOG_FILES) -> None:
        self.home, self.host, self.port, self.me = home, host, port, me
        self.defaultdelivery = defaultdelivery
        self.out: IO[str] | None = out or sys.stdout
        self.mode = mode or Mode("")
        self.children: dict[str, subprocess.Popen] = {}
        self.stopping = False
        self.port_seen = False
        os.makedirs(os.path.join(home, "log"), exist_ok=True)
        self.log = LogFile(os.path.join(home, "log"), log_size, log_files)

    def env(self) -> dict[str, str]:
        return dict(os.environ, QMAILHOME=self.home)

    def commands(self) -> dict[str, list[str]]:
        """Each child's argv, in start order (the listener last)."""
        bin_ = os.path.join(self.home, "bin")
        smtp = [os.path.join(bin_, "tcpserver"), "-1", "-v", "-R", "-H", "-c", str(SMTP_LIMIT),
                "-C", services.per_client(SMTP_LIMIT), "-b", str(SMTP_LIMIT), "-l", self.me]
        if self.mode.smtp_ids is not None:
            smtp += ["-u", str(self.mode.smtp_ids[0]), "-g", str(self.mode.smtp_ids[1])]
        return {
            "queued": [os.path.join(bin_, "qmail-queued")],
            "pickup": [os.path.join(bin_, "qmail-pickup")],
            "send": [os.path.join(bin_, "qmail-start"), self.defaultdelivery],
            "smtp": smtp + [self.host, str(self.port), "qmail-smtpd"],
        }

    def start(self) -> None:
        """Start every child with its output on a pipe; each dies with us (PDEATHSIG)."""
        me = os.getpid()

        def lifeline() -> None:
            prot.set_death_signal(signal.SIGTERM)
            if os.getppid() != me:          # we died before the line was set
                os.kill(os.getpid(), signal.SIGTERM)
        prot.parent_death_signal()          # (loads libc here, not in each child)
        for name, argv in self.commands().items():
            self.children[name] = subprocess.Popen(
                argv, cwd=self.home, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, env=self.env(), start_new_session=True,
                preexec_fn=lifeline)

    def run(self) -> int:
        """Start, relay logs until stopped; on every way out, leave no child behind."""
        try:
            self.start()
            return self.loop()
        finally:
            self.finish()

    def emit_smtp(self, line: bytes) -> None:
        """tcpserver -1 prints the bound port first: announce where SMTP listens."""
        if self.port_seen or not line.strip().isdigit():
            self.emit("smtp", line)
            return
        self.port_seen = True
        self.say(f"qpy: SMTP on {self.host}:{int(line)}, queue in {self.home}/queue; Ctrl-C stops")

    def say(self, text: str) -> None:
        """Text for the terminal; a terminal that went away is not our failure."""
        if self.out is None:
            return
        try:
            self.out.write(text + "\n")
            self.out.flush()
        except (OSError, ValueError):
            self.out = None

    def emit(self, name: str, line: bytes) -> None:
        """Show one log line and append it to log/current."""
        self.emit_lines(name, [line])

    def emit_lines(self, name: str, lines: list[bytes]) -> None:
        """Show log lines and append them to log/current (one write to each)."""
        stamp = time.strftime('%Y-%m-%d %H:%M:%S')
        text = "".join(f"{stamp} {name}: {line.decode('utf-8', 'replace').rstrip()}\n"
                       for line in lines)
        self.say(text[:-1])
        self.log.write(text.encode("utf-8", "replace"))

    def stop(self, *_: object) -> None:
        """Stop accepting mail, then stop the rest (qmail-send gracefully)."""
        if self.stopping:
            return
        self.stopping = True
        for name in ("smtp", "pickup", "queued", "send"):
            proc = self.children.get(name)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def loop(self) -> int:
        """Relay log lines until every child is gone; return 0 or 111."""
        signal.signal(signal.SIGINT, self.stop)
        signal.signal(signal.SIGTERM, self.stop)
        sel = selectors.DefaultSelector()
        buffers: dict[str, bytes] = {}
        for name, proc in self.children.items():
            assert proc.stdout is not None
            os.set_blocking(proc.stdout.fileno(), False)
            sel.register(proc.stdout, selectors.EVENT_READ, name)
            buffers[name] = b""
        deadline: float | None = None
        while sel.get_map():
            if self.stopping and deadline is None:
                deadline = time.monotonic() + STOP_WAIT
            for key, _ in sel.select(timeout=0.5):
                name = key.data
                try:
                    chunk = os.read(key.fileobj.fileno(), 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(key.fileobj)
                    if buffers[name]:
                        self.emit(name, buffers[name])
                    continue
                lines = (buffers[name] + chunk).split(b"\n")
                buffers[name] = lines.pop()
                if name == "smtp":
                    for line in lines:
                        self.emit_smtp(line)
                elif lines:
                    self.emit_lines(name, lines)
            self.log.flush()
            for name, proc in self.children.items():
                if proc.poll() is not None and not self.stopping:
                    self.emit("qpy", f"{name} exited with status {proc.returncode}; stopping".encode())
                    self.stop()
            if deadline is not None and time.monotonic() > deadline:
                break
        codes = [self.reap(proc, deadline) for proc in self.children.values()]
        return 0 if all(c in (0, -signal.SIGTERM) for c in codes) else 111

    @staticmethod
    def reap(proc: subprocess.Popen, deadline: float | None) -> int:
        """Wait for a child until ``deadline``, then SIGKILL its group; its exit status."""
        try:
            return proc.wait(max(0.0, deadline - time.monotonic()) if deadline else None)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            return proc.wait()

    def finish(self) -> None:
        """However ``run`` ends: TERM what still runs, KILL it after STOP_WAIT, reap it all,
        TERM each child's process group (sessions tcpserver left running), close the log."""
        try:
            live = [p for p in self.children.values() if p.poll() is None]
            for proc in live:
                proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_WAIT
            for proc in live:
                self.reap(proc, deadline)
            for proc in self.children.values():
                _signal_group(proc.pid, signal.SIGTERM)
        finally:
            self.log.close()


def _signal_group(pgid: int, sig: int) -> None:
    """Signal a child's process group (it leads a session of its own); gone is fine."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
