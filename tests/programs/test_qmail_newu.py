"""qmail-newu: users/assign → users/cdb in qmail-newu's exact record format."""
from __future__ import annotations

import subprocess

from conftest import need_program, run
from qpy import cdb, users

ASSIGN = (b"=joe:joe:1001:100:/home/joe:::\n"
          b"=Joe.Ext:joe:1001:100:/home/joe:-:ext:\n"
          b"+list-:lists:1002:100:/var/lists:-::\n"
          b"+box:boxes:1003:100:/var/boxes:-:b-:\n"
          b"+:alias:7790:2108:/var/qmail/alias:-::\n"
          b".\n")


def test_records_are_qmail_newu_format(home):
    (home / "users" / "assign").write_bytes(ASSIGN)
    r = run(home, "qmail-newu")
    assert (r.returncode, r.stderr) == (0, b"")
    with cdb.Table(str(home / "users" / "cdb")) as t:
        assert t.items() == [
            (b"!joe\0", b"joe\x001001\x00100\x00/home/joe\x00\x00"),
            (b"!joe.ext\0", b"joe\x001001\x00100\x00/home/joe\x00-\x00ext"),
            (b"!list-", b"lists\x001002\x00100\x00/var/lists\x00-\x00"),
            (b"!box", b"boxes\x001003\x00100\x00/var/boxes\x00-\x00b-"),
            (b"!", b"alias\x007790\x002108\x00/var/qmail/alias\x00-\x00"),
            (b"", b"-x"),
        ]


def test_tinycdb_reads_users_cdb(home):
    tool = need_program("cdb")
    (home / "users" / "assign").write_bytes(ASSIGN)
    assert run(home, "qmail-newu").returncode == 0
    out = subprocess.run([tool, "-q", str(home / "users" / "cdb"), "!list-"], capture_output=True).stdout
    assert out == b"lists\x001002\x00100\x00/var/lists\x00-\x00"


def test_lookup_exact_and_wildcard(home):
    (home / "users" / "assign").write_bytes(ASSIGN)
    assert run(home, "qmail-newu").returncode == 0
    joe = users.lookup(b"JOE")
    assert (joe.user, joe.uid, joe.home, joe.dash, joe.ext) == (b"joe", 1001, b"/home/joe", b"", b"")
    sub = users.lookup(b"list-Owner")
    assert (sub.user, sub.dash, sub.ext) == (b"lists", b"-", b"Owner")
    box = users.lookup(b"boxy")
    assert (box.user, box.ext) == (b"boxes", b"b-y")
    anyone = users.lookup(b"stranger")
    assert (anyone.user, anyone.ext) == (b"alias", b"stranger")


def test_bad_line_keeps_old_cdb_and_names_the_line(home):
    (home / "users" / "assign").write_bytes(ASSIGN)
    assert run(home, "qmail-newu").returncode == 0
    before = (home / "users" / "cdb").read_bytes()
    (home / "users" / "assign").write_bytes(b"=ok:ok:1:1:/h:::\n=bad:only:three\n.\n")
    r = run(home, "qmail-newu")
    assert r.returncode == 111
    assert r.stderr.startswith(b"qmail-newu: fatal: users/assign line 2:")
    assert r.stderr.count(b"\n") == 1
    assert (home / "users" / "cdb").read_bytes() == before
    assert not (home / "users" / "cdb.tmp").exists()


def test_missing_dot_line_is_an_error(home):
    (home / "users" / "assign").write_bytes(b"=joe:joe:1:1:/h:::\n")
    r = run(home, "qmail-newu")
    assert r.returncode == 111 and not (home / "users" / "cdb").exists()


def test_missing_assign_is_an_error(home):
    r = run(home, "qmail-newu")
    assert r.returncode == 111 and b"users/assign" in r.stderr
