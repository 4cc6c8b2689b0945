"""qmail-smtpd's limits where they meet tcpserver, on loopback: stress mode and the TLS key.

qpy's tcpserver sets QPYSTRESS=1 for a connection accepted while three quarters of its
slots are busy, and qmail-smtpd then shortens its timeouts (qpy.smtplimits).  In
privileged mode tcpserver -u/-g makes qmail-smtpd qmaild before it starts, so qmaild
must be able to read control/servercert.pem, and nobody else (qpy.hier.PROVIDED).
"""
from __future__ import annotations

import os
import pwd
import smtplib
import ssl
import stat
import time
from pathlib import Path

import pytest

from conftest import control, run
from smtpdkit import CLEARED
from tcpserve import TCPServer, connect, debian

OPTS = ["-R", "-H", "-l", "mx.test.example"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in CLEARED:
        monkeypatch.delenv(name, raising=False)


def test_connection_accepted_under_stress_gets_short_timeouts(home):
    """-c 4: the 4th connection arrives with 3 slots busy, so QPYSTRESS=1 cuts its 30 s read
    timeout to 1 s; the first three keep the full timeout."""
    control(home, "timeoutsmtpd", "30\n")
    with TCPServer(home, [*OPTS, "-c", "4"], [str(home / "bin" / "qmail-smtpd")]) as srv:
        idle = [connect(srv.host, srv.port) for _ in range(3)]
        try:
            for s in idle:
                assert s.recv(512).startswith(b"220 ")
            with connect(srv.host, srv.port) as s:
                s.settimeout(15)            # half the unstressed timeout
                f = s.makefile("rb")
                assert f.readline().startswith(b"220 ")
                started = time.monotonic()
                assert f.readline() == b"451 timeout (#4.4.2)\r\n"       # said nothing
                assert time.monotonic() - started >= 1
            for s in idle:          # still served: not under stress when they came
                s.sendall(b"NOOP\r\n")
                assert s.recv(512) == b"250 ok\r\n"
        finally:
            for s in idle:
                s.close()
    assert "Traceback" not in srv.log


@pytest.mark.parametrize("which", ["qpy", "debian"])
def test_servercert_is_qmailds_alone_after_qpy_init(priv_home, certificate, which):
    """An administrator copies the key in as root, 0600; qpy init (or qpy install) hands it to
    qmaild, 0400, and STARTTLS works in a qmail-smtpd that tcpserver -u made qmaild."""
    cert = priv_home / "control" / "servercert.pem"
    cert.write_bytes(certificate)
    os.chmod(cert, 0o600)
    r = run(priv_home, "qpy", ["init", "--home", str(priv_home)])
    assert r.returncode == 0, r.stderr
    qmaild = pwd.getpwnam("qmaild")
    st = cert.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (qmaild.pw_uid, qmaild.pw_gid, 0o400)
    ids = ["-u", str(qmaild.pw_uid), "-g", str(qmaild.pw_gid)]
    binary = debian("tcpserver") if which == "debian" else None
    with TCPServer(priv_home, [*OPTS, *ids], [str(priv_home / "bin" / "qmail-smtpd")],
                   binary=binary) as srv:
        with smtplib.SMTP(srv.host, srv.port, timeout=30) as c:
            c.ehlo()
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            assert c.starttls(context=context)[0] == 220
            assert c.noop()[0] == 250
    assert "unable to load" not in srv.log and "Traceback" not in srv.log


def test_install_leaves_a_linked_servercert_alone(home, tmp_path, certificate):
    target = tmp_path / "combined.pem"
    target.write_bytes(certificate)
    os.chmod(target, 0o640)
    (home / "control" / "servercert.pem").symlink_to(target)
    r = run(home, "qpy", ["init", "--home", str(home), "--mode", "single-user"])
    assert r.returncode == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    target.unlink()
    (home / "control" / "servercert.pem").unlink()
    Path(home / "control" / "servercert.pem").write_bytes(certificate)
    run(home, "qpy", ["init", "--home", str(home), "--mode", "single-user"])
    assert stat.S_IMODE((home / "control" / "servercert.pem").stat().st_mode) == 0o400
