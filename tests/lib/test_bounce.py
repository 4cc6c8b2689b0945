"""qpy.bounce: bounce/<id> blocks and the QSBMF bounce message (docs/queue.md §8)."""
from __future__ import annotations

import dataclasses

import os

import pytest

from qpy import bounce, queuedir
from qpy.bounce import Settings

SETTINGS = Settings(bouncefrom=b"MAILER-DAEMON", bouncehost=b"mx.example",
                    doublebounceto=b"postmaster@mx.example")


def test_block_adds_the_missing_newline_and_a_blank_line():
    assert bounce.block(b"bob@b.example", b"Sorry, no mailbox here by that name. (#5.1.1)") == \
        b"<bob@b.example>:\nSorry, no mailbox here by that name. (#5.1.1)\n\n"
    assert bounce.block(b"bob@b.example", b"one\ntwo\n") == b"<bob@b.example>:\none\ntwo\n\n"
    assert bounce.block(b"bob@b.example", b"") == b"<bob@b.example>:\n\n"


def test_block_turns_inner_blank_lines_into_slashes():
    assert bounce.block(b"r@d", b"a\n\nb\n") == b"<r@d>:\na\n/b\n\n"
    assert bounce.block(b"r@d", b"a\n\n\nb\n") == b"<r@d>:\na\n//b\n\n"


def test_block_replaces_newlines_in_the_recipient():
    assert bounce.block(b"evil\n@d", b"x\n") == b"<evil_@d>:\nx\n\n"


def test_strip_vdom_prepend():
    vd = {b"virt.example": b"joe", b".sub.example": b"sub", b"plain.example": b"",
          b"user@other.example": b"u"}
    assert bounce.strip_vdom_prepend(b"joe-bob@virt.example", vd) == b"bob@virt.example"
    assert bounce.strip_vdom_prepend(b"joe-bob@VIRT.example", vd) == b"bob@VIRT.example"
    assert bounce.strip_vdom_prepend(b"sub-x@a.sub.example", vd) == b"x@a.sub.example"
    assert bounce.strip_vdom_prepend(b"jim-bob@virt.example", vd) == b"jim-bob@virt.example"
    assert bounce.strip_vdom_prepend(b"x-y@plain.example", vd) == b"x-y@plain.example"
    assert bounce.strip_vdom_prepend(b"u-user@other.example", vd) == b"u-user@other.example"
    assert bounce.strip_vdom_prepend(b"nohost", vd) == b"nohost"
    assert bounce.strip_vdom_prepend(b"all-z@any.example", {b"": b"all"}) == b"z@any.example"


def test_envelope_single_double_triple():
    assert bounce.envelope(b"joe@a.example", SETTINGS) == (b"", b"joe@a.example")
    assert bounce.envelope(b"", SETTINGS) == (b"#@[]", b"postmaster@mx.example")
    assert bounce.envelope(b"#@[]", SETTINGS) is None
    assert bounce.original_sender(b"owner-@host-@[]") == b"owner-@host"
    assert bounce.original_sender(b"-@[]") == b""
    assert bounce.original_sender(b"joe@a") == b"joe@a"


WHEN = 1700000000  # 14 Nov 2023 22:13:20 UTC


def test_single_bounce_text():
    head = bounce.compose_head(SETTINGS, b"joe@a.example", False, WHEN)
    assert head == (b"Date: 14 Nov 2023 22:13:20 -0000\n"
                    b"From: MAILER-DAEMON@mx.example\n"
                    b"To: joe@a.example\n"
                    b"Subject: failure notice\n"
                    b"\n"
                    b"Hi. This is the qmail-send program at mx.example.\n"
                    b"I'm afraid I wasn't able to deliver your message to the following addresses.\n"
                    b"This is a permanent error; I've given up. Sorry it didn't work out.\n"
                    b"\n")
    assert bounce.compose_middle(b"joe@a.example", False) == (
        b"--- Below this line is a copy of the message.\n\nReturn-Path: <joe@a.example>\n")


def test_double_bounce_text_and_quoting():
    s = Settings(bouncefrom=b"mailer daemon", bouncehost=b"mx.example",
                 doublebounceto=b"post master@mx.example")
    head = bounce.compose_head(s, b"post master@mx.example", True, WHEN)
    assert head.endswith(b"From: \"mailer daemon\"@mx.example\n"
                         b"To: \"post master\"@mx.example\n"
                         b"Subject: failure notice\n\n"
                         b"Hi. This is the qmail-send program at mx.example.\n"
                         b"I tried to deliver a bounce message to this address, but the bounce bounced!\n"
                         b"\n")
    assert bounce.compose_middle(b"", True) == (
        b"--- Below this line is the original bounce.\n\nReturn-Path: <>\n")
    assert bounce.compose_middle(b"a..b@x", False).endswith(b"Return-Path: <\"a..b\"@x>\n")


def queued(home) -> list[int]:
    return queuedir.scan_flat(str(home / "queue"), "todo")


def test_inject_queues_the_bounce_with_the_original(home, monkeypatch):
    q = home / "queue"
    monkeypatch.chdir(q)
    (q / "mess" / "0").mkdir(exist_ok=True)
    (q / "mess" / "0" / "23").write_bytes(b"Received: (qmail 1 invoked by uid 5); x\nSubject: hi\n\nbody\n")
    (q / "bounce" / "23").write_bytes(bounce.block(b"bob@b.example", b"no such user"))
    qp = bounce.inject("bounce/23", "mess/0/23", b"joe@a.example", SETTINGS, WHEN)
    assert isinstance(qp, int) and qp > 0
    (msgid,) = queued(home)
    env = (q / "todo" / str(msgid)).read_bytes()
    assert env.endswith(b"F\0Tjoe@a.example\0")
    mess = (q / queuedir.mess(msgid)).read_bytes()
    first, rest = mess.split(b"\n", 1)
    assert first.startswith(b"Received: (qmail %d invoked " % qp)
    assert rest == (bounce.compose_head(SETTINGS, b"joe@a.example", False, WHEN)
                    + b"<bob@b.example>:\nno such user\n\n"
                    + b"--- Below this line is a copy of the message.\n\n"
                    + b"Return-Path: <joe@a.example>\n"
                    + b"Received: (qmail 1 invoked by uid 5); x\nSubject: hi\n\nbody\n")


@pytest.mark.parametrize("maxbytes", [0, 50_000, 150])
def test_inject_copies_at_most_bouncemaxbytes_of_the_original_in_whole_lines(
        home, monkeypatch, maxbytes):
    q = home / "queue"
    monkeypatch.chdir(q)
    (q / "mess" / "0").mkdir(exist_ok=True)
    original = b"Subject: big\n\n" + (b"y" * 99 + b"\n") * 2000       # 200 014 bytes
    (q / "mess" / "0" / "23").write_bytes(original)
    (q / "bounce" / "23").write_bytes(bounce.block(b"bob@b.example", b"no such user"))
    bounce.inject("bounce/23", "mess/0/23", b"joe@a.example",
                  dataclasses.replace(SETTINGS, maxbytes=maxbytes), WHEN)
    (msgid,) = queued(home)
    mess = (q / queuedir.mess(msgid)).read_bytes()
    copy = mess.split(b"Return-Path: <joe@a.example>\n", 1)[1]
    if not maxbytes:
        assert copy == original
    else:   # whole lines, as many as fit
        assert original.startswith(copy) and copy.endswith(b"\n")
        assert maxbytes - 100 < len(copy) <= maxbytes


def test_inject_double_bounce_goes_to_doublebounceto_from_the_special_sender(home, monkeypatch):
    q = home / "queue"
    monkeypatch.chdir(q)
    (q / "mess" / "1").mkdir(exist_ok=True)
    (q / "mess" / "1" / "24").write_bytes(b"orig\n")
    (q / "bounce" / "24").write_bytes(b"<x@y>:\nfail\n\n")
    bounce.inject("bounce/24", "mess/1/24", b"", SETTINGS, WHEN)
    (msgid,) = queued(home)
    assert (q / "todo" / str(msgid)).read_bytes().endswith(b"F#@[]\0Tpostmaster@mx.example\0")
    assert b"the bounce bounced!" in (q / queuedir.mess(msgid)).read_bytes()


def test_triple_bounce_and_unreadable_files_queue_nothing(home, monkeypatch):
    q = home / "queue"
    monkeypatch.chdir(q)
    assert bounce.inject("bounce/25", "mess/2/25", b"#@[]", SETTINGS) is None
    (q / "bounce" / "26").write_bytes(b"<x@y>:\nfail\n\n")
    with pytest.raises(bounce.InjectError):
        bounce.inject("bounce/26", "mess/3/26", b"joe@a.example", SETTINGS)  # no mess file
    assert queued(home) == []
    assert queuedir.scan_split(str(q), "mess") == []


def test_append_creates_private_file_and_appends(tmp_path):
    path = str(tmp_path / "b")
    bounce.append(path, b"one\n")
    bounce.append(path, b"two\n")
    assert open(path, "rb").read() == b"one\ntwo\n"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert queuedir.exists(path) and not queuedir.exists(str(tmp_path / "none"))
