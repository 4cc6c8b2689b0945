"""qmail-newmrh: control/morercpthosts → morercpthosts.cdb."""
from __future__ import annotations

import subprocess

from conftest import need_program, run
from qpy import cdb


def test_builds_lowercased_keys_with_empty_values(home):
    (home / "control" / "morercpthosts").write_bytes(b"Example.TEST  \n# comment\n\nother.test\n")
    r = run(home, "qmail-newmrh")
    assert (r.returncode, r.stderr) == (0, b"")
    with cdb.Table(str(home / "control" / "morercpthosts.cdb")) as t:
        assert t.items() == [(b"example.test", b""), (b"other.test", b"")]
    tool = need_program("cdb")
    out = subprocess.run([tool, "-d", str(home / "control" / "morercpthosts.cdb")], capture_output=True)
    assert out.stdout == b"+12,0:example.test->\n+10,0:other.test->\n\n"


def test_missing_file_gives_an_empty_table(home):
    assert run(home, "qmail-newmrh").returncode == 0
    with cdb.Table(str(home / "control" / "morercpthosts.cdb")) as t:
        assert t.items() == []
