"""qpy.tcprules: rule lines → cdb records (ucspi-tcp's bytes), and tcpserver's lookup order."""
from __future__ import annotations

import pytest

from qpy import cdb, tcprules


def test_parse_allow_deny_and_variables():
    assert tcprules.parse_line(b"1.2.3.4:allow") == (b"1.2.3.4", b"")
    assert tcprules.parse_line(b"1.2.3.4:deny\n") == (b"1.2.3.4", b"D\0")
    assert tcprules.parse_line(b'=x:allow,A="1",B=/a"b/ \t') == (b"=x", b"+A=1\0+B=a\"b\0")
    assert tcprules.parse_line(b'x:deny,C=""') == (b"x", b"D\0+C=\0")
    for skipped in (b"#1.2.3.4:deny", b"", b"\n", b"no colon here"):
        assert tcprules.parse_line(skipped) is None


@pytest.mark.parametrize("line", [b"x:bogus", b"x:allow,", b"x:allow,A", b"x:allow,A=",
                                  b'x:allow,A="1', b"x:allow junk", b"x:allow\r"])
def test_parse_errors_carry_the_trimmed_line(line):
    with pytest.raises(tcprules.BadLine) as e:
        tcprules.parse_line(line + b"  \n")
    assert e.value.text == line.decode()


def test_ranges_expand_to_one_key_per_number():
    assert tcprules.expand(b"1.2.3.37-39") == [b"1.2.3.37", b"1.2.3.38", b"1.2.3.39"]
    assert tcprules.expand(b"10.2-3.") == [b"10.2.", b"10.3."]
    assert len(tcprules.expand(b"1.2.3.250-999")) == 6
    assert tcprules.expand(b"5-3") == []
    assert tcprules.expand(b"joe@1.2.3.4-5") == [b"joe@1.2.3.4-5"]
    assert tcprules.expand(b"=a-b.example") == [b"=a-b.example"]
    with pytest.raises(tcprules.BadLine):
        tcprules.expand(b"1.2.x-3")


def test_ipv6_lines_extension():
    assert tcprules.parse_line(b'::1:allow,X="1"') == (b"::1", b"+X=1\0")
    assert tcprules.parse_line(b"2001:db8::deny") == (b"2001:db8:", b"D\0")
    assert tcprules.parse_line(b"joe@fe80::1:deny") == (b"joe@fe80::1", b"D\0")
    with pytest.raises(tcprules.BadLine):
        tcprules.parse_line(b"host:name:allow")


def test_lookup_order_ipv4():
    keys = list(tcprules.keys(b"1.2.3.4", b"a.b.c", b"joe"))
    assert keys == [b"joe@1.2.3.4", b"joe@=a.b.c", b"1.2.3.4", b"=a.b.c", b"1.2.3.", b"1.2.",
                    b"1.", b"=.b.c", b"=.c", b"=", b""]
    assert list(tcprules.keys(b"1.2.3.4", None, None)) == [b"1.2.3.4", b"1.2.3.", b"1.2.", b"1.", b""]


def test_lookup_order_ipv6_tries_colon_prefixes():
    assert list(tcprules.keys(b"2001:db8::1", None, None)) == [
        b"2001:db8::1", b"2001:db8::", b"2001:db8:", b"2001:", b""]


def test_decode_follows_tcpserver():
    rule = tcprules.decode(b"D\0+A=1\0+NOEQUALS\0junk\0+B=x=y\0")
    assert rule.deny and rule.env == [(b"A", b"1"), (b"B", b"x=y")]
    assert tcprules.decode(b"") == tcprules.Rule(False, [])


def test_find_first_present_key(tmp_path):
    path = str(tmp_path / "r.cdb")
    tcprules.write(path, path + ".tmp", tcprules.compile_rules(
        b"1.2.3.:allow,C=\"c\"\n=.example:deny\n:allow,DEFAULT=\"1\"\n"))
    assert tcprules.find(path, b"1.2.3.4", b"h.example", None) == (b"1.2.3.", b"+C=c\0")
    assert tcprules.find(path, b"9.9.9.9", b"h.example", None) == (b"=.example", b"D\0")
    assert tcprules.find(path, b"9.9.9.9", None, None) == (b"", b"+DEFAULT=1\0")
    with pytest.raises(cdb.CdbError) as e:
        tcprules.find(str(tmp_path / "missing.cdb"), b"1.2.3.4", None, None)
    assert isinstance(e.value.__cause__, FileNotFoundError)
