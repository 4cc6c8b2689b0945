"""qpy.rcptcheck: RCPT-time validation against users/cdb, passwd and the alias account's files."""
from __future__ import annotations

import os

import subprocess
from pathlib import Path

import pytest

from conftest import control, run
from localusers import home_user
from qpy import rcptcheck


def write(path: Path, text: str = "./Maildir/\n") -> None:
    path.write_text(text)
    path.chmod(0o644)


@pytest.fixture
def site(home, tmp_path):
    """locals test.example, a virtual domain, alias files and two users/cdb entries."""
    control(home, "locals", "test.example\nother.example\n")
    control(home, "virtualdomains", "virt.example:v\nexcept.virt.example:\n")
    alias = home / "alias"
    write(alias / ".qmail-joe")
    write(alias / ".qmail-list-default")
    write(alias / ".qmail-v-bob")
    lists = tmp_path / "lists"
    lists.mkdir()
    write(lists / ".qmail-pre-foo")
    (home / "users" / "assign").write_text(
        f"=kim:kim:1:1:{tmp_path / 'nowhere'}:::\n"
        f"+mlist-:lists:1:1:{lists}:-:pre-:\n"
        f"+gone-:gone:1:1:{tmp_path / 'nowhere'}:-::\n.\n")
    assert run(home, "qmail-newu").returncode == 0
    return home


@pytest.mark.parametrize("address,ok", [
    (b"joe@test.example", True), (b"JOE@Test.Example", True), (b"joe@other.example", True),
    (b"nobody@test.example", False), (b"joe-x@test.example", False),
    (b"list-anything@test.example", True), (b"list-a-b@test.example", True),
    (b"list@test.example", False),
    (b"postmaster@test.example", True), (b"PostMaster@other.example", True),
    (b"postmaster@virt.example", True),
    (b"bob@virt.example", True), (b"carol@virt.example", False),
    (b"anyone@except.virt.example", True),            # virtualdomains exception: remote
    (b"someone@elsewhere.example", True),             # remote: not ours to judge
    (b"@test.example", True),                         # empty local part: lspawn succeeds
    (b"joe", True), (b"nobody", False),               # envnoathost = me = test.example
    (b"kim@test.example", True),                      # users/cdb exact: defaultdelivery
    (b"mlist-foo@test.example", True), (b"mlist-bar@test.example", False),
    (b"gone-x@test.example", True),                   # home missing: qmail-local would defer
])
def test_check(site, address, ok):
    assert rcptcheck.RecipientCheck.from_control().check(address) is ok


def test_enabled(home):
    assert rcptcheck.enabled()                      # new instances check recipients
    os.unlink(home / "control" / "rcptcheck")
    assert not rcptcheck.enabled()                  # qmail's behaviour without the file
    control(home, "rcptcheck", "1\n")
    assert rcptcheck.RecipientCheck.enabled()
    control(home, "rcptcheck", "0\n")
    assert not rcptcheck.enabled()


def test_unreadable_users_cdb_accepts(site):
    (site / "users" / "cdb").write_bytes(b"junk")
    assert rcptcheck.RecipientCheck.from_control().check(b"nobody@test.example")


def test_same_answer_as_delivery(site):
    """What the check refuses, qmail-local bounces; what it accepts, qmail-local takes."""
    checker = rcptcheck.RecipientCheck.from_control()
    alias = site / "alias"
    for local, expect in ((b"joe", 0), (b"list-x", 0), (b"nobody", 100)):
        msg = site.parent / "msg"
        msg.write_bytes(b"Subject: x\n\n")
        with open(msg, "rb") as f:
            r = subprocess.run([str(site / "bin" / "qmail-local"), "-n", "--", "alias", str(alias),
                                local.decode(), "-", local.decode(), "test.example", "", "./Maildir/"],
                               stdin=f, capture_output=True, timeout=30)
        assert r.returncode == expect
        assert checker.check(local + b"@test.example") is (expect == 0)


@pytest.fixture
def real_user():
    with home_user("r") as pw:
        yield pw


def test_privileged_passwd_users(priv_home, real_user):
    control(priv_home, "locals", "test.example\n")
    checker = rcptcheck.RecipientCheck.from_control()
    assert checker.priv
    name = real_user.pw_name.encode()
    assert checker.check(name + b"@test.example")
    assert not checker.check(name + b"-ext@test.example")
    write(Path(real_user.pw_dir) / ".qmail-ext")
    assert checker.check(name + b"-ext@test.example")
    assert not checker.check(b"root@test.example")        # uid 0 is never a mailbox owner
    write(priv_home / "alias" / ".qmail-root")
    assert checker.check(b"root@test.example")
