"""qpy.aliases: the /etc/aliases grammar, completion rules and fastforward's cdb records."""
from __future__ import annotations

import pytest

from qpy import aliases

Q = aliases.Qualifier(b"dhost", b"dom.example", b"plus.example")


def test_items_left_to_right_with_commas_spaces_angles_comments():
    found = aliases.items(b'root: a, b@c.d (B), Joe <j@x.y>, "|cmd arg", /f, :include:/l.txt')
    assert [(i.kind, i.text, i.has_at) for i in found] == [
        ("address", b"root", False), ("address", b"a", False), ("address", b"b@c.d", True),
        ("address", b"j@x.y", True), ("address", b"|cmd arg", False), ("address", b"/f", False),
        ("include", b"/l.txt", False)]
    assert [i.text for i in aliases.items(b"x: djb fred")] == [b"x", b"djb", b"fred"]


def test_qualifier_rules():
    assert Q.full(b"joe", False) == b"joe@dhost.dom.example"
    assert Q.full(b"joe@host", True) == b"joe@host.dom.example"
    assert Q.full(b"joe@mammoth.cs+", True) == b"joe@mammoth.cs.plus.example"
    assert Q.full(b"joe@x.y", True) == b"joe@x.y"
    assert Q.full(b"joe@[1.2.3.4]", True) == b"joe@[1.2.3.4]"


def test_a_local_host_is_not_completed():
    """``qpy run``'s me = localhost: root → root@localhost, never root@localhost.localhost."""
    q = aliases.Qualifier(b"localhost", b"localhost", b"localhost", frozenset({b"localhost"}))
    assert q.full(b"root", False) == b"root@localhost"
    assert q.full(b"alice@LocalHost", True) == b"alice@LocalHost"
    assert q.full(b"bob@other", True) == b"bob@other.localhost"


def test_compile_records_in_fastforward_format():
    text = (b"# Debian's default\n\nPostmaster: root\nroot: alice,\n  bob@far.example\n"
            b"list: \"|/usr/bin/archive -q\", /var/mail/archive, /srv/md/, :include:/etc/l\n"
            b"owner-list: alice\n# gone: nobody\n  still comment\n")
    assert aliases.compile_aliases(text, Q) == [
        (b":postmaster@", b"&root@dhost.dom.example\0"),
        (b":root@", b"&bob@far.example\0&alice@dhost.dom.example\0"),
        (b":list@", b"/etc/l\0>/srv/md/\0>/var/mail/archive\0!/usr/bin/archive -q\0"),
        (b"?list@", b"owner-list@dhost.dom.example"),
        (b":owner-list@", b"&alice@dhost.dom.example\0"),
    ]


@pytest.mark.parametrize("text,error", [
    (b"lonely\n", aliases.AliasError),
    (b"x: (open\n", aliases.AliasError),
    (b"x: <>\n", aliases.AliasError),
    (b"x: :include:\n", aliases.AliasError),
    (b"\"|prog\"\n", aliases.AliasError),
    (b"x: a\0b\n", aliases.AliasFormat),
    (b"x: " + b"a" * 801 + b"@b.c\n", aliases.AliasFormat),
])
def test_compile_errors(text, error):
    with pytest.raises(error):
        aliases.compile_aliases(text, Q)
    assert issubclass(aliases.AliasError, aliases.TempFail)


def test_list_files_take_addresses_and_includes_only():
    assert aliases.list_file(b"a, b@c.d\n# comment\n\n:include:more\n", Q) == [
        b"&a@dhost.dom.example", b"&b@c.d", b"./more"]
    with pytest.raises(aliases.AliasError):
        aliases.list_file(b"\"|rm -rf /\"\n", Q)
    with pytest.raises(aliases.AliasError):
        aliases.list_file(b"/etc/passwd\n", Q)


def test_lookup_keys():
    assert aliases.lookup_keys(b":", b"Root@Host.Example", True) == [
        b":root@host.example", b":@host.example", b":root@"]
    assert aliases.lookup_keys(b"?", b"x@y", False) == [b"?x@y"]
