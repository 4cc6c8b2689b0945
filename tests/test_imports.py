"""Plumbing programs start per connection, message or delivery: their imports stay small.

Each module is imported in a fresh isolated interpreter; the heavy packages a
human tool may use (click, email, asyncio) and the ones that only some code paths
need (dnspython, ssl) must not be pulled in at import time.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

PLUMBING = ["qmail_queue", "qmail_send", "qmail_clean", "qmail_lspawn", "qmail_rspawn",
            "qmail_local", "qmail_remote", "qmail_smtpd", "qmail_getpw", "qmail_start",
            "qmail_queued", "qmail_pickup", "qmail_qmqpd", "qmail_qmtpd", "tcpserver",
            "rblsmtpd", "forward", "preline", "condredirect", "bouncesaying", "except_"]
HEAVY = ("click", "email", "asyncio", "dns", "ssl", "http", "xml", "json")
NEEDS = {"rblsmtpd": {"dns", "email", "ssl"}}  # every run makes a DNS lookup (dnspython and what it loads); tcpserver preloads it


@pytest.mark.parametrize("module", PLUMBING)
def test_plumbing_imports_are_small(module):
    code = (f"import sys; import qpy.programs.{module}; "
            f"print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))")
    r = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    extra = set(r.stdout.decode().split()) - NEEDS.get(module, set())
    assert not extra, f"{module} imports {sorted(extra)}"
