"""splogger: line splitting/priorities, and a real run against a syslog socket bound in a test.

glibc's syslog always writes to /dev/log, so the real run happens in a private mount
namespace (as root) where a tmpfs covers /dev and our socket is bind-mounted at /dev/log.
"""
from __future__ import annotations

import re
import shutil
import socket
import subprocess

import pytest

from conftest import need_root
from qpy.programs.splogger import ALERT, INFO, WARNING, Splitter


def test_priorities_stamps_and_blank_lines():
    stamps = iter(["1.000001", "2.000002", "3.000003"])
    s = Splitter(clock=lambda: next(stamps))
    out = s.feed(b"status: ok\n\nwarning: hmm\nalert: oh no! lost spawn connection\n")
    assert out == [(INFO, "1.000001 status: ok"), (WARNING, "2.000002 warning: hmm"),
                   (ALERT, "3.000003 alert: oh no! lost spawn connection")]


def test_unprintables_long_lines_and_partial_input():
    s = Splitter(clock=lambda: "9.000000")
    assert s.feed(b"warning: \x00\xff\t") == []
    long = b"w" * 1700
    out = s.feed(long + b"\n")
    assert out[0] == (WARNING, "9.000000 warning: ???" + "w" * 787)
    assert out[1] == (WARNING, "9.000000+" + "w" * 799)
    assert out[2] == (WARNING, "9.000000+" + "w" * 114)
    assert s.feed(b"tail") == [] and s.end() == [(INFO, "9.000000 tail")]


def test_real_syslog_socket(tmp_path):
    need_root()
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) missing")
    sock_path = tmp_path / "log"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(30)
    from conftest import ROOT
    script = ('mount -t tmpfs none /dev && touch /dev/log && mount --bind "$1" /dev/log'
              ' && shift && exec "$@"')
    r = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(sock_path),
                        str(ROOT / "bin" / "splogger"), "qmail", "3"],
                       input=b"new msg 123\nwarning: trouble\x07\nalert: cannot start\n",
                       capture_output=True, timeout=60)
    if r.returncode and b"mount" in r.stderr:
        pytest.skip("no mount namespaces here: " + r.stderr.decode())
    assert r.returncode == 0, r.stderr
    got = [sock.recv(4096) for _ in range(3)]
    sock.close()
    pattern = rb"<(\d+)>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d qmail: \d+\.\d{6} (.*)"
    parsed = [re.fullmatch(pattern, g) for g in got]
    assert all(parsed), got
    assert [(int(m.group(1)), m.group(2)) for m in parsed] == [
        (3 * 8 + 6, b"new msg 123"), (3 * 8 + 4, b"warning: trouble?"),
        (3 * 8 + 1, b"alert: cannot start")]
