"""newaliases: /etc/aliases-format file → FILE.cdb (checked with qpy.cdb and tinycdb)."""
from __future__ import annotations

import os
import subprocess

from conftest import control, need_program, run
from qpy import cdb

ALIASES = b"""# test aliases
postmaster: root
root: joe, ops@elsewhere.example
list: ann, "|/bin/cat > /dev/null", :include:/etc/list-members
owner-list: joe
"""


def test_compiles_next_to_the_file(home, tmp_path):
    src = tmp_path / "aliases"
    src.write_bytes(ALIASES)
    r = run(home, "newaliases", ["--file", str(src)])
    assert (r.returncode, r.stderr) == (0, b"")
    out = tmp_path / "aliases.cdb"
    assert out.stat().st_mode & 0o777 == 0o644
    assert not (tmp_path / "aliases.tmp").exists()
    with cdb.Table(str(out)) as t:
        assert t.get(b":postmaster@") == b"&root@test.example\0"
        assert t.get(b":root@") == b"&ops@elsewhere.example\0&joe@test.example\0"
        assert t.get(b":list@") == b"/etc/list-members\0!/bin/cat > /dev/null\0&ann@test.example\0"
        assert t.get(b"?list@") == b"owner-list@test.example"
    dump = subprocess.run([need_program("cdb"), "-d", str(out)], capture_output=True, timeout=60)
    assert dump.returncode == 0
    assert b"+6,23:?list@->owner-list@test.example\n" in dump.stdout


def test_environment_sendmail_bi_and_argv0(home, tmp_path):
    src = tmp_path / "aliases"
    src.write_bytes(b"a: b\n")
    control(home, "defaulthost", "dh.example\n")
    r = run(home, "sendmail", ["-bi"], env={"QPY_ALIASES": str(src)})
    assert r.returncode == 0, r.stderr
    with cdb.Table(str(tmp_path / "aliases.cdb")) as t:
        assert t.get(b":a@") == b"&b@dh.example\0"
    src.write_bytes(b"a: c\n")
    link = tmp_path / "newaliases"
    link.symlink_to(home / "bin" / "sendmail")
    r = subprocess.run([str(link)], capture_output=True, timeout=60,
                       env=dict(os.environ, QMAILHOME=str(home), QPY_ALIASES=str(src)))
    assert r.returncode == 0, r.stderr
    with cdb.Table(str(tmp_path / "aliases.cdb")) as t:
        assert t.get(b":a@") == b"&c@dh.example\0"


def test_errors_keep_the_old_cdb(home, tmp_path):
    src = tmp_path / "aliases"
    src.write_bytes(b"a: b\n")
    assert run(home, "newaliases", ["-f", str(src)]).returncode == 0
    before = (tmp_path / "aliases.cdb").read_bytes()
    src.write_bytes(b"a: b\nbroken line (\n")
    r = run(home, "newaliases", ["-f", str(src)])
    assert (r.returncode, r.stderr) == (
        111, b"newaliases: fatal: unable to parse this line: broken line (\n")
    src.write_bytes(b"a: b\0c\n")
    r = run(home, "newaliases", ["-f", str(src)])
    assert (r.returncode, r.stderr) == (100, b"newaliases: fatal: NUL bytes are not permitted\n")
    assert (tmp_path / "aliases.cdb").read_bytes() == before
    r = run(home, "newaliases", ["-f", str(tmp_path / "missing")])
    assert r.returncode == 111 and b"unable to read" in r.stderr
