"""qpy.addr: the lookup keys of a domain."""
from __future__ import annotations

from qpy import addr


def test_domain_keys_are_the_domain_then_each_dot_suffix_longest_first():
    assert addr.domain_keys(b"a.b.example") == [b"a.b.example", b".b.example", b".example"]


def test_domain_keys_of_a_name_without_dots_and_of_nothing():
    assert addr.domain_keys(b"localhost") == [b"localhost"]
    assert addr.domain_keys(b"") == [b""]


def test_domain_keys_keep_a_leading_and_a_trailing_dot():
    assert addr.domain_keys(b".x.") == [b".x.", b".x.", b"."]


def test_utf8_local_parts_are_atoms_and_need_no_quotes():
    """RFC 6531: UTF-8 is allowed in a dot-atom; only RFC 5321 specials need quoting."""
    assert addr.quote("jörg@example.org".encode()) == "jörg@example.org".encode()
    assert addr.quote("zoë.o@example.org".encode()) == "zoë.o@example.org".encode()
    assert addr.quote("jö rg@example.org".encode()) == '"jö rg"@example.org'.encode()
    assert addr.quote(b"a..b@example.org") == b'"a..b"@example.org'
