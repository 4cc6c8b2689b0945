"""qpy.dsn: the fields of an RFC 3464 bounce read from bounce/<id> blocks, the survey of
the original, and the MIME frame (whole bounces are built and parsed in test_bounce)."""
from __future__ import annotations

import itertools
import os

import pytest

from qpy import bounce, dsn

REMOTE_REPORT = (b"127.0.0.2 does not like recipient.\n"
                 b"Remote host said: 550-5.1.1 no such user\n550 5.1.1 really not\n"
                 b"Giving up on 127.0.0.2.")


def test_blocks_reads_back_what_block_wrote():
    text = (bounce.block(b"a@x", b"one (#5.1.1)\n") + bounce.block(b"b@y", b"a\n\nb")
            + bounce.block(b"c@z", b"") + bounce.block(b"d@w", b"\n"))
    assert dsn.blocks(text) == [(b"a@x", b"one (#5.1.1)"), (b"b@y", b"a\n/b"), (b"c@z", b""),
                                (b"d@w", b"")]


def test_blocks_keeps_stray_text_with_the_block_before_it():
    assert dsn.blocks(b"junk\n\n<a@x>:\nr\n\nmore\n\n") == [(b"a@x", b"r\n/more")]


def test_a_local_failure_is_x_unix_with_its_hash_code():
    f = dsn.failure(b"bob@test.example", b"Sorry, no mailbox here by that name. (#5.1.1)")
    assert f == dsn.Failure(b"bob@test.example", b"5.1.1", None,
                            (b"x-unix", b"Sorry, no mailbox here by that name. (#5.1.1)"))


def test_a_remote_failure_is_smtp_with_the_servers_code_and_address():
    f = dsn.failure(b"r@remote.example", REMOTE_REPORT)
    assert f.status == b"5.1.1"
    assert f.remote_mta == b"127.0.0.2"
    assert f.diagnostic == (b"smtp", b"550-5.1.1 no such user 550 5.1.1 really not")


@pytest.mark.parametrize("report, host", [
    (b"Connected to 192.0.2.7 but sender was rejected.\nRemote host said: 553 5.7.1 no", b"192.0.2.7"),
    (b"2001:db8::25 failed on DATA command.\nRemote host said: 554 no", b"2001:db8::25"),
    (b"::1 failed after I sent the message.\nRemote host said: 552 5.3.4 too big", b"::1"),
    (b"Giving up on 127.0.0.3.", b"127.0.0.3"),
    (b"Connected to mx.example but sender was rejected.", None),     # not an address
    (b"Sorry, I couldn't find any host named nosuch.example. (#5.1.2)", None),
])
def test_remote_host_from_qmail_remotes_words(report, host):
    assert dsn.remote_host(report) == host


@pytest.mark.parametrize("report, status", [
    (b"x.\nRemote host said: 550 5.7.1 <a@b>: Relay denied (#5.9.9)", b"5.7.1"),   # server first
    (b"x.\nRemote host said: 550 no such user\nGiving up. (#5.1.3)", b"5.1.3"),
    (b"x.\nRemote host said: 550 4.2.2 odd server", b"5.0.0"),                   # only 5.x.y
    (b"Sorry, no mailbox here by that name. (#5.1.1)", b"5.1.1"),
    (b"program said 5.1.1 without a hash", b"5.0.0"),
    (b"The address is (#5.1.10) long", b"5.1.10"),
    (b"(#5.1.1.2) is no code", b"5.0.0"),
    (b"x.\nRemote host said: 550 5.1.1. Unknown user", b"5.1.1"),
])
def test_status(report, status):
    assert dsn.failure(b"a@b", report).status == status


def test_an_expired_message_is_5_4_7_unless_a_permanent_code_is_known():
    deferral = b"Sorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n"
    giving_up = bounce.GIVING_UP.rstrip(b"\n")
    assert dsn.failure(b"a@b", deferral + giving_up, expired=True).status == b"5.4.7"
    assert dsn.failure(b"a@b", b"(#5.2.2)\n" + giving_up, expired=True).status == b"5.2.2"


def test_clean_keeps_field_text_on_one_printable_line():
    assert dsn.clean(b"a\tb\rc\x00d\x7fe", False) == b"a b c?d?e"
    assert dsn.clean("jöe \u2028x".encode(), False) == b"j??e ???x"
    assert dsn.clean("jöe".encode(), True) == "jöe".encode()
    assert dsn.clean(b"bad \xff\xfe", True) == b"bad ??"


def test_fold_keeps_lines_short_and_cuts_only_what_cannot_fit():
    text = b"smtp; " + b" ".join(b"word%d" % i for i in range(40))
    field = dsn.fold(b"Diagnostic-Code", text)
    lines = field.split(b"\n")[:-1]
    assert all(len(line) <= dsn.FOLD for line in lines)
    assert all(line.startswith(b" ") for line in lines[1:])
    assert b" ".join(line.strip() for line in lines) == b"Diagnostic-Code: " + text
    huge = dsn.fold(b"Diagnostic-Code", b"x-unix; " + b"y" * 5000)
    assert huge == b"Diagnostic-Code: x-unix;\n " + b"y" * dsn.MAX_WORD + b"\n"
    utf8 = dsn.fold(b"D", "ä".encode() * 1000)        # never half a character
    assert utf8.decode("utf-8") == "D: " + "ä" * (dsn.MAX_WORD // 2) + "\n"


def test_address_field_types():
    assert dsn.address_field(b"Final-Recipient", b"a@b") == b"Final-Recipient: rfc822; a@b\n"
    assert dsn.address_field(b"Final-Recipient", "jöe@b".encode()) == \
        "Final-Recipient: utf-8; jöe@b\n".encode()


def test_delivery_status_body_is_exact():
    failures = [dsn.failure(b"bob@test.example", b"no (#5.1.1)"),
                dsn.failure(b"r@remote.example", REMOTE_REPORT)]
    assert not dsn.is_global(failures)
    assert dsn.delivery_status(b"mx.example", 1700000000, 1700000100, failures) == (
        b"Reporting-MTA: dns; mx.example\n"
        b"Arrival-Date: 14 Nov 2023 22:13:20 -0000\n"
        b"\n"
        b"Final-Recipient: rfc822; bob@test.example\n"
        b"Action: failed\n"
        b"Status: 5.1.1\n"
        b"Diagnostic-Code: x-unix; no (#5.1.1)\n"
        b"Last-Attempt-Date: 14 Nov 2023 22:15:00 -0000\n"
        b"\n"
        b"Final-Recipient: rfc822; r@remote.example\n"
        b"Action: failed\n"
        b"Status: 5.1.1\n"
        b"Remote-MTA: dns; 127.0.0.2\n"
        b"Diagnostic-Code: smtp; 550-5.1.1 no such user 550 5.1.1 really not\n"
        b"Last-Attempt-Date: 14 Nov 2023 22:15:00 -0000\n")


def test_non_ascii_recipient_or_text_makes_the_report_global():
    assert dsn.is_global([dsn.failure("jöe@b".encode(), b"x")])
    assert dsn.is_global([dsn.failure(b"a@b", "Remote host said: 550 gibt's nicht: ö".encode())])
    body = dsn.delivery_status(b"h", 0, 0, [dsn.failure(b"a@b", b"bad \xff byte")])
    assert b"Diagnostic-Code: x-unix; bad ? byte\n" in body      # utf-8 text, invalid → ?


def write(tmp_path, data: bytes) -> str:
    path = tmp_path / "mess"
    path.write_bytes(data)
    return str(path)


BOUNDARY = b"qpy=_" + b"0" * 32


def test_survey_takes_the_whole_message_when_it_fits(tmp_path):
    data = b"Subject: x\n\nbody\n"
    for maxbytes in (0, len(data)):
        o = dsn.survey(write(tmp_path, data), maxbytes, [BOUNDARY])
        assert (o.length, o.whole, o.eightbit, o.found) == (len(data), True, False, frozenset())


def test_survey_takes_whole_header_lines_when_the_message_is_cut(tmp_path):
    data = b"A: 1\nB: 2\n\n" + b"body\n" * 100
    assert dsn.survey(write(tmp_path, data), 100, [BOUNDARY]).length == len(b"A: 1\nB: 2\n")
    assert dsn.survey(write(tmp_path, data), 7, [BOUNDARY]).length == len(b"A: 1\n")
    o = dsn.survey(write(tmp_path, b"A: 1\nB: 2\n" + b"C: ccc\n" * 100), 20, [BOUNDARY])
    assert (o.length, o.whole) == (len(b"A: 1\nB: 2\nC: ccc\n"), False)
    assert dsn.survey(write(tmp_path, b"\nbody only\n"), 3, [BOUNDARY]).length == 0


def test_survey_sees_8bit_only_in_what_is_carried(tmp_path):
    path = write(tmp_path, b"A: 1\n\n" + "ä\n".encode() * 100)
    assert dsn.survey(path, 0, [BOUNDARY]).eightbit
    assert not dsn.survey(path, 50, [BOUNDARY]).eightbit


@pytest.mark.parametrize("at", [0, 10, dsn.CHUNK - 7, dsn.CHUNK - 1, dsn.CHUNK + 3])
def test_survey_finds_a_boundary_anywhere_even_across_reads(tmp_path, at):
    data = bytearray(b"x" * (2 * dsn.CHUNK))
    data[at:at + len(BOUNDARY)] = BOUNDARY
    other = b"qpy=_" + b"1" * 32
    o = dsn.survey(write(tmp_path, bytes(data)), 0, [BOUNDARY, other])
    assert o.found == {BOUNDARY}


def test_survey_finds_the_header_end_across_reads(tmp_path):
    data = b"A: " + b"a" * (dsn.CHUNK - 5) + b"\n\nbody\n" + b"z" * 200
    with open(write(tmp_path, data), "rb") as f:
        s = dsn.scan(f.fileno(), len(data), [BOUNDARY])
    assert s.header_len == dsn.CHUNK - 1


def test_compose_never_uses_a_boundary_the_bounce_carries(tmp_path):
    taken = [b"qpy=_" + b"%032d" % i for i in range(8)]
    fresh = itertools.chain(taken, (b"qpy=_%032x" % (0xF0 + i) for i in itertools.count()))
    path = write(tmp_path, b"S: x\n\n" + b"\n".join(taken[:5]) + b"\n")
    b = dsn.compose(b"Subject: s\n", b"text " + taken[5] + b"\n", b"R: " + taken[6] + b"\n",
                    False, b"Return-Path: <" + taken[7] + b">\n", path, 0, b"h", 0,
                    fresh=fresh.__next__)
    assert b'boundary="qpy=_%032x"' % 0xF0 in b.head       # the first of the third look
    assert os.path.getsize(path) == b.length
