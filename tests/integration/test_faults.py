"""The fault campaign (bench/faults.py) and the fuzzers (bench/fuzz.py), in short.

test_crash.py kills qmail-start under a qmail-queue injector; this file runs the
campaign's own sections against real ``qpy run`` instances under SMTP load, small:
random SIGKILLs of single daemons (qmail-send, the spawners, qmail-clean, tcpserver,
sessions, delivery workers, the runner) and of the whole group, counted from the
Maildir (0 lost, 0 truncated, duplicates within qmail's bound, the queue empty after a
restart); as root, a full disk at the queue write and at the Maildir on tiny tmpfs
mounts (never a 250 for a message not on disk, nothing lost once space returns).  The
fuzz harnesses replay their seeds and every recorded finding (tests/data/fuzz/) without
atheris, and run a second per target when atheris is installed.  The full campaign is
``python3 bench/faults.py all``; the full fuzzing ``python3 bench/fuzz.py``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import faults     # noqa: E402  (bench/faults.py)

FUZZ = str(ROOT / "bench" / "fuzz.py")


def campaign(*argv: str) -> None:
    """Run one section of bench/faults.py; fail with the properties that failed."""
    faults.RESULTS.clear()
    code = faults.main(list(argv))
    failed = [f"{name}: {detail}" for name, ok, detail in faults.RESULTS if not ok]
    assert not failed and code == 0, "\n".join(failed)
    assert faults.RESULTS


@pytest.mark.slow
def test_random_sigkills_of_daemons_and_the_group_under_smtp_load():
    campaign("kill", "--kills", "12", "--sessions", "3", "--rate", "30", "--group", "0.35",
             "--gap", "0.3", "--timeout", "60", "--settle", "1", "--seed", "4242")


def can_mount() -> bool:
    if os.geteuid() != 0:
        return False
    point = tempfile.mkdtemp(prefix="qpy-mount-")
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", point],
                            capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", point], check=False)
        return ok
    finally:
        os.rmdir(point)


@pytest.mark.slow
def test_enospc_at_the_queue_write_and_at_the_maildir():
    if not can_mount():
        pytest.skip("needs root and tmpfs mounts")
    campaign("enospc", "--messages", "8", "--stages", "queue,maildir", "--full-wait", "1",
             "--alone", "0")


def test_fuzz_seeds_and_findings_replay_without_atheris():
    r = subprocess.run([sys.executable, FUZZ, "--replay-all"], capture_output=True, timeout=120)
    assert r.returncode == 0, (r.stdout + r.stderr).decode()[-3000:]


@pytest.mark.slow
def test_each_fuzz_target_runs_briefly_without_a_crash(tmp_path):
    pytest.importorskip("atheris")
    r = subprocess.run([sys.executable, FUZZ, "--seconds", "1", "--jobs", "3",
                        "--keep", str(tmp_path)], capture_output=True, timeout=300)
    out = r.stdout.decode()
    assert r.returncode == 0, out[-3000:] + r.stderr.decode()[-2000:]
    assert out.count("PASS: fuzz ") == len(faults_targets())


def faults_targets() -> list[str]:
    r = subprocess.run([sys.executable, FUZZ, "--list"], capture_output=True, check=True)
    return r.stdout.decode().split()
