"""qpy.sasl: PLAIN and LOGIN answers over a real pipe, and the log line."""
from __future__ import annotations

import base64
import os

import pytest

from qpy import sasl
from qpy.smtpio import Connection


def conn_with(data: bytes) -> tuple[Connection, int]:
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    out_r, out_w = os.pipe()
    return Connection(r, out_w, timeout=5), out_r


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def test_plain_initial_and_challenged_and_login():
    conn, _ = conn_with(b"")
    assert sasl.credentials(conn, b"PLAIN", b64(b"authz\0alice\0secret")) == (b"alice", b"secret")
    conn, out = conn_with(b64(b"\0bob\0pw") + b"\r\n")
    assert sasl.credentials(conn, b"PLAIN", b"") == (b"bob", b"pw")
    conn, out = conn_with(b64(b"carol") + b"\r\n" + b64(b"pw2") + b"\r\n")
    assert sasl.credentials(conn, b"LOGIN", b"") == (b"carol", b"pw2")
    conn.flush()
    assert os.read(out, 100) == b"334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n"
    assert sasl.credentials(conn, b"CRAM-MD5", b"") is None


def test_cancel_malformed_and_too_long():
    conn, _ = conn_with(b"*\r\n")
    with pytest.raises(sasl.Cancelled):
        sasl.credentials(conn, b"LOGIN", b"")
    conn, _ = conn_with(b"")
    with pytest.raises(ValueError):
        sasl.credentials(conn, b"PLAIN", b"!!")
    with pytest.raises(ValueError):
        sasl.credentials(conn, b"PLAIN", b64(b"only\0two"))
    conn, _ = conn_with(b"A" * 5000 + b"\r\nnext\r\n")
    with pytest.raises(ValueError):
        sasl.credentials(conn, b"PLAIN", b"")
    assert conn.line() == b"next\r"            # the rest of the long answer was skipped
    assert sasl.decode(b"=") == b""


def test_acceptable_and_log_line():
    assert sasl.acceptable(b"u", b"p") and not sasl.acceptable(b"", b"p")
    assert not sasl.acceptable(b"u", b"p" * 1024) and not sasl.acceptable(b"u\0", b"p")
    line = sasl.log_line("failed", b"192.0.2.7", b"ev il\n" + b"x" * 500, b"PLAIN")
    assert line == "auth failed 192.0.2.7 user ev?il?" + "x" * 122 + " mechanism PLAIN"
