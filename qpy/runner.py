"""The foreground runner behind ``qpy run``: the daemon tree plus an SMTP listener.

Starts, from the instance's bin/, ``qmail-start <defaultdelivery>`` (which becomes
qmail-send with lspawn, rspawn and clean below it) and ``tcpserver -v -R -H -c 100
-b 100 -l <me> <host> <port> qmail-smtpd``.  Their log lines (qmail-send's activity log on
fd 1, tcpserver's and the programs' fd 2) are shown on the terminal with the
local time and appended to QMAILHOME/log/current.  SIGINT or SIGTERM stops the
listener first, then qmail-send (which finishes running deliveries and saves its
schedule), so nothing that was accepted is lost.
"""
from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from typing import IO

STOP_WAIT = 60.0
SMTP_LIMIT = 100        # concurrent SMTP sessions (tcpserver -c; Postfix's default process limit),
                        # and the listen backlog (-b): a burst of connections must not overflow it


class Runner:
    """Own the child processes and their log pipes."""

    def __init__(self, home: str, host: str, port: int, me: str,
                 defaultdelivery: str = "./Maildir/", out: IO[str] | None = None) -> None:
        self.home, self.host, self.port, self.me = home, host, port, me
        self.defaultdelivery = defaultdelivery
        self.out = out or sys.stdout
        self.children: dict[str, subprocess.Popen] = {}
        self.stopping = False
        self.port_seen = False
        os.makedirs(os.path.join(home, "log"), exist_ok=True)
        self.log = open(os.path.join(home, "log", "current"), "a", encoding="utf-8")

    def env(self) -> dict[str, str]:
        return dict(os.environ, QMAILHOME=self.home)

    def start(self) -> None:
        """Start qmail-start and tcpserver with their output on pipes."""
        bin_ = os.path.join(self.home, "bin")
        self.children["send"] = subprocess.Popen(
            [os.path.join(bin_, "qmail-start"), self.defaultdelivery], cwd=self.home,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=self.env(), start_new_session=True)
        self.children["smtp"] = subprocess.Popen(
            [os.path.join(bin_, "tcpserver"), "-1", "-v", "-R", "-H", "-c", str(SMTP_LIMIT),
             "-b", str(SMTP_LIMIT), "-l", self.me, self.host, str(self.port), "qmail-smtpd"],
            cwd=self.home,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=self.env(), start_new_session=True)

    def emit_smtp(self, line: bytes) -> None:
        """tcpserver -1 prints the bound port first: announce where SMTP listens."""
        if self.port_seen or not line.strip().isdigit():
            self.emit("smtp", line)
            return
        self.port_seen = True
        print(f"qpy: SMTP on {self.host}:{int(line)}, queue in {self.home}/queue; Ctrl-C stops",
              file=self.out, flush=True)

    def emit(self, name: str, line: bytes) -> None:
        """Show one log line and append it to log/current."""
        self.emit_lines(name, [line])

    def emit_lines(self, name: str, lines: list[bytes]) -> None:
        """Show log lines and append them to log/current (one write to each)."""
        stamp = time.strftime('%Y-%m-%d %H:%M:%S')
        text = "".join(f"{stamp} {name}: {line.decode('utf-8', 'replace').rstrip()}\n"
                       for line in lines)
        self.out.write(text)
        self.out.flush()
        self.log.write(text)
        self.log.flush()

    def stop(self, *_: object) -> None:
        """Stop accepting mail, then stop qmail-send gracefully."""
        if self.stopping:
            return
        self.stopping = True
        for name in ("smtp", "send"):
            proc = self.children.get(name)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def loop(self) -> int:
        """Relay log lines until both children are gone; return 0 or 111."""
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
            for name, proc in self.children.items():
                if proc.poll() is not None and not self.stopping:
                    self.emit("qpy", f"{name} exited with status {proc.returncode}; stopping".encode())
                    self.stop()
            if deadline is not None and time.monotonic() > deadline:
                for proc in self.children.values():
                    if proc.poll() is None:
                        proc.kill()
                break
        codes = [proc.wait() for proc in self.children.values()]
        self.log.close()
        return 0 if all(c in (0, -signal.SIGTERM) for c in codes) else 111
