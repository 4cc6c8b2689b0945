"""What one SMTP client may cost qmail-smtpd: recipients, errors, junk, AUTH failures, time.

Every limit is a control file (qpy.controlfiles; 0 = no limit) and is answered with
the reply the RFCs name for it:

- ``maxrcpt`` (the name of qmail's maxrcpt patch, $MAXRCPT overrides): a RCPT beyond it
  gets ``452 4.5.3`` (RFC 5321 §4.5.3.1.10, RFC 3463) and is not stored.  As many again
  are refused quietly (a client pipelining a long list, as Postfix's recipient
  overshoot allows); each one after that counts as an error.
- ``maxerrors``: every 4xx/5xx reply counts one (Postfix's smtpd_hard_error_limit, 20);
  at the limit the session ends with ``421 4.7.0 … closing connection`` (RFC 5321
  §3.8).  An accepted message starts the count afresh.
- ``maxjunk``: NOOP, RSET, VRFY and HELP beyond it count as errors (Postfix's
  smtpd_junk_command_limit, 100).
- ``maxauthfail`` and ``authfaildelay``: the n-th failed AUTH waits n times the delay
  before its 535; the last one allowed also ends the session with 421 4.7.0.
- ``timeoutsmtpd`` per read, ``timeoutsmtpdsession`` for the whole session, and
  ``mindatarate`` bytes a second in DATA after one timeoutsmtpd of grace (Postfix's
  smtpd_min_data_rate, 500): past a deadline ``421 4.4.2 … closing connection``.
- Stress (``QPYSTRESS=1``, set by qpy's tcpserver while its slots are nearly full,
  as Postfix's stress mode): the read timeout falls to a thirtieth, at most 10 s
  (Postfix's 300 s → 10 s), and the session deadline to a thirtieth, at most 60 s.

The HELO argument copied into the Received line is cut at 255 bytes (RFC 5321
§4.5.3.1.2, the longest domain); command lines are capped by qpy.smtpio.LINE_MAX.
"""
from __future__ import annotations

import os
import time

from qpy import control, scan

HELO_MAX = 255
STRESS_READ = 10
STRESS_SESSION = 60
JUNK = frozenset((b"noop", b"rset", b"vrfy", b"help"))

TOO_MANY_RCPTS = b"452 too many recipients (#4.5.3)"
TOO_MANY_ERRORS = b"421 too many errors, closing connection (#4.7.0)"
TOO_MANY_AUTH = b"421 too many authentication failures, closing connection (#4.7.0)"
TIMEOUTS = {
    "read": b"451 timeout (#4.4.2)",        # qmail's
    "session": b"421 session time limit exceeded, closing connection (#4.4.2)",
    "rate": b"421 data rate too low, closing connection (#4.4.2)",
}


class Limits:
    """One session's limits (control files and $QPYSTRESS) and its counts so far."""

    def __init__(self, env: os._Environ | dict) -> None:
        self.maxrcpt = control.read_int("maxrcpt")
        if env.get("MAXRCPT") is not None:
            self.maxrcpt = scan.ulong(env["MAXRCPT"])
        self.timeout = max(control.read_int("timeoutsmtpd"), 1)
        self.session = control.read_int("timeoutsmtpdsession")
        self.datarate = control.read_int("mindatarate")
        self.maxerrors = control.read_int("maxerrors")
        self.maxjunk = control.read_int("maxjunk")
        self.maxauthfail = control.read_int("maxauthfail")
        self.authdelay = control.read_int("authfaildelay")
        self.stress = env.get("QPYSTRESS") == "1"
        if self.stress:
            self.timeout = max(1, min(STRESS_READ, self.timeout // 30))
            self.session = max(1, min(STRESS_SESSION, (self.session or STRESS_SESSION * 30) // 30))
        self.deadline = time.monotonic() + self.session if self.session else None
        self.errors = self.junk = self.overshoot = self.authfails = 0

    def rcpt_full(self, accepted: int) -> bool:
        """True if a RCPT after ``accepted`` recipients gets TOO_MANY_RCPTS."""
        return bool(self.maxrcpt) and accepted >= self.maxrcpt

    def quiet_overshoot(self) -> bool:
        """Count one refused RCPT; True while it is within the overshoot allowed."""
        self.overshoot += 1
        return self.overshoot <= self.maxrcpt

    def command(self, verb: bytes) -> None:
        """Count a junk command; beyond maxjunk each is an error."""
        if verb in JUNK:
            self.junk += 1
            if self.maxjunk and self.junk > self.maxjunk:
                self.errors += 1

    def exhausted(self) -> bool:
        """True when the session has had its maxerrors errors."""
        return bool(self.maxerrors) and self.errors >= self.maxerrors

    def delivered(self) -> None:
        """A message was accepted: the client is sending mail, count afresh."""
        self.errors = self.junk = self.overshoot = 0

    def auth_failed(self) -> bool:
        """Count a failed AUTH and wait its delay; True if it was the last one allowed."""
        self.authfails += 1
        time.sleep(self.authdelay * self.authfails)
        return bool(self.maxauthfail) and self.authfails >= self.maxauthfail
