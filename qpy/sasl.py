"""SMTP AUTH's SASL side: PLAIN (RFC 4616) and LOGIN answers, and the log line of an attempt.

``credentials()`` reads what a client sends after ``AUTH PLAIN`` or ``AUTH LOGIN``,
sending the 334 challenges itself, and returns the user and password that
qpy.checkpassword then checks.  The password never leaves this exchange: the
log line names the client's address and the user, escaped, and nothing else.
"""
from __future__ import annotations

import binascii

from qpy import received
from qpy.smtpio import Connection, LineTooLong

AUTH_MAX = 1024         # user + password bytes handed to checkpassword
LINE_MAX = 4096         # one base64 answer to a 334
LOG_USER_MAX = 128      # bytes of a user name in a log line


class Cancelled(Exception):
    """The client answered a 334 with ``*``."""


def decode(text: bytes) -> bytes:
    """Decode one SASL answer (``=`` alone is the empty string); ValueError if malformed."""
    if text == b"=":
        return b""
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except binascii.Error as e:
        raise ValueError(str(e)) from e


def challenge(conn: Connection, text: bytes) -> bytes:
    """Send ``334 text``, return the client's answer; Cancelled on ``*``, ValueError if too long."""
    conn.put(b"334 " + text + b"\r\n")
    try:
        line = conn.line(LINE_MAX)
    except LineTooLong as e:
        if e.partial:
            conn.skip_line()
        raise ValueError("answer too long")
    if line.endswith(b"\r"):
        line = line[:-1]
    if line == b"*":
        raise Cancelled()
    return line


def credentials(conn: Connection, mechanism: bytes, initial: bytes) -> tuple[bytes, bytes] | None:
    """(user, password) from a PLAIN or LOGIN exchange; None for any other mechanism.

    Raises Cancelled, or ValueError for malformed answers.
    """
    if mechanism == b"PLAIN":
        fields = decode(initial if initial else challenge(conn, b"")).split(b"\0")
        if len(fields) != 3:
            raise ValueError("PLAIN wants authzid NUL user NUL password")
        return fields[1], fields[2]
    if mechanism == b"LOGIN":
        user = decode(initial if initial else challenge(conn, b"VXNlcm5hbWU6"))
        return user, decode(challenge(conn, b"UGFzc3dvcmQ6"))
    return None


def acceptable(user: bytes, password: bytes) -> bool:
    """Worth asking checkpassword: a user, no NUL, at most AUTH_MAX bytes in all."""
    return bool(user) and len(user) + len(password) <= AUTH_MAX and b"\0" not in user + password


def log_line(outcome: str, remoteip: bytes, user: bytes, mechanism: bytes) -> str:
    """``auth <outcome> <ip> user <user> mechanism <name>``, every unsafe byte a ``?``."""
    name = received.safe(user[:LOG_USER_MAX]).decode("ascii")
    return (f"auth {outcome} {received.safe(remoteip).decode('ascii')} user {name}"
            f" mechanism {received.safe(mechanism[:20]).decode('ascii')}")
