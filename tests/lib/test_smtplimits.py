"""qpy.smtplimits: the limits read from control files, stress mode, the counts."""
from __future__ import annotations

import time

from conftest import control
from qpy.smtplimits import Limits


def test_defaults_and_stress_mode(home):
    for name in ("timeoutsmtpd", "maxrcpt"):
        (home / "control" / name).unlink()
    limits = Limits({})
    assert (limits.timeout, limits.session, limits.datarate) == (1200, 1800, 500)
    assert (limits.maxrcpt, limits.maxerrors, limits.maxjunk) == (0, 20, 100)
    assert (limits.maxauthfail, limits.authdelay, limits.stress) == (3, 2, False)
    assert limits.deadline is not None and limits.deadline - time.monotonic() <= 1800
    stressed = Limits({"QPYSTRESS": "1"})
    assert (stressed.timeout, stressed.session) == (10, 60)          # Postfix's 10 s
    control(home, "timeoutsmtpd", "30\n")
    control(home, "timeoutsmtpdsession", "0\n")
    stressed = Limits({"QPYSTRESS": "1"})
    assert (stressed.timeout, stressed.session) == (1, 60)           # a thirtieth, at least 1 s
    assert Limits({}).deadline is None
    assert Limits({"QPYSTRESS": "yes"}).stress is False


def test_recipients_errors_and_junk(home):
    control(home, "maxrcpt", "2\n")
    control(home, "maxjunk", "1\n")
    control(home, "maxerrors", "3\n")
    limits = Limits({"MAXRCPT": "3"})
    assert not limits.rcpt_full(2) and limits.rcpt_full(3)
    assert [limits.quiet_overshoot() for _ in range(4)] == [True, True, True, False]
    limits.command(b"noop")
    limits.command(b"mail")
    assert limits.errors == 0
    limits.command(b"rset")
    limits.command(b"help")
    assert limits.errors == 2 and not limits.exhausted()
    limits.errors += 1
    assert limits.exhausted()
    limits.delivered()
    assert (limits.errors, limits.junk, limits.overshoot) == (0, 0, 0)


def test_auth_failures_wait_longer_each_time(home):
    control(home, "authfaildelay", "0\n")
    control(home, "maxauthfail", "2\n")
    limits = Limits({})
    assert limits.auth_failed() is False and limits.auth_failed() is True
    control(home, "maxauthfail", "0\n")
    limits = Limits({})
    assert not any(limits.auth_failed() for _ in range(10))
