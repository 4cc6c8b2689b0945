"""qmail-getpw: output format, passwd search, alias fallback, in both modes."""
from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

import pytest

from conftest import run
from localusers import home_user
from qpy import auto


@pytest.fixture(scope="module")
def real_user():
    """A passwd user whose home (0755) it owns, in a world-traversable temp dir."""
    with home_user("g") as pw:
        yield pw


def fields(out: bytes) -> list[bytes]:
    assert out.endswith(b"\0")
    return out[:-1].split(b"\0")


def as_qmailp(home: Path, local: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(home / "bin" / "qmail-getpw"), local], user=auto.QMAILP,
                          group=auto.GROUP_NOFILES, extra_groups=[], capture_output=True,
                          timeout=30, env=dict(os.environ, QMAILHOME=str(home)))


def test_no_argument(home):
    r = run(home, "qmail-getpw", [])
    assert (r.returncode, r.stdout) == (100, b"")


def test_single_user_unknown_local_is_the_alias_account(home):
    r = run(home, "qmail-getpw", ["Some-One"])
    me = pwd.getpwuid(os.getuid())
    assert r.returncode == 0
    assert fields(r.stdout) == [me.pw_name.encode(), b"%d" % me.pw_uid, b"%d" % os.getgid(),
                                str(home / "alias").encode(), b"-", b"Some-One"]


def test_single_user_mode_accepts_only_the_invoking_user(home, real_user):
    r = run(home, "qmail-getpw", [real_user.pw_name])
    assert fields(r.stdout)[4:] == [b"-", real_user.pw_name.encode()]   # root runs it: alias


def test_privileged_passwd_user_and_extension(priv_home, real_user):
    name = real_user.pw_name
    whole = [name.encode(), b"%d" % real_user.pw_uid, b"%d" % real_user.pw_gid,
             real_user.pw_dir.encode()]
    r = as_qmailp(priv_home, name.upper())
    assert (r.returncode, fields(r.stdout)) == (0, whole + [b"", b""])
    r = as_qmailp(priv_home, name + "-Ext-More")
    assert fields(r.stdout) == whole + [b"-", b"Ext-More"]
    r = as_qmailp(priv_home, name + "-")
    assert fields(r.stdout) == whole + [b"-", b""]


def test_privileged_fallbacks_to_alias(priv_home, real_user):
    alias = pwd.getpwnam(auto.ALIAS)
    head = [b"alias", b"%d" % alias.pw_uid, b"%d" % alias.pw_gid, str(priv_home / "alias").encode()]
    for local in ("nosuchuser-x", "root", "root-x", real_user.pw_name + "x", "a" * 40):
        r = as_qmailp(priv_home, local)
        assert (r.returncode, fields(r.stdout)) == (0, head + [b"-", local.encode()]), local


def test_privileged_home_owned_by_someone_else_is_not_a_user(priv_home, real_user):
    os.chown(real_user.pw_dir, 0, 0)
    try:
        r = as_qmailp(priv_home, real_user.pw_name)
        assert fields(r.stdout)[0] == b"alias"
    finally:
        os.chown(real_user.pw_dir, real_user.pw_uid, real_user.pw_gid)
