"""qpy.dotqmail: qmail-local's search order, the path-escape guard, line classification."""
from __future__ import annotations

import os

import pytest

from qpy import dotqmail
from qpy.errors import TempFail


@pytest.mark.parametrize("dash,ext,names", [
    (b"", b"", [b".qmail", b".qmaildefault"]),
    (b"-", b"", [b".qmail-", b".qmail-default"]),
    (b"-", b"a", [b".qmail-a", b".qmail-default"]),
    (b"-", b"a-", [b".qmail-a-", b".qmail-a-default", b".qmail-default"]),
    (b"-", b"a-b", [b".qmail-a-b", b".qmail-a-default", b".qmail-default"]),
    (b"-", b"a-b-", [b".qmail-a-b-", b".qmail-a-b-default", b".qmail-a-default", b".qmail-default"]),
    (b"-", b"a-b-c", [b".qmail-a-b-c", b".qmail-a-b-default", b".qmail-a-default", b".qmail-default"]),
    (b"-", b"Foo.Bar", [b".qmail-foo:bar", b".qmail-default"]),
])
def test_candidates_match_qmail_local(dash, ext, names):
    assert [n for n, _ in dotqmail.candidates(dash, ext)] == names


def test_default_values():
    assert dotqmail.candidates(b"-", b"A-b-C") == [
        (b".qmail-a-b-c", None), (b".qmail-a-b-default", b"C"), (b".qmail-a-default", b"b-C"),
        (b".qmail-default", b"A-b-C")]
    assert dotqmail.candidates(b"-", b"x-DEFAULT")[0] == (b".qmail-x-default", b"DEFAULT")


@pytest.mark.parametrize("ext", [b"../x", b"a/b-c", b"x/../../../etc/passwd", b"/abs"])
def test_names_with_a_slash_are_never_tried(ext):
    names = [n for n, _ in dotqmail.candidates(b"-", ext)]
    assert names and all(b"/" not in n for n in names)
    assert names[-1] == b".qmail-default"


def test_find_skips_non_files_and_reports_x_bit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.mkdir(".qmail-a-b")
    (tmp_path / ".qmail-a-default").write_bytes(b"./Maildir/\n")
    (tmp_path / ".qmail-a-default").chmod(0o744)
    found = dotqmail.find(b"-", b"a-b")
    assert (found.name, found.default, found.forward_only) == (b".qmail-a-default", b"b", True)
    assert found.read() == b"./Maildir/\n"
    assert dotqmail.find(b"-", b"zzz") is None


def test_world_writable_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".qmail-w").write_bytes(b"x\n")
    (tmp_path / ".qmail-w").chmod(0o666)
    with pytest.raises(TempFail, match="writable"):
        dotqmail.find(b"-", b"w")


def test_exists_never_follows_a_slash(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "target").write_bytes(b"")
    assert dotqmail.exists(b"target")
    assert not dotqmail.exists(b"./target")


def test_lines_and_classify():
    text = b"# c\n./Maildir/ \t\n/var/mail/x\n|prog a\n+list\n+other\n&a@b\nc@d\n\nlast"
    got = [dotqmail.classify(line) for line in dotqmail.lines(text)]
    assert got == [("comment", b"# c"), ("maildir", b"./Maildir/"), ("mbox", b"/var/mail/x"),
                   ("program", b"prog a"), ("list", b"+list"), ("ignored", b"+other"),
                   ("forward", b"a@b"), ("forward", b"c@d"), ("blank", b""), ("forward", b"last")]
