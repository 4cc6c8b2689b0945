"""tcprules against Debian's ucspi-tcp tcprules: same bytes, same errors, same exit codes."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tcpserve import debian

RULES = [
    '1.2.3.37-40:allow,X="y"\n10.2-3.:deny\n#comment\n\n=host.dom:allow\n',
    'joe@1.2.3.4:deny,A="1",B=/2/  \t\nnocolon\n:allow\n1.2.3.-2:allow\n5-3:allow\n',
    '1.2.3.250-300:allow,RELAYCLIENT=""\n127.:allow,RELAYCLIENT="",RBLSMTPD=""\n :allow\n',
    '1.2.3.4:allow,X="a,b",Y=""\n1.2.3.4:deny\n=.example.com:allow,TCPLOCALHOST="h"\n=:deny\n',
    "last:deny",
    "",
]
BAD = ["x:bogus\n", "1-2-3:allow\n", "a:allow,X\n", 'x:allow,X="a\n', "x:allowjunk\n",
       "1.2.3.4:allow\t \r\n", "a.b-c.d:allow\n", "x:allow,X=\n"]


def tcprules(program: str, cdb: Path, text: str, tmp: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([program, str(cdb), str(tmp or cdb.with_suffix(".tmp"))],
                          input=text.encode(), capture_output=True, timeout=30)


@pytest.mark.parametrize("text", RULES)
def test_cdb_is_byte_identical_to_debian_tcprules(home, tmp_path, text):
    ours = tcprules(str(home / "bin" / "tcprules"), tmp_path / "ours.cdb", text)
    theirs = tcprules(debian("tcprules"), tmp_path / "theirs.cdb", text)
    assert (ours.returncode, ours.stderr) == (theirs.returncode, theirs.stderr) == (0, b"")
    assert (tmp_path / "ours.cdb").read_bytes() == (tmp_path / "theirs.cdb").read_bytes()
    assert not (tmp_path / "ours.tmp").exists()


@pytest.mark.parametrize("text", BAD)
def test_bad_lines_fail_like_debian_and_keep_the_old_cdb(home, tmp_path, text):
    ours_cdb = tmp_path / "ours.cdb"
    assert tcprules(str(home / "bin" / "tcprules"), ours_cdb, ":allow\n").returncode == 0
    before = ours_cdb.read_bytes()
    ours = tcprules(str(home / "bin" / "tcprules"), ours_cdb, ":deny\n" + text)
    theirs = tcprules(debian("tcprules"), tmp_path / "theirs.cdb", ":deny\n" + text)
    assert ours.returncode == theirs.returncode == 100
    assert ours.stderr == theirs.stderr
    assert ours.stderr.startswith(b"tcprules: fatal: unable to parse this line: ")
    assert ours_cdb.read_bytes() == before


def test_usage_and_file_errors_match_debian(home, tmp_path):
    ours, theirs = str(home / "bin" / "tcprules"), debian("tcprules")
    for argv in ([], ["only.cdb"]):
        a = subprocess.run([ours, *argv], capture_output=True, timeout=30)
        b = subprocess.run([theirs, *argv], capture_output=True, timeout=30)
        assert (a.returncode, a.stderr) == (b.returncode, b.stderr)
        assert a.returncode == 100 and a.stderr == b"tcprules: usage: tcprules rules.cdb rules.tmp\n"
    (tmp_path / "adir").mkdir()
    for cdb, tmp in ((tmp_path / "x.cdb", tmp_path / "missing" / "x.tmp"),
                     (tmp_path / "adir", tmp_path / "x.tmp")):
        a = tcprules(ours, cdb, ":allow\n", tmp)
        b = tcprules(theirs, cdb, ":allow\n", tmp)
        assert (a.returncode, a.stderr) == (b.returncode, b.stderr)
        assert a.returncode == 111
    assert a.stderr == f"tcprules: fatal: unable to move {tmp} to {cdb}: is a directory\n".encode()


def test_ipv6_addresses_are_accepted_as_an_extension(home, tmp_path):
    text = '::1:allow,SIX="1"\n2001:db8::deny\njoe@::1:deny\n'
    r = tcprules(str(home / "bin" / "tcprules"), tmp_path / "r.cdb", text)
    assert r.returncode == 0, r.stderr
    from qpy import cdb
    with cdb.Table(str(tmp_path / "r.cdb")) as table:
        assert table.items() == [(b"::1", b"+SIX=1\0"), (b"2001:db8:", b"D\0"), (b"joe@::1", b"D\0")]
    assert tcprules(debian("tcprules"), tmp_path / "d.cdb", text).returncode == 100
