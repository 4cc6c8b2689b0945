"""Run a tcpserver (ours or Debian's) on loopback for a test, and talk to it.

    with TCPServer(home, ["-R", "-H", "-l", "lh"], prog=["sh", "-c", "env"]) as srv:
        out = talk(srv.host, srv.port)
        srv.wait_log("end ")
    srv.log   # its fd 2, complete once the block is left

The server is started with ``-1`` on port 0 and the port is read from its stdout;
leaving the block sends SIGTERM and checks that it exited 0.
"""
from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

WAIT = 30.0


class TCPServer:
    """One tcpserver process listening on ``host``, port chosen by the kernel."""

    def __init__(self, home: Path | None, opts: list[str], prog: list[str], host: str = "127.0.0.1",
                 env: dict[str, str] | None = None, binary: str | None = None) -> None:
        self.binary = binary or str(Path(home) / "bin" / "tcpserver")
        self.argv = [self.binary, "-1", *opts, host, "0", *prog]
        self.host = host if host not in ("0", "", "::") else "127.0.0.1"
        self.env = dict(os.environ)
        if home is not None:
            self.env["QMAILHOME"] = str(home)
        self.env.update(env or {})
        self._log = tempfile.TemporaryFile()
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.returncode: int | None = None

    def __enter__(self) -> "TCPServer":
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self._log, env=self.env)
        ready, _, _ = select.select([self.proc.stdout], [], [], WAIT)
        line = self.proc.stdout.readline() if ready else b""
        if not line.strip().isdigit():
            self.proc.kill()
            self.proc.wait(WAIT)
            raise RuntimeError(f"tcpserver did not start: {line!r} {self.log}")
        self.port = int(line)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> int:
        """SIGTERM; return the exit code."""
        if self.proc is not None and self.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            self.returncode = self.proc.wait(WAIT)
            self.proc.stdout.close()
        return self.returncode

    @property
    def log(self) -> str:
        """Everything it wrote on fd 2 so far."""
        # pread: the server writes through the same open file (shared offset), so
        # seeking it here would make its next line overwrite the start of the log.
        fd = self._log.fileno()
        size = os.fstat(fd).st_size
        return os.pread(fd, size, 0).decode("latin-1")

    def wait_log(self, text: str, count: int = 1) -> str:
        """Wait until ``text`` occurs ``count`` times in the log; return the log."""
        deadline = time.monotonic() + WAIT
        while self.log.count(text) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} x{count} never logged:\n{self.log}")
            time.sleep(0.01)
        return self.log


def connect(host: str, port: int) -> socket.socket:
    """A connected client socket with a timeout."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(WAIT)
    s.connect((host, port))
    return s


def read_all(s: socket.socket) -> bytes:
    """Read until the server closes."""
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return out
        out += chunk


def talk(host: str, port: int, data: bytes = b"") -> bytes:
    """Connect, send ``data``, half-close, read everything the server sends."""
    with connect(host, port) as s:
        if data:
            s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        return read_all(s)


def env_lines(output: bytes) -> dict[str, str]:
    """``env`` output → dict."""
    out = {}
    for line in output.decode("latin-1").splitlines():
        name, eq, value = line.partition("=")
        if eq:
            out[name] = value
    return out


def debian(name: str) -> str:
    """Debian's ucspi-tcp program (ours shadow the names on $PATH); skips or fails like need_program."""
    from conftest import need_program
    path = f"/usr/bin/{name}"
    if not os.path.exists(path):
        need_program(path)
    return path


def ipv6_loopback() -> bool:
    """True if ::1 can be bound here."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False
