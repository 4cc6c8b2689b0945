"""Shared fixtures: a temporary instance, program runners, account helpers.

``home`` builds a single-user instance with the real installer (qpy.hier) in a
temporary directory and points QMAILHOME at it, for in-process calls and for
subprocesses alike.  ``run`` executes an instance's bin/ program as a real
subprocess on real pipes.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qpy import hier

ROOT = Path(__file__).resolve().parent.parent


def need_root() -> None:
    """Skip unless running as root (CI runs as root, so CI never skips)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")


def need_program(name: str) -> str:
    """Return the path of a Debian-provided program, or skip (``.ci/run`` installs it)."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}", f"/usr/lib/postfix/sbin/{name}")
         if os.path.exists(p)), None)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing in CI: .ci/run must install it")
        pytest.skip(f"{name} not installed")
    return path


def make_instance(path: Path, me: bytes = b"test.example", priv: bool = False) -> Path:
    """Create an instance at ``path`` with the real installer."""
    hier.install(str(path), me, priv)
    return path


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> bytes:
    """A self-signed certificate and its key in one PEM (control/servercert.pem's format)."""
    openssl = need_program("openssl")
    d = tmp_path_factory.mktemp("cert")
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(d / "key.pem"),
                    "-out", str(d / "cert.pem"), "-days", "2", "-subj", "/CN=mx.test.example"],
                   check=True, capture_output=True, timeout=60)
    return (d / "cert.pem").read_bytes() + (d / "key.pem").read_bytes()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh single-user instance; QMAILHOME points at it."""
    h = make_instance(tmp_path / "qmail")
    monkeypatch.setenv("QMAILHOME", str(h))
    monkeypatch.delenv("QMAILQUEUE", raising=False)
    monkeypatch.delenv("QPY_EXEC", raising=False)
    return h


def run(home: Path, program: str, args: list[str] | None = None, input: bytes = b"",
        env: dict[str, str] | None = None, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """Run ``home/bin/<program>`` as a subprocess; returns the CompletedProcess."""
    full_env = dict(os.environ, QMAILHOME=str(home))
    full_env.update(env or {})
    return subprocess.run([str(home / "bin" / program), *(args or [])], input=input,
                          capture_output=True, env=full_env, timeout=timeout, **kw)


def control(home: Path, name: str, text: str | bytes) -> None:
    """Write control/<name>."""
    data = text.encode() if isinstance(text, str) else text
    (home / "control" / name).write_bytes(data)


def unsrs(address: bytes) -> bytes:
    """What the SRS0 address ``address`` of the $QMAILHOME instance stands for (a forward's
    sender: new instances rewrite senders outside their domains, qpy.srs); asserts it is one."""
    from qpy import srs
    assert address.upper().startswith(b"SRS0=") and address.endswith(b"@test.example"), address
    original = srs.reverse_recipient(address)
    assert original != address, address
    return original


def python() -> str:
    """The interpreter tests should use for subprocesses."""
    return sys.executable


def ensure_qmail_accounts() -> None:
    """As root, create qmail's groups and accounts if missing (qpy.accounts, as qpy install does)."""
    need_root()
    from qpy import accounts
    accounts.ensure()


@pytest.fixture(scope="session")
def qmail_accounts() -> None:
    """The qmail accounts exist (created as root); skips when not root."""
    ensure_qmail_accounts()


@pytest.fixture
def priv_home(monkeypatch: pytest.MonkeyPatch, qmail_accounts: None):
    """A fresh privileged-mode instance (root only); QMAILHOME points at it.

    It lives under a world-traversable temporary directory (pytest's own is 0700),
    so the qmail accounts can reach it.
    """
    import tempfile
    base = Path(tempfile.mkdtemp(prefix="qpy-priv-"))
    os.chmod(base, 0o755)
    h = make_instance(base / "qmail", priv=True)
    monkeypatch.setenv("QMAILHOME", str(h))
    monkeypatch.delenv("QMAILQUEUE", raising=False)
    monkeypatch.delenv("QPY_EXEC", raising=False)
    yield h
    shutil.rmtree(base, ignore_errors=True)
