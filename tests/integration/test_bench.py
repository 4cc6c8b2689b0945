"""The benchmark tools in bench/ (issue 6): they must measure what they say they measure.

bench/smtpload.py runs against a real ``qpy run`` instance on loopback: every message
it counts as accepted is in the Maildir, with its own X-Bench-Id, and a load the server
refuses is counted as failed, not accepted.  bench/run.py, the one command the README
gives, runs end to end at a small scale (with Postfix beside qpy when root and Postfix
are there, as in CI) and leaves nothing behind in the directory given with --dir.
"""
from __future__ import annotations

import json
import mailbox
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import run as bench      # noqa: E402  (bench/run.py)

SMTPLOAD = str(ROOT / "bench" / "smtpload.py")


@pytest.fixture
def qpy_server(tmp_path: Path):
    server = bench.Qpy(tmp_path)
    server.start()
    yield server
    server.stop()


def smtpload(server, n: int, sessions: int, rcpt: str, maildir: bool = True) -> dict:
    args = [sys.executable, SMTPLOAD, "--port", str(server.port), "-n", str(n), "-s", "2000",
            "-c", str(sessions), "--rcpt", rcpt, "--timeout", "60"]
    if maildir:
        args += ["--maildir", str(server.maildir)]
    r = subprocess.run(args, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


def test_smtpload_counts_what_reached_the_maildir(qpy_server) -> None:
    result = smtpload(qpy_server, 25, 4, qpy_server.rcpt)
    assert (result["accepted"], result["failed"], result["delivered"]) == (25, 0, 25)
    assert result["end_to_end_rate"] > 0 and result["latency_ms_p50"] >= 0
    ids = []
    for msg in mailbox.Maildir(str(qpy_server.maildir), factory=None):
        ids.append(int(msg["X-Bench-Id"]))
        body = msg.get_payload(decode=False)
        assert len(body) >= 2000 - 200          # about -s bytes, headers aside
        assert set(body.split("\n")[:-1]) == {"abcdefghijklmnopqrstuvwxyz0123456789 " * 2}
    assert sorted(ids) == list(range(25))


def test_smtpload_counts_refusals_as_failed(qpy_server) -> None:
    # Not a local domain and no relay client: every RCPT is refused, nothing is queued.
    result = smtpload(qpy_server, 6, 2, "someone@elsewhere.example", maildir=False)
    assert (result["accepted"], result["failed"]) == (0, 6)
    assert not os.listdir(qpy_server.maildir / "new")


@pytest.fixture
def scratch():
    """A directory in /tmp that Postfix's accounts can reach (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="qpy-test-bench-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_run_py_end_to_end_small(scratch: Path) -> None:
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "-n", "20", "--sessions", "2",
                        "--prefill", "40", "--queue-only", "10", "--dir", str(scratch)],
                       capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    out = r.stdout.decode()
    report = json.loads(out[out.index("\n{") + 1:])
    row = report["smtp_2_sessions"]
    q = row["qpy"]
    assert (q["accepted"], q["delivered"], q["failed"]) == (20, 20, 0)
    assert q["cpu_ms_per_msg"] > 0 and q["idle_session_kb"]["rss_kb"] > 0
    assert set(report["queue_only_per_s"]) == {"direct", "warm", "exec"}
    assert report["delivery_only_40"]["messages"] == 40
    assert re.search(r"^  2 sessions  qpy: accept [\d.]+/s", out, re.M)
    if os.geteuid() == 0 and shutil.which("postfix"):
        p = row["postfix"]
        assert (p["accepted"], p["delivered"]) == (20, 20)
        assert re.search(r"ratio accept [\d.]+x, end-to-end [\d.]+x", out)
    assert os.listdir(scratch) == []            # every scratch directory removed at the end
