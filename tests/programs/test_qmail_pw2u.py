"""qmail-pw2u: passwd → users/assign, with the users/ files and options."""
from __future__ import annotations

import os

from conftest import run


def owner() -> int:
    """The uid the test accounts get: ours, or (as root, whose uid 0 pw2u skips) 4000."""
    return os.getuid() or 4000


def passwd(tmp_path) -> bytes:
    """Accounts whose homes exist and belong to them; "foreign" has a home it does not own."""
    uid = owner()
    homes = {}
    for name in ("alias", "joe", "ann", "Upper", "foreign"):
        d = tmp_path / name
        d.mkdir(exist_ok=True)
        if os.getuid() == 0:
            os.chown(d, uid, 0)
        homes[name] = d
    other = uid + 1
    lines = [
        "root:x:0:0:root:/root:/bin/sh",
        f"alias:x:{uid}:7:alias:{homes['alias']}:/bin/false",
        f"joe:x:{uid}:100:Joe:{homes['joe']}:/bin/sh",
        f"ann:x:{uid}:101:Ann:{homes['ann']}:/bin/sh",
        f"Upper:x:{uid}:102:U:{homes['Upper']}:/bin/sh",
        f"foreign:x:{other}:103:F:{homes['foreign']}:/bin/sh",
        f"nohome:x:{uid}:104:N:{tmp_path}/missing:/bin/sh",
        "short:x:1",
    ]
    return ("\n".join(lines) + "\n").encode()


def test_default_rules(home, tmp_path):
    pw = passwd(tmp_path)
    uid = owner()
    r = run(home, "qmail-pw2u", input=pw)
    assert r.returncode == 0, r.stderr
    t = tmp_path
    assert r.stdout.decode() == (
        f"+:alias:{uid}:7:{t}/alias:-::\n"
        f"=alias:alias:{uid}:7:{t}/alias:::\n+alias-:alias:{uid}:7:{t}/alias:-::\n"
        f"=joe:joe:{uid}:100:{t}/joe:::\n+joe-:joe:{uid}:100:{t}/joe:-::\n"
        f"=ann:ann:{uid}:101:{t}/ann:::\n+ann-:ann:{uid}:101:{t}/ann:-::\n"
        ".\n")


def test_users_files_and_options(home, tmp_path):
    pw = passwd(tmp_path)
    uid = owner()
    users = home / "users"
    (users / "exclude").write_text("ann\n")
    (users / "mailnames").write_text("joe:joe.public:jq\n")
    (users / "subusers").write_text("sales:joe:sales:\n")
    (users / "append").write_text("=postmaster:joe:1:2:/x:::\n")
    r = run(home, "qmail-pw2u", ["-u", "-H", "-c", "+", "-/"], input=pw)
    assert r.returncode == 0, r.stderr
    t = tmp_path
    lines = r.stdout.decode().splitlines()
    assert f"=joe.public:joe:{uid}:100:{t}/joe:::" in lines
    assert f"+joe.public+:joe:{uid}:100:{t}/joe:-/::" in lines
    assert f"=jq:joe:{uid}:100:{t}/joe:::" in lines
    assert not any(line.startswith(("=joe:", "=ann:")) for line in lines)
    assert f"=Upper:Upper:{uid}:102:{t}/Upper:::" in lines          # -u
    assert any(line.startswith("=nohome:") for line in lines)          # -H
    assert lines[-4:] == [f"=sales:joe:{uid}:100:{t}/joe:-/:sales:",
                          f"+sales+:joe:{uid}:100:{t}/joe:-/:sales-:",
                          "=postmaster:joe:1:2:/x:::", "."]


def test_include_and_no_extensions(home, tmp_path):
    (home / "users" / "include").write_text("alias\njoe\n")
    r = run(home, "qmail-pw2u", ["-C"], input=passwd(tmp_path))
    uid = owner()
    assert r.stdout.decode().splitlines() == [
        f"+:alias:{uid}:7:{tmp_path}/alias:-::", f"=alias:alias:{uid}:7:{tmp_path}/alias:::",
        f"=joe:joe:{uid}:100:{tmp_path}/joe:::", "."]


def test_failures(home, tmp_path):
    r = run(home, "qmail-pw2u", input=b"joe:x:5:5::/:/bin/sh\n")
    assert (r.returncode, r.stderr) == (111, b"qmail-pw2u: fatal: unable to find alias user\n")
    r = run(home, "qmail-pw2u", ["-h"], input=passwd(tmp_path))
    assert r.returncode == 111 and r.stderr.startswith(b"qmail-pw2u: fatal: unable to stat ")
    (home / "users" / "subusers").write_text("s:nobody-here:p:\n")
    r = run(home, "qmail-pw2u", input=passwd(tmp_path))
    assert (r.returncode, r.stderr) == (
        111, b"qmail-pw2u: fatal: unable to find nobody-here user for subuser\n")
    assert run(home, "qmail-pw2u", ["-z"], input=b"").returncode == 100
