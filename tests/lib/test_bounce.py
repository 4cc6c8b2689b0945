"""qpy.bounce: bounce/<id> blocks, the QSBMF bounce message and its RFC 3464 form
(docs/queue.md §8), queued for real and parsed back with the email package."""
from __future__ import annotations

import dataclasses
import email
import email.policy
import os
import re

import pytest

from qpy import bounce, queuedir
from qpy.bounce import Settings

SETTINGS = Settings(bouncefrom=b"MAILER-DAEMON", bouncehost=b"mx.example",
                    doublebounceto=b"postmaster@mx.example")
QSBMF = dataclasses.replace(SETTINGS, dsn=False)


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


def test_bounceformat_values():
    assert Settings().dsn
    assert bounce.dsn_format(b"dsn") and bounce.dsn_format(None) and bounce.dsn_format(b"")
    assert bounce.dsn_format(b"qsmbf")      # only qsbmf selects the plain text
    assert not bounce.dsn_format(b"qsbmf") and not bounce.dsn_format(b"QSBMF ")


def test_inject_qsbmf_queues_qmails_bounce_with_the_original(home, monkeypatch):
    q = home / "queue"
    monkeypatch.chdir(q)
    (q / "mess" / "0").mkdir(exist_ok=True)
    (q / "mess" / "0" / "23").write_bytes(b"Received: (qmail 1 invoked by uid 5); x\nSubject: hi\n\nbody\n")
    (q / "bounce" / "23").write_bytes(bounce.block(b"bob@b.example", b"no such user"))
    qp = bounce.inject("bounce/23", "mess/0/23", b"joe@a.example", QSBMF, WHEN)
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
def test_inject_qsbmf_copies_at_most_bouncemaxbytes_of_the_original_in_whole_lines(
        home, monkeypatch, maxbytes):
    q = home / "queue"
    monkeypatch.chdir(q)
    (q / "mess" / "0").mkdir(exist_ok=True)
    original = b"Subject: big\n\n" + (b"y" * 99 + b"\n") * 2000       # 200 014 bytes
    (q / "mess" / "0" / "23").write_bytes(original)
    (q / "bounce" / "23").write_bytes(bounce.block(b"bob@b.example", b"no such user"))
    bounce.inject("bounce/23", "mess/0/23", b"joe@a.example",
                  dataclasses.replace(QSBMF, maxbytes=maxbytes), WHEN)
    (msgid,) = queued(home)
    mess = (q / queuedir.mess(msgid)).read_bytes()
    copy = mess.split(b"Return-Path: <joe@a.example>\n", 1)[1]
    if not maxbytes:
        assert copy == original
    else:   # whole lines, as many as fit
        assert original.startswith(copy) and copy.endswith(b"\n")
        assert maxbytes - 100 < len(copy) <= maxbytes


@pytest.mark.parametrize("settings", [QSBMF, SETTINGS], ids=["qsbmf", "dsn"])
def test_inject_double_bounce_goes_to_doublebounceto_from_the_special_sender(
        home, monkeypatch, settings):
    q = home / "queue"
    monkeypatch.chdir(q)
    (q / "mess" / "1").mkdir(exist_ok=True)
    (q / "mess" / "1" / "24").write_bytes(b"orig\n")
    (q / "bounce" / "24").write_bytes(b"<x@y>:\nfail\n\n")
    bounce.inject("bounce/24", "mess/1/24", b"", settings, WHEN)
    (msgid,) = queued(home)
    assert (q / "todo" / str(msgid)).read_bytes().endswith(b"F#@[]\0Tpostmaster@mx.example\0")
    assert b"the bounce bounced!" in (q / queuedir.mess(msgid)).read_bytes()


@pytest.mark.parametrize("settings", [QSBMF, SETTINGS], ids=["qsbmf", "dsn"])
def test_triple_bounce_and_unreadable_files_queue_nothing(home, monkeypatch, settings):
    q = home / "queue"
    monkeypatch.chdir(q)
    assert bounce.inject("bounce/25", "mess/2/25", b"#@[]", settings) is None
    (q / "bounce" / "26").write_bytes(b"<x@y>:\nfail\n\n")
    with pytest.raises(bounce.InjectError):
        bounce.inject("bounce/26", "mess/3/26", b"joe@a.example", settings)  # no mess file
    (q / "mess" / "3").mkdir(exist_ok=True)
    (q / "mess" / "3" / "27").write_bytes(b"orig\n")
    with pytest.raises(bounce.InjectError):
        bounce.inject("bounce/27", "mess/3/27", b"joe@a.example", settings)  # no bounce file
    assert queued(home) == []
    assert queuedir.scan_split(str(q), "mess") == [27]


# ---------------------------------------------------------------- RFC 3464 bounces

ORIGINAL = (b"Received: (qmail 1 invoked by uid 5); 14 Nov 2023 22:00:00 -0000\n"
            b"From: joe@a.example\nSubject: hi\n\nbody\n")
LOCAL = b"Sorry, no mailbox here by that name. (#5.1.1)\n"
REMOTE = (b"127.0.0.2 does not like recipient.\n"
          b"Remote host said: 550-5.1.1 The email account that you tried to reach does not exist.\n"
          b"550 5.1.1 Please try double-checking the recipient's email address.\n"
          b"Giving up on 127.0.0.2.\n")
TEXT = (b"Hi. This is the qmail-send program at mx.example.\n"
        b"I'm afraid I wasn't able to deliver your message to the following addresses.\n"
        b"This is a permanent error; I've given up. Sorry it didn't work out.\n\n")


def make_bounce(home, monkeypatch, blocks: bytes, original: bytes = ORIGINAL,
                settings: Settings = SETTINGS, sender: bytes = b"joe@a.example") -> bytes:
    """Queue a bounce for ``original`` with ``blocks`` in bounce/23; return its bytes."""
    q = home / "queue"
    monkeypatch.chdir(q)
    (q / "mess" / "0").mkdir(exist_ok=True)
    (q / "mess" / "0" / "23").write_bytes(original)
    (q / "bounce" / "23").write_bytes(blocks)
    os.utime(q / "bounce" / "23", (WHEN + 60, WHEN + 60))
    before = set(queued(home))
    bounce.inject("bounce/23", "mess/0/23", sender, settings, WHEN, arrival=WHEN - 3600)
    (msgid,) = set(queued(home)) - before
    return (q / queuedir.mess(msgid)).read_bytes()


def parse(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


def status_groups(part: email.message.Message) -> list[email.message.Message]:
    """The delivery-status part's field groups, the per-message group first."""
    if part.get_content_type() == "message/delivery-status":
        return part.get_payload()
    # message/global-delivery-status: the email package reads it as one message
    (first,) = part.get_payload()
    rest = first.get_payload(decode=True).decode("utf-8")
    return [first] + [email.message_from_string(g, policy=email.policy.default)
                      for g in rest.split("\n\n") if g.strip()]


def test_dsn_bounce_is_a_multipart_report_byte_for_byte(home, monkeypatch):
    blocks = bounce.block(b"bob@mx.example", LOCAL) + bounce.block(b"r@remote.example", REMOTE)
    data = make_bounce(home, monkeypatch, blocks)
    assert b"\r" not in data
    boundary = re.search(rb'boundary="(qpy=_[0-9a-f]{32})"', data).group(1)
    msgid = re.search(rb"\nMessage-ID: <(20231114221320\.[0-9a-f]{16}\.qmail@mx\.example)>\n",
                      data).group(1)
    body = data.split(b"\n", 1)[1]      # after qmail-queue's Received line
    assert body == (
        b"Date: 14 Nov 2023 22:13:20 -0000\n"
        b"From: MAILER-DAEMON@mx.example\n"
        b"To: joe@a.example\n"
        b"Subject: failure notice\n"
        b"Message-ID: <" + msgid + b">\n"
        b"MIME-Version: 1.0\n"
        b"Content-Type: multipart/report; report-type=delivery-status;\n"
        b"\tboundary=\"" + boundary + b"\"\n"
        b"\n"
        b"--" + boundary + b"\n"
        b"Content-Type: text/plain; charset=us-ascii\n"
        b"\n" + TEXT + blocks +
        b"--- Below this line is a copy of the message.\n"
        b"\n"
        b"--" + boundary + b"\n"
        b"Content-Type: message/delivery-status\n"
        b"\n"
        b"Reporting-MTA: dns; mx.example\n"
        b"Arrival-Date: 14 Nov 2023 21:13:20 -0000\n"
        b"\n"
        b"Final-Recipient: rfc822; bob@mx.example\n"
        b"Action: failed\n"
        b"Status: 5.1.1\n"
        b"Diagnostic-Code: x-unix; Sorry, no mailbox here by that name. (#5.1.1)\n"
        b"Last-Attempt-Date: 14 Nov 2023 22:14:20 -0000\n"
        b"\n"
        b"Final-Recipient: rfc822; r@remote.example\n"
        b"Action: failed\n"
        b"Status: 5.1.1\n"
        b"Remote-MTA: dns; 127.0.0.2\n"
        b"Diagnostic-Code: smtp; 550-5.1.1 The email account that you tried to reach\n"
        b" does not exist. 550 5.1.1 Please try double-checking the recipient's email\n"
        b" address.\n"
        b"Last-Attempt-Date: 14 Nov 2023 22:14:20 -0000\n"
        b"\n"
        b"--" + boundary + b"\n"
        b"Content-Type: message/rfc822\n"
        b"\n"
        b"Return-Path: <joe@a.example>\n" + ORIGINAL +
        b"\n"
        b"--" + boundary + b"--\n")


def test_dsn_bounce_parses_back_with_the_email_package(home, monkeypatch):
    blocks = (bounce.block(b"bob@mx.example", LOCAL) + bounce.block(b"r@remote.example", REMOTE)
              + bounce.block(b"prog@mx.example", b"first\n\nsecond"))
    m = parse(make_bounce(home, monkeypatch, blocks))
    assert m.get_content_type() == "multipart/report"
    assert m.get_param("report-type") == "delivery-status"
    assert (m["From"], m["To"], m["Subject"]) == ("MAILER-DAEMON@mx.example", "joe@a.example",
                                                 "failure notice")
    assert m["MIME-Version"] == "1.0" and m["Message-ID"].endswith(".qmail@mx.example>")
    text, report, original = m.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert text.get_content().encode() == (TEXT + blocks
                                           + b"--- Below this line is a copy of the message.\n")
    assert report.get_content_type() == "message/delivery-status"
    per_message, local, remote, prog = status_groups(report)
    assert per_message["Reporting-MTA"] == "dns; mx.example"
    assert per_message["Arrival-Date"] == "14 Nov 2023 21:13:20 -0000"
    assert dict(local) == {"Final-Recipient": "rfc822; bob@mx.example", "Action": "failed",
                           "Status": "5.1.1",
                           "Diagnostic-Code": "x-unix; Sorry, no mailbox here by that name. (#5.1.1)",
                           "Last-Attempt-Date": "14 Nov 2023 22:14:20 -0000"}
    assert remote["Final-Recipient"] == "rfc822; r@remote.example"
    assert (remote["Action"], remote["Status"]) == ("failed", "5.1.1")
    assert remote["Remote-MTA"] == "dns; 127.0.0.2"
    assert remote["Diagnostic-Code"] == (
        "smtp; 550-5.1.1 The email account that you tried to reach does not exist. "
        "550 5.1.1 Please try double-checking the recipient's email address.")
    assert (prog["Status"], prog["Remote-MTA"]) == ("5.0.0", None)
    assert prog["Diagnostic-Code"] == "x-unix; first /second"
    assert original.get_content_type() == "message/rfc822"
    (inner,) = original.get_payload()
    assert inner.as_bytes() == b"Return-Path: <joe@a.example>\n" + ORIGINAL
    assert inner["Subject"] == "hi" and inner.get_content() == "body\n"


BIG = ORIGINAL + (b"y" * 99 + b"\n") * 2000


@pytest.mark.parametrize("maxbytes, kind", [
    (0, "message/rfc822"), (len(BIG), "message/rfc822"), (len(BIG) - 1, "text/rfc822-headers"),
    (50_000, "text/rfc822-headers"), (80, "text/rfc822-headers")])
def test_dsn_carries_the_whole_original_or_only_its_header(home, monkeypatch, maxbytes, kind):
    data = make_bounce(home, monkeypatch, bounce.block(b"bob@mx.example", LOCAL), BIG,
                       dataclasses.replace(SETTINGS, maxbytes=maxbytes))
    original = list(parse(data).iter_parts())[2]
    assert original.get_content_type() == kind
    boundary = re.search(rb'boundary="(qpy=_[0-9a-f]{32})"', data).group(1)
    carried = data.split(b"\n--" + boundary + b"\n")[3].split(b"\n", 2)[2]
    carried = carried[:-len(b"\n--" + boundary + b"--\n")]
    if kind == "message/rfc822":
        assert carried == b"Return-Path: <joe@a.example>\n" + BIG
    elif maxbytes >= len(ORIGINAL):       # the header lines, without the blank line
        assert carried == b"Return-Path: <joe@a.example>\n" + ORIGINAL.split(b"\n\n")[0] + b"\n"
        assert original.get_content() == carried.decode()
    else:                               # as many whole header lines as fit
        assert carried == b"Return-Path: <joe@a.example>\n" + ORIGINAL.split(b"\n", 1)[0] + b"\n"


def test_dsn_for_utf8_recipients_and_8bit_originals_uses_rfc_6533_types(home, monkeypatch):
    original = "From: jöe@a.example\nSubject: grüße\n\nbody ä\n".encode()
    blocks = bounce.block("jörg@mx.example".encode(), LOCAL) + bounce.block(b"r@remote.example",
                                                                           REMOTE)
    data = make_bounce(home, monkeypatch, blocks, original, sender="jöe@a.example".encode())
    m = parse(data)
    text, report, carried = m.iter_parts()
    assert m["Content-Transfer-Encoding"] == "8bit"
    assert text.get_content_charset() == "utf-8"
    assert text.get_content().encode() == (TEXT + blocks
                                           + b"--- Below this line is a copy of the message.\n")
    assert report.get_content_type() == "message/global-delivery-status"
    assert report["Content-Transfer-Encoding"] == "8bit"
    _, utf8, ascii_ = status_groups(report)
    assert utf8["Final-Recipient"] == "utf-8; jörg@mx.example"
    assert utf8["Status"] == "5.1.1"
    assert ascii_["Final-Recipient"] == "rfc822; r@remote.example"
    assert ascii_["Remote-MTA"] == "dns; 127.0.0.2"
    assert carried.get_content_type() == "message/global"
    assert "Return-Path: <jöe@a.example>\n".encode() + original in data
    cut = make_bounce(home, monkeypatch, blocks, original + b"x" * 100,
                      dataclasses.replace(SETTINGS, maxbytes=len(original)))
    assert list(parse(cut).iter_parts())[2].get_content_type() == "message/global-headers"


def test_dsn_8bit_only_in_the_cut_body_stays_7bit(home, monkeypatch):
    data = make_bounce(home, monkeypatch, bounce.block(b"bob@mx.example", LOCAL),
                       ORIGINAL + "ä\n".encode() * 100,
                       dataclasses.replace(SETTINGS, maxbytes=len(ORIGINAL)))
    m = parse(data)
    assert [p.get_content_type() for p in m.iter_parts()] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert data.isascii() and m["Content-Transfer-Encoding"] is None


def test_dsn_double_bounce(home, monkeypatch):
    first = make_bounce(home, monkeypatch, bounce.block(b"bob@mx.example", LOCAL))
    blocks = bounce.block(b"joe@a.example", REMOTE)
    data = make_bounce(home, monkeypatch, blocks, first.split(b"\n", 1)[1], sender=b"")
    m = parse(data)
    assert m["To"] == "postmaster@mx.example"
    text, report, original = m.iter_parts()
    assert text.get_content() == (
        "Hi. This is the qmail-send program at mx.example.\n"
        "I tried to deliver a bounce message to this address, but the bounce bounced!\n\n"
        + blocks.decode() + "--- Below this line is the original bounce.\n")
    assert status_groups(report)[1]["Final-Recipient"] == "rfc822; joe@a.example"
    (inner,) = original.get_payload()
    assert inner["Return-Path"] == "<>"
    assert inner.get_content_type() == "multipart/report"     # the first bounce, whole


def test_qsbmf_bounce_is_qmails_exactly(home, monkeypatch):
    blocks = bounce.block(b"bob@mx.example", LOCAL) + bounce.block(b"r@remote.example", REMOTE)
    data = make_bounce(home, monkeypatch, blocks, settings=QSBMF)
    assert data.split(b"\n", 1)[1] == (
        b"Date: 14 Nov 2023 22:13:20 -0000\n"
        b"From: MAILER-DAEMON@mx.example\n"
        b"To: joe@a.example\n"
        b"Subject: failure notice\n"
        b"\n" + TEXT + blocks +
        b"--- Below this line is a copy of the message.\n"
        b"\n"
        b"Return-Path: <joe@a.example>\n" + ORIGINAL)


def test_append_creates_private_file_and_appends(tmp_path):
    path = str(tmp_path / "b")
    bounce.append(path, b"one\n")
    bounce.append(path, b"two\n")
    assert open(path, "rb").read() == b"one\ntwo\n"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert queuedir.exists(path) and not queuedir.exists(str(tmp_path / "none"))
