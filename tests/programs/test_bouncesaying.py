"""bouncesaying: bounce text and exit 100, unless its program says otherwise."""
from __future__ import annotations

import subprocess


def test_plain_bounce(home):
    r = subprocess.run([str(home / "bin" / "bouncesaying"), "This address no longer accepts mail."],
                       input=b"", capture_output=True, timeout=60)
    assert (r.returncode, r.stderr) == (100, b"This address no longer accepts mail.\n")


def test_program_decides(home):
    bs = str(home / "bin" / "bouncesaying")
    r = subprocess.run([bs, "No spam.", "grep", "-q", "SPAM"], input=b"Subject: SPAM\n\n",
                       capture_output=True, timeout=60)
    assert (r.returncode, r.stderr) == (100, b"No spam.\n")
    r = subprocess.run([bs, "No spam.", "grep", "-q", "SPAM"], input=b"Subject: ham\n\n",
                       capture_output=True, timeout=60)
    assert (r.returncode, r.stderr) == (0, b"")
    r = subprocess.run([bs, "No spam.", "sh", "-c", "exit 111"], input=b"", capture_output=True,
                       timeout=60)
    assert (r.returncode, r.stderr) == (111, b"bouncesaying: fatal: temporary child error\n")


def test_usage(home):
    r = subprocess.run([str(home / "bin" / "bouncesaying")], capture_output=True, timeout=60)
    assert r.returncode == 100 and r.stderr.startswith(b"bouncesaying: usage:")
