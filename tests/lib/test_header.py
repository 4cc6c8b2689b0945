"""qpy.header: token822 parsing/printing, address lists, completion rules, header splitting."""
from __future__ import annotations

import io

import pytest

from qpy import header as h

RW = h.Rewriter(b"silverton", b"berkeley.edu", b"berkeley.edu")


def rewrite_field(text: bytes, rw: h.Rewriter = RW) -> bytes:
    new = h.addrlist(h.parse(text), rw.rewrite)
    assert new is not None
    return h.unparse(new)


def test_parse_kinds_and_escapes():
    toks = h.parse(b'a."b \\" c"@[1.2\\]] (x (y) \\)z) <>,;:')
    assert toks == [(h.ATOM, b"a"), (h.DOT, b""), (h.QUOTE, b'b " c'), (h.AT, b""),
                    (h.LITERAL, b"1.2]"), (h.COMMENT, b"x y )z"), (h.LEFT, b""),
                    (h.RIGHT, b""), (h.COMMA, b""), (h.SEMI, b""), (h.COLON, b"")]


@pytest.mark.parametrize("bad", [b'"open', b"(open", b"[open", b"a )", b"]", b'"x\\'])
def test_parse_rejects_unbalanced(bad):
    with pytest.raises(h.ParseError):
        h.parse(bad)


def test_atom_with_specials_prints_quoted():
    toks = h.parse(b"a)b c\xe9")
    assert toks == [(h.QUOTE, b"a)b"), (h.QUOTE, b"c\xe9")]
    assert h.unparse(toks) == b'"a\\)b" "c\xe9"\n'


def test_unparse_spacing_as_qmail():
    # qmail puts no space between ">" and a comment, one after ":" and ",".
    text = b'To:"Joe Q."<joe@x.y> (home) ,[1.2.3.4]\n'
    assert h.unparse(h.parse(text)) == b'To: "Joe Q." <joe@x.y>(home), [1.2.3.4]\n'


def test_man_page_completion_examples():
    assert rewrite_field(b"To: djb@silverton\n") == b"To: djb@silverton.berkeley.edu\n"
    assert rewrite_field(b"To: eric@mammoth.cs+\n") == b"To: eric@mammoth.cs.berkeley.edu\n"
    assert rewrite_field(b"To: djb fred\n") == (b"To: djb@silverton.berkeley.edu,"
                                                b" fred@silverton.berkeley.edu\n")
    assert rewrite_field(b"To: djb@[128.32.183.163]\n") == b"To: djb@[128.32.183.163]\n"


def test_source_routes_trailing_dots_and_empty_addresses():
    out = rewrite_field(b"Cc: <@r1,@r2:u@v.w>, x@y.z., a@[], <>, q@\n")
    assert out == b"Cc: <u@v.w>, x@y.z, a@[], <>, q@silverton.berkeley.edu\n"


def test_groups_are_kept_and_bad_groups_fail():
    assert rewrite_field(b"To: list: a, b@c.d;, e\n") == (
        b"To: list: a@silverton.berkeley.edu, b@c.d;, e@silverton.berkeley.edu\n")
    assert h.addrlist(h.parse(b"To: a: b\n"), RW.rewrite) is None
    assert h.addrlist(h.parse(b"To: g: a;; b\n"), RW.rewrite) is None
    assert h.addrlist(h.parse(b"To: a>\n"), RW.rewrite) is None


def test_folding_after_commas_at_80_columns():
    names = b", ".join(b"user%02d@example.com" % i for i in range(8))
    out = rewrite_field(b"To: " + names + b"\n")
    lines = out.split(b"\n")
    assert lines[0] == b"To: user00@example.com, user01@example.com, user02@example.com,"
    assert lines[1] == b"  user03@example.com, user04@example.com, user05@example.com,"
    assert lines[2] == b"  user06@example.com, user07@example.com"
    assert lines[3] == b""


def test_callback_sees_reversed_tokens_and_order_is_right_to_left():
    seen = []

    def cb(a):
        seen.append(h.address_of(a))
        return a
    h.addrlist(h.parse(b"To: a@b, c@d\n"), cb)
    assert seen == [b"c@d", b"a@b"]


def test_rewriter_address_and_quote2():
    assert RW.address(b"joe") == b"joe@silverton.berkeley.edu"
    assert RW.address(b"a b@c.d") == b"a b@c.d"
    assert RW.address(b"") == b""
    assert h.quote2(b"a b@c.d") == b'"a b"@c.d'
    assert h.quote2(b"plain@c.d") == b"plain@c.d"


def test_rewriter_leaves_a_host_in_locals_alone():
    """qmail would write alice@localhost.localhost; a host in control/locals is complete."""
    rw = h.Rewriter(b"localhost", b"localhost", b"localhost", frozenset({b"localhost"}))
    assert rw.address(b"alice") == b"alice@localhost"
    assert rw.address(b"alice@LocalHost") == b"alice@LocalHost"
    assert rw.address(b"bob@other") == b"bob@other.localhost"
    assert rw.address(b"bob@localhost+") == b"bob@localhost.localhost"


def test_known_and_valid_field_names():
    assert h.known(b"TO : x\n") == h.H_TO
    assert h.known(b"resent-message-id:<x>\n") == h.H_R_MESSAGEID
    assert h.known(b"To-do: x\n") == 0
    assert h.known(b"Mail-Followup-To: x\n") == h.H_MAILFOLLOWUPTO
    assert h.valid(b"X-Thing \t: y\n")
    assert not h.valid(b" X: y\n") and not h.valid(b": y\n") and not h.valid(b"no colon\n")
    assert not h.valid(b"X\xe9: y\n")


def test_read_header_splits_fields_and_body():
    msg = io.BytesIO(b"From someone Mon\nSubject: a\n  folded\nTo: b\n\nbody\nmore")
    fields, start = h.read_header(msg)
    assert fields == [b"MBOX-Line: From someone Mon\n", b"Subject: a\n  folded\n", b"To: b\n"]
    assert start == b"\n" and msg.read() == b"body\nmore"


def test_read_header_first_non_field_line_starts_the_body():
    fields, start = h.read_header(io.BytesIO(b"Subject: a\nnot a field\nrest\n"))
    assert (fields, start) == ([b"Subject: a\n"], b"\nnot a field\n")
    fields, start = h.read_header(io.BytesIO(b"Subject: no newline"))
    assert (fields, start) == ([b"Subject: no newline\n"], b"")


def test_generated_fields():
    when = 1700000000  # 14 Nov 2023 22:13:20 UTC
    assert h.date_field(when) == b"Date: 14 Nov 2023 22:13:20 -0000\n"
    assert h.message_id_field(b"id.host", when, 42) == (
        b"Message-ID: <20231114221320.42.qmail@id.host>\n")
