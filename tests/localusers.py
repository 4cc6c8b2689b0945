"""Ordinary local accounts for privileged-mode tests, and programs run as them.

``ensure_user(name)`` creates a plain login-less account (as root); ``nobody``
always exists.  ``home_user(tag)`` is a new account with its own home in a temp
directory, removed again afterwards.  ``submit(home, user, message, envelope)`` runs the instance's
bin/qmail-queue as that account (a subprocess that drops to it before exec,
as a shell would run it), with the message on fd 0 and the envelope on fd 1.
"""
from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

from conftest import need_root

SECOND_USER = "qpytestuser"


def ensure_user(name: str) -> pwd.struct_passwd:
    """The passwd entry of ``name``, creating an ordinary account if it is missing."""
    need_root()
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", name], check=True,
                       capture_output=True)
        return pwd.getpwnam(name)


@contextlib.contextmanager
def home_user(tag: str, maildir: bool = False) -> Iterator[pwd.struct_passwd]:
    """A new account owning its home (0755) in a world-traversable temp dir; gone afterwards.

    ``tag`` keeps the names of different test modules apart; with ``maildir`` the home
    holds the account's own Maildir/{tmp,new,cur}.
    """
    need_root()
    base = Path(tempfile.mkdtemp(prefix=f"qpy-user-{tag}-"))
    base.chmod(0o755)
    name = f"qpy{tag}{os.getpid() % 100000}"
    homedir = base / name
    subprocess.run(["useradd", "-M", "-d", str(homedir), "-s", "/usr/sbin/nologin", name],
                   check=True, timeout=30)
    try:
        pw = pwd.getpwnam(name)
        homedir.mkdir()
        if maildir:
            for sub in ("tmp", "new", "cur"):
                (homedir / "Maildir" / sub).mkdir(parents=True)
        for path in (homedir, *homedir.rglob("*")):
            os.chown(path, pw.pw_uid, pw.pw_gid)
        homedir.chmod(0o755)
        yield pw
    finally:
        subprocess.run(["userdel", name], timeout=30)
        shutil.rmtree(base, ignore_errors=True)


def become(name: str) -> Callable[[], None]:
    """A preexec_fn that turns the child into ``name`` (no supplementary groups)."""
    pw = pwd.getpwnam(name)

    def drop() -> None:
        os.setgroups([])
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
    return drop


def submit(home: Path, user: str, message: bytes, envelope: bytes,
           env: dict[str, str] | None = None) -> tuple[int, int, bytes]:
    """Run home/bin/qmail-queue as ``user``; return (exit code, its pid, stderr)."""
    env_r, env_w = os.pipe()
    full = dict(os.environ, QMAILHOME=str(home))
    full.update(env or {})
    proc = subprocess.Popen([str(home / "bin" / "qmail-queue")], stdin=subprocess.PIPE, stdout=env_r,
                            stderr=subprocess.PIPE, env=full, cwd="/", preexec_fn=become(user))
    os.close(env_r)

    def feed() -> None:
        try:
            os.write(env_w, envelope)
        except OSError:
            pass
        os.close(env_w)
    t = threading.Thread(target=feed)
    t.start()
    try:
        proc.stdin.write(message)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    t.join(30)
    proc.wait(60)
    return proc.returncode, proc.pid, proc.stderr.read()


def start_service(home: Path, *args: str) -> subprocess.Popen:
    """Start home/bin/qmail-queued (as root it becomes qmailq); wait for its socket."""
    proc = subprocess.Popen([str(home / "bin" / "qmail-queued"), *args], stderr=subprocess.PIPE,
                            env=dict(os.environ, QMAILHOME=str(home)))
    assert wait_for(lambda: (home / "public" / "qmail-queued").exists() or proc.poll() is not None)
    assert proc.poll() is None, proc.stderr.read()
    return proc


def stop(proc: subprocess.Popen) -> bytes:
    """Stop a service with SIGTERM; its stderr."""
    proc.terminate()
    proc.wait(30)
    return proc.stderr.read()


def python_as(user: str, code: str, *args: str, **kw) -> tuple[list[str], dict]:
    """argv and Popen keywords to run a Python snippet as ``user`` (isolated: no qpy needed)."""
    return [sys.executable, "-I", "-c", code, *args], dict(cwd="/", preexec_fn=become(user), **kw)


def run_python(user: str, code: str, *args: str, input: bytes = b"",
               timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a Python snippet as ``user``; returns the CompletedProcess."""
    argv, kw = python_as(user, code, *args)
    return subprocess.run(argv, input=input, capture_output=True, timeout=timeout, **kw)


def wait_for(check: Callable[[], bool], timeout: float = 30) -> bool:
    """Poll ``check`` until it is true or ``timeout`` seconds have passed."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.02)
    return check()


def uid_of_process(pid: int) -> int:
    """The real uid of a running process (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise LookupError(pid)
