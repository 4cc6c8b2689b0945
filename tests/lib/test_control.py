"""Control files are read as qmail's control.c reads them."""
from __future__ import annotations

import os

import pytest

from conftest import control, need_root
from qpy import control as ctl
from qpy.errors import ControlError


def test_missing_means_the_declared_default(home):
    os.unlink(home / "control" / "concurrencylocal")
    os.unlink(home / "control" / "rcptcheck")       # a new instance writes 1 (controlfiles.initial)
    assert ctl.read_int("concurrencylocal") == 10
    assert ctl.read_int("rcptcheck") == 0
    assert ctl.read_line("bouncefrom") == b"MAILER-DAEMON"
    assert ctl.read_line("checkpassword") is None
    assert ctl.read_list("badmailfrom") is None
    assert ctl.read_map("smtproutes") is None


def test_default_me_list_and_host(home):
    control(home, "me", "m.test\n")
    os.unlink(home / "control" / "locals")
    assert ctl.read_list("locals") == [b"m.test"]
    control(home, "envnoathost", "")
    assert ctl.read_line_me("envnoathost") == b""
    assert ctl.read_host("envnoathost") == b"envnoathost"  # empty means the literal
    os.unlink(home / "control" / "envnoathost")
    assert ctl.read_host("envnoathost") == b"m.test"
    os.unlink(home / "control" / "me")
    assert ctl.read_list("locals") is None
    assert ctl.read_host("envnoathost") == b"envnoathost"


def test_undeclared_name_is_a_programming_error(home):
    with pytest.raises(KeyError):
        ctl.read_list("nosuch")
    with pytest.raises(KeyError):
        ctl.read_int("nosuch")


def test_line_int_list_rules(home):
    control(home, "me", "host.test \t\nsecond\n")
    control(home, "timeoutsmtpd", "42abc\n")
    control(home, "databytes", "x42\n")
    control(home, "rcpthosts", "# comment\n\nA.test  \n.sub.test\n")
    assert ctl.read_line("me") == b"host.test"
    assert ctl.read_int("timeoutsmtpd") == 42
    assert ctl.read_int("databytes") == 0  # not a digit: default kept
    assert ctl.read_list("rcpthosts") == [b"A.test", b".sub.test"]
    hosts = ctl.DomainSet(ctl.read_list("rcpthosts"))
    assert hosts.matches_suffix(b"a.TEST") and hosts.matches_suffix(b"x.y.sub.test")
    assert not hosts.matches_suffix(b"sub.test")


def test_default_me(home):
    control(home, "me", "m.test\n")
    assert ctl.read_line_me("bouncehost") == b"m.test"
    os.unlink(home / "control" / "me")
    assert ctl.read_line_me("bouncehost") == b"bouncehost"
    assert ctl.read_line_me("helohost") is None


def test_map_last_duplicate_wins(home):
    control(home, "virtualdomains", "v.test:one\nV.TEST:two\n")
    assert ctl.read_map("virtualdomains") == {b"v.test": b"two"}


def test_unreadable_file_is_a_temporary_failure(home):
    os.mkdir(home / "control" / "badmailfrom")  # reading a directory fails
    with pytest.raises(ControlError) as e:
        ctl.read_list("badmailfrom")
    assert e.value.exit_code == 111 and "(#4.3.0)" in e.value.text
