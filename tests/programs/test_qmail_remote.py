"""qmail-remote end to end: real DNS server, real SMTP sinks on loopback, exact report bytes."""
from __future__ import annotations

import os
import socket
import struct
import subprocess
import time

import pytest

from conftest import control, run
from dnsserver import DNSServer
from smtpsink import DROP, free_port, make_cert, sink_group
from qpy import warm

MSG = b"From: a@example.org\nSubject: test\n\nHello.\n"
ZONE = {
    "example.test": [("MX", "10 mx1.example.test."), ("MX", "20 mx2.example.test.")],
    "mx1.example.test": [("A", "127.0.0.2")],
    "mx2.example.test": [("A", "127.0.0.3")],
    "down.test": [("MX", "10 mx4.down.test."), ("MX", "20 mx2.example.test.")],
    "mx4.down.test": [("A", "127.0.0.4")],
    "same.test": [("MX", "10 mx1.example.test."), ("MX", "10 mx2.example.test.")],
    "plain.test": [("A", "127.0.0.2")],
    "six.test": [("AAAA", "::1")],
    "self.test": [("MX", "10 localhost.self.test.")],
    "localhost.self.test": [("A", "127.0.0.1")],
    "selfbackup.test": [("MX", "5 mx1.example.test."), ("MX", "10 localhost.self.test.")],
    "relay.test": [("A", "127.0.0.3")],
}


@pytest.fixture
def dns(home):
    with DNSServer(ZONE, servfail={"broken.test"}) as srv:
        yield srv


def mx_port(home, port: int) -> None:
    """qpy's smtproutes extension: MX delivery, but to this port (tests cannot use 25)."""
    control(home, "smtproutes", f"::{port}\n")


def remote(home, dns, host, rcpts, message=MSG, sender="s@example.org", env=None, stdin=None):
    """Run bin/qmail-remote; return its records (each without the trailing NUL)."""
    e = {"QPY_NAMESERVERS": dns.spec} if dns is not None else {}
    e.update(env or {})
    if stdin is not None:
        r = run(home, "qmail-remote", [host, sender, *rcpts], input=None, stdin=stdin, env=e)
    else:
        r = run(home, "qmail-remote", [host, sender, *rcpts], input=message, env=e)
    assert r.returncode == 0 and r.stderr == b""
    assert r.stdout.endswith(b"\0")
    return r.stdout[:-1].split(b"\0")


def crlf(message: bytes) -> bytes:
    return message.replace(b"\n", b"\r\n")


# -- usage and setup ------------------------------------------------------------------------

def test_bad_usage(home):
    r = run(home, "qmail-remote", ["example.test", "s@x"])
    assert (r.returncode, r.stdout) == (0, b"DI (qmail-remote) was invoked improperly. (#5.3.5)\n\0")


def test_missing_home(home, dns):
    recs = remote(home, dns, "example.test", ["r@example.test"], env={"QMAILHOME": str(home / "nope")})
    assert recs == [b"ZUnable to switch to home directory. (#4.3.0)\n"]


def test_no_helohost_and_no_me(home, dns):
    os.unlink(home / "control" / "me")
    recs = remote(home, dns, "example.test", ["r@example.test"])
    assert recs == [b"ZUnable to read control files. (#4.3.0)\n"]


# -- MX selection ----------------------------------------------------------------------------

def test_delivers_to_best_mx_with_exact_report_and_dialogue(home, dns):
    control(home, "helohost", "out.example.org\n")
    with sink_group(["127.0.0.2", "127.0.0.3"]) as (mx1, mx2):
        mx_port(home, mx1.port)
        recs = remote(home, dns, "example.test", ["r@example.test"])
        mx1.wait_idle()
    assert recs == [b"r", b"K127.0.0.2 accepted message.\nRemote host said: 250 ok queued\n"]
    assert len(mx1.messages) == 1 and not mx2.sessions
    m = mx1.messages[0]
    assert (m.mail_from, m.rcpts, m.data) == (b"s@example.org", [b"r@example.test"], crlf(MSG))
    assert m.params == b"SIZE=%d" % len(MSG) or m.params == b""
    cmds = mx1.sessions[0].commands
    assert cmds[0] == b"EHLO out.example.org"
    assert cmds[1].startswith(b"MAIL FROM:<s@example.org>")
    assert cmds[2:] == [b"RCPT TO:<r@example.test>", b"DATA", b"QUIT"]


def test_next_mx_when_the_first_refuses(home, dns):
    with sink_group(["127.0.0.3"]) as (mx2,):
        mx_port(home, mx2.port)      # nothing listens on 127.0.0.4 at that port
        recs = remote(home, dns, "down.test", ["r@down.test"])
    assert recs[-1].startswith(b"K127.0.0.3 accepted message.")
    assert (home / "queue" / "lock" / "tcpto").read_bytes() == bytes(1024)   # refused is no timeout


def test_falls_back_to_a_record(home, dns):
    with sink_group(["127.0.0.2"]) as (sink,):
        mx_port(home, sink.port)
        recs = remote(home, dns, "plain.test", ["r@plain.test"])
    assert recs == [b"r", b"K127.0.0.2 accepted message.\nRemote host said: 250 ok queued\n"]


OWN = (b"DSorry. Although I'm listed as a best-preference MX or A for that host,\n"
       b"it isn't in my control/locals file, so I don't treat it as local. (#5.4.6)\n")


def test_ipv6_aaaa(home, dns):
    """::1 is the only IPv6 loopback address, and it is ours: as MX it is refused, as a relay used."""
    assert remote(home, dns, "six.test", ["r@six.test"]) == [OWN]
    with sink_group(["::1"]) as (sink,):
        control(home, "smtproutes", f"six.test:six.test:{sink.port}\n")
        recs = remote(home, dns, "six.test", ["r@six.test"])
    assert recs == [b"r", b"K::1 accepted message.\nRemote host said: 250 ok queued\n"]
    assert len(sink.messages) == 1


def test_equal_preferences_spread_over_runs(home, dns):
    with sink_group(["127.0.0.2", "127.0.0.3"]) as (a, b):
        mx_port(home, a.port)
        for _ in range(16):
            assert remote(home, dns, "same.test", ["r@same.test"])[0] == b"r"
            if a.messages and b.messages:
                break
    assert a.messages and b.messages


def test_nxdomain_is_permanent(home, dns):
    assert remote(home, dns, "nowhere.test", ["r@nowhere.test"]) == [
        b"DSorry, I couldn't find any host named nowhere.test. (#5.1.2)\n"]


def test_servfail_is_temporary(home, dns):
    assert remote(home, dns, "broken.test", ["r@broken.test"]) == [
        b"ZSorry, I couldn't find any host by that name. (#4.1.2)\n"]


def test_mx_pointing_at_this_host(home, dns):
    assert remote(home, dns, "self.test", ["r@self.test"]) == [OWN]


def test_better_mx_than_this_host_is_used(home, dns):
    with sink_group(["127.0.0.2"]) as (sink,):
        mx_port(home, sink.port)
        recs = remote(home, dns, "selfbackup.test", ["r@selfbackup.test"])
    assert recs[-1].startswith(b"K127.0.0.2 accepted")


def test_literals(home, dns):
    with sink_group(["127.0.0.2", "::1"]) as (v4, v6):
        assert remote(home, None, "[IPv6:::1]", ["r@[IPv6:::1]"]) == [OWN]    # our port 25
        mx_port(home, v4.port)
        assert remote(home, None, "[127.0.0.2]", ["r@[127.0.0.2]"])[-1].startswith(b"K127.0.0.2 ")
        assert remote(home, None, "[IPv6:::1]", ["r@[IPv6:::1]"])[-1].startswith(b"K::1 ")
        control(home, "smtproutes", f":[IPv6:::1]:{v4.port}\n")   # keys cannot hold ':'
        assert remote(home, None, "[IPv6:::1]", ["r@[IPv6:::1]"])[-1].startswith(b"K::1 ")
    assert (len(v4.messages), len(v6.messages)) == (1, 2)


# -- smtproutes ------------------------------------------------------------------------------

def test_smtproutes_relay_by_ip_suffix_and_name(home, dns):
    with sink_group(["127.0.0.2", "127.0.0.3", "::1"]) as (a, b, c):
        p = a.port
        control(home, "smtproutes",
                f"exact.test:127.0.0.2:{p}\n.sub.test:relay.test:{p}\nv6.test:[::1]:{p}\n"
                f"EXAMPLE.test::{p}\n")
        assert remote(home, dns, "exact.test", ["r@exact.test"])[-1].startswith(b"K127.0.0.2 ")
        assert remote(home, dns, "a.b.sub.test", ["r@a.b.sub.test"])[-1].startswith(b"K127.0.0.3 ")
        assert remote(home, dns, "v6.test", ["r@v6.test"])[-1].startswith(b"K::1 ")
        assert remote(home, dns, "example.test", ["r@example.test"])[-1].startswith(b"K127.0.0.2 ")
        # no route and no catch-all: port 25 on 127.0.0.2, where nothing listens
        assert remote(home, dns, "plain.test", ["r@plain.test"]) == [
            b"ZSorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n"]
    assert [len(s.messages) for s in (a, b, c)] == [2, 1, 1]


def test_relay_to_this_host_is_allowed(home, dns):
    with sink_group(["127.0.0.1"]) as (sink,):
        control(home, "smtproutes", f":127.0.0.1:{sink.port}\n")
        assert remote(home, dns, "self.test", ["r@self.test"])[-1].startswith(b"K127.0.0.1 ")


def test_mx_at_this_host_on_another_port_is_delivered(home, dns):
    """``domain::port``: the own-MX rule is about this host's port 25, not every port."""
    with sink_group(["127.0.0.1"]) as (sink,):
        control(home, "smtproutes", f"self.test::{sink.port}\n")
        assert remote(home, dns, "self.test", ["r@self.test"])[-1].startswith(b"K127.0.0.1 ")
        control(home, "smtproutes", "self.test::25\n")
        assert remote(home, dns, "self.test", ["r@self.test"]) == [OWN]
    assert len(sink.messages) == 1


def test_relay_nxdomain_names_the_relay(home, dns):
    control(home, "smtproutes", ":norelay.test:2525\n")
    assert remote(home, dns, "example.test", ["r@example.test"]) == [
        b"DSorry, I couldn't find any host named norelay.test. (#5.1.2)\n"]


# -- SMTP replies ----------------------------------------------------------------------------

def deliver(home, dns, rcpts, message=MSG, sender="s@example.org", **kw):
    with sink_group(["127.0.0.2"], **kw) as (sink,):
        mx_port(home, sink.port)
        recs = remote(home, dns, "example.test", rcpts, message=message, sender=sender)
        sink.wait_idle()
    return recs, sink


def test_recipient_results_in_argv_order(home, dns):
    def rcpt(arg):
        if b"perm" in arg:
            return b"550-no such user\r\n550 really not"
        if b"temp" in arg:
            return b"451 try later"
        return None
    recs, sink = deliver(home, dns, ["perm@example.test", "ok@example.test", "temp@example.test"],
                         replies={"RCPT": rcpt})
    assert recs == [
        b"h127.0.0.2 does not like recipient.\nRemote host said: 550-no such user\n550 really not\n",
        b"r",
        b"s127.0.0.2 does not like recipient.\nRemote host said: 451 try later\n",
        b"K127.0.0.2 accepted message.\nRemote host said: 250 ok queued\n"]
    assert len(sink.sessions) == 1 and sink.messages[0].rcpts == [b"ok@example.test"]


def test_no_recipient_accepted(home, dns):
    recs, sink = deliver(home, dns, ["a@example.test", "b@example.test"],
                         replies={"RCPT": b"550 nope"})
    assert recs == [b"h127.0.0.2 does not like recipient.\nRemote host said: 550 nope\n"] * 2 + [
        b"DGiving up on 127.0.0.2.\n"]
    assert b"DATA" not in sink.sessions[0].commands


@pytest.mark.parametrize("verb,reply,record", [
    ("GREETING", b"554 go away",
     b"ZConnected to 127.0.0.2 but greeting failed.\nRemote host said: 554 go away\n"),
    ("MAIL", b"553 bad sender",
     b"DConnected to 127.0.0.2 but sender was rejected.\nRemote host said: 553 bad sender\n"),
    ("MAIL", b"421 busy", b"ZConnected to 127.0.0.2 but sender was rejected.\nRemote host said: 421 busy\n"),
    ("DATA", b"554 no data", b"D127.0.0.2 failed on DATA command.\nRemote host said: 554 no data\n"),
    ("DATA", b"451 later", b"Z127.0.0.2 failed on DATA command.\nRemote host said: 451 later\n"),
    ("DOT", b"552 too big", b"D127.0.0.2 failed after I sent the message.\nRemote host said: 552 too big\n"),
    ("DOT", b"451 later", b"Z127.0.0.2 failed after I sent the message.\nRemote host said: 451 later\n"),
    ("DOT", b"250-ok\r\n250 id\0x", b"K127.0.0.2 accepted message.\nRemote host said: 250-ok\n250 id?x\n"),
])
def test_reply_codes(home, dns, verb, reply, record):
    recs, _ = deliver(home, dns, ["r@example.test"], replies={verb: reply})
    assert recs[-1] == record
    assert recs[:-1] == ([] if verb in ("GREETING", "MAIL") else [b"r"])


def test_helo_fallback_and_rejection(home, dns):
    recs, sink = deliver(home, dns, ["r@example.test"], ehlo=False)
    assert recs[-1].startswith(b"K127.0.0.2 accepted")
    assert sink.sessions[0].commands[:2] == [b"EHLO test.example", b"HELO test.example"]
    assert not sink.messages[0].params            # no SIZE without EHLO
    recs, _ = deliver(home, dns, ["r@example.test"], ehlo=False, replies={"HELO": b"501 who?"})
    assert recs == [b"ZConnected to 127.0.0.2 but my name was rejected.\nRemote host said: 501 who?\n"]


def test_connection_dropped_before_and_after_the_dot(home, dns):
    recs, _ = deliver(home, dns, ["r@example.test"], replies={"DATA": DROP})
    assert recs == [b"r", b"ZConnected to 127.0.0.2 but connection died. (#4.4.2)\n"]
    recs, _ = deliver(home, dns, ["r@example.test"], replies={"DOT": DROP})
    assert recs == [b"r", b"ZConnected to 127.0.0.2 but connection died. Possible duplicate! (#4.4.2)\n"]


def test_silent_server_times_out_as_connection_died(home, dns):
    control(home, "timeoutremote", "1\n")
    recs, _ = deliver(home, dns, ["r@example.test"], silent=True)
    assert recs == [b"ZConnected to 127.0.0.2 but connection died. (#4.4.2)\n"]
    assert (home / "queue" / "lock" / "tcpto").read_bytes() == bytes(1024)


def test_nothing_connectable(home, dns):
    mx_port(home, free_port(["127.0.0.2", "127.0.0.3"]))
    assert remote(home, dns, "example.test", ["r@example.test"]) == [
        b"ZSorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n"]


def test_connect_timeout_is_remembered_in_tcpto(home, dns):
    control(home, "timeoutconnect", "1\n")
    listener = socket.socket()
    fillers = []
    try:
        listener.bind(("127.0.0.2", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(2):   # fill the accept queue: later SYNs go unanswered
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(("127.0.0.2", port))
            fillers.append(f)
        time.sleep(0.2)
        mx_port(home, port)
        recs = remote(home, dns, "plain.test", ["r@plain.test"])
    finally:
        for f in fillers:
            f.close()
        listener.close()
    assert recs == [b"ZSorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n"]
    data = (home / "queue" / "lock" / "tcpto").read_bytes()
    assert data[:5] == bytes([127, 0, 0, 2, 1])
    r = run(home, "qmail-tcpto")
    assert r.stdout.startswith(b"127.0.0.2 timed out ") and r.stdout.endswith(b"; # recent timeouts: 1\n")


def test_recent_timeouts_skip_the_host(home, dns):
    record = bytes([127, 0, 0, 2, 2, 0, 0, 0]) + struct.pack("<I", int(time.time())) + bytes(4)
    (home / "queue" / "lock" / "tcpto").write_bytes(record + bytes(1008))
    with sink_group(["127.0.0.2", "127.0.0.3"]) as (mx1, mx2):
        mx_port(home, mx1.port)
        recs = remote(home, dns, "example.test", ["r@example.test"])
    assert recs[-1].startswith(b"K127.0.0.3 accepted") and not mx1.sessions
    with sink_group(["127.0.0.2"]) as (mx1,):
        mx_port(home, mx1.port)
        assert remote(home, dns, "plain.test", ["r@plain.test"]) == [
            b"ZSorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n"]
        assert not mx1.sessions


# -- ESMTP ---------------------------------------------------------------------------------

def test_pipelining_sends_mail_and_rcpts_in_one_write(home, dns):
    recs, sink = deliver(home, dns, ["a@example.test", "b@example.test"])
    assert recs[:2] == [b"r", b"r"] and recs[2].startswith(b"K")
    raw = bytes(sink.sessions[0].raw)
    assert b"MAIL FROM:<s@example.org>\r\nRCPT TO:<a@example.test>\r\nRCPT TO:<b@example.test>\r\n" in raw
    assert sink.sessions[0].chunks[1].startswith(b"MAIL FROM:<s@example.org>\r\nRCPT TO:<a@example.test>\r\n"
                                                 b"RCPT TO:<b@example.test>\r\n")
    assert sink.messages[0].rcpts == [b"a@example.test", b"b@example.test"]


def test_without_pipelining_each_command_waits_for_its_reply(home, dns):
    seen = []

    def rcpt(arg):
        seen.append(bytes(sink_ref[0].sessions[0].raw))
        return None
    sink_ref = []
    with sink_group(["127.0.0.2"], extensions=(b"8BITMIME",), replies={"RCPT": rcpt}) as (sink,):
        sink_ref.append(sink)
        mx_port(home, sink.port)
        remote(home, dns, "example.test", ["a@example.test", "b@example.test"])
    assert seen[0].endswith(b"RCPT TO:<a@example.test>\r\n")     # b not sent before a's reply
    assert sink.messages[0].params == b""                         # no SIZE offered, none sent


def test_starttls_when_offered(home, dns, tmp_path):
    cert, key = make_cert(tmp_path)
    recs, sink = deliver(home, dns, ["r@example.test"], tls="ok", certfile=cert, keyfile=key)
    assert recs[-1] == (b"K127.0.0.2 accepted message.\nRemote host said: 250 ok queued\n"
                        b"TLS: " + sink.sessions[0].tls_cipher + b"\n")   # the log line says it
    assert sink.messages[0].tls and sink.messages[0].data == crlf(MSG)
    assert sink.sessions[0].commands[:3] == [b"EHLO test.example", b"STARTTLS", b"EHLO test.example"]


def test_tls_session_ends_with_close_notify(home, dns, tmp_path):
    cert, key = make_cert(tmp_path)
    recs, sink = deliver(home, dns, ["r@example.test"], tls="ok", certfile=cert, keyfile=key)
    assert recs[-1].startswith(b"K127.0.0.2 accepted")
    sink.wait_idle()
    assert sink.sessions[0].commands[-1] == b"QUIT"
    assert sink.sessions[0].tls_closed is True


def test_failed_tls_handshake_retries_in_plain_text(home, dns):
    recs, sink = deliver(home, dns, ["r@example.test"], tls="broken")
    assert recs == [b"r", b"K127.0.0.2 accepted message.\nRemote host said: 250 ok queued\n"
                          b"TLS: handshake failed, sent without TLS\n"]
    assert len(sink.sessions) == 2 and b"STARTTLS" not in sink.sessions[1].commands
    assert not sink.messages[0].tls


def test_smtputf8_when_offered_and_needed(home, dns):
    rcpt = "jos\u00e9@example.test"
    recs, sink = deliver(home, dns, [rcpt], extensions=(b"SMTPUTF8",))
    assert recs[0] == b"r"
    assert sink.messages[0].params == b"SMTPUTF8"
    assert sink.messages[0].rcpts == ["jos\u00e9@example.test".encode()]   # RFC 6531: no quotes


UTF8_HEADER = "From: Jos\u00e9 <a@example.org>\nSubject: caf\u00e9\n\nHello.\n".encode()


@pytest.mark.parametrize("source", ["pipe", "file"])
def test_smtputf8_for_a_utf8_header_with_an_ascii_envelope(home, dns, tmp_path, source):
    with sink_group(["127.0.0.2"], extensions=(b"SMTPUTF8",)) as (sink,):
        mx_port(home, sink.port)
        if source == "pipe":
            recs = remote(home, dns, "example.test", ["r@example.test"], message=UTF8_HEADER)
        else:
            (tmp_path / "msg").write_bytes(UTF8_HEADER)
            with open(tmp_path / "msg", "rb") as f:
                recs = remote(home, dns, "example.test", ["r@example.test"], stdin=f)
    assert recs[-1].startswith(b"K")
    assert sink.messages[0].params.split()[-1] == b"SMTPUTF8"
    assert sink.messages[0].data == crlf(UTF8_HEADER)      # the bytes read ahead are sent once


def test_no_smtputf8_for_utf8_only_in_the_body(home, dns):
    msg = "Subject: plain\n\ncaf\u00e9\n".encode()
    recs, sink = deliver(home, dns, ["r@example.test"], message=msg, extensions=(b"SMTPUTF8",))
    assert recs[-1].startswith(b"K")
    assert b"SMTPUTF8" not in sink.messages[0].params
    assert sink.messages[0].data == crlf(msg)


def test_utf8_header_to_a_server_without_smtputf8_is_sent_as_is(home, dns):
    recs, sink = deliver(home, dns, ["r@example.test"], message=UTF8_HEADER)
    assert recs[-1].startswith(b"K")
    assert b"SMTPUTF8" not in sink.messages[0].params
    assert sink.messages[0].data == crlf(UTF8_HEADER)


def test_utf8_deep_in_a_long_header(home, dns):
    # The header spans several reads; the only non-ASCII byte is near its end.
    msg = b"".join(b"X-Pad-%d: %s\n" % (i, b"p" * 70) for i in range(2000))
    msg += "Subject: \u00fcber\n\n".encode() + b"body\n" * 10
    recs, sink = deliver(home, dns, ["r@example.test"], message=msg, extensions=(b"SMTPUTF8",))
    assert recs[-1].startswith(b"K")
    assert sink.messages[0].params.split()[-1] == b"SMTPUTF8"
    assert sink.messages[0].data == crlf(msg)


# -- addresses ------------------------------------------------------------------------------

def test_address_quoting_and_null_sender(home, dns):
    recs, sink = deliver(home, dns, ["a b@example.test", ".x@example.test"], sender="")
    assert recs[-1].startswith(b"K")
    cmds = sink.sessions[0].commands
    assert cmds[1] == b"MAIL FROM:<>"
    assert cmds[2:4] == [b'RCPT TO:<"a b"@example.test>', b'RCPT TO:<".x"@example.test>']


def test_cr_lf_in_an_address_is_never_sent(home, dns):
    recs, sink = deliver(home, dns, ["a@example.test\r\nRSET", "ok@example.test"])
    assert recs[0] == b"hSorry, I won't send an address containing CR, LF or NUL. (#5.1.3)\n"
    assert recs[1:2] == [b"r"] and recs[2].startswith(b"K")
    assert b"RSET" not in bytes(sink.sessions[0].raw)


# -- the message ----------------------------------------------------------------------------

SMUGGLING = [
    # stored message → what a strict CRLF.CRLF receiver must store
    (b"Subject: a\n\nx\r.\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<v@example.test>\r\nDATA\r\nbad\r\n.\r\n",
     b"Subject: a\r\n\r\nx\r\n.\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<v@example.test>\r\nDATA\r\nbad\r\n.\r\n"),
    (b"Subject: b\n\nx\n.\nMAIL FROM:<evil@x>\n", b"Subject: b\r\n\r\nx\r\n.\r\nMAIL FROM:<evil@x>\r\n"),
    (b"Subject: c\n\nx\r.\rMAIL FROM:<evil@x>\r\n", b"Subject: c\r\n\r\nx\r\n.\r\nMAIL FROM:<evil@x>\r\n"),
    (b"Subject: d\n\nx\n.\r\nMAIL FROM:<evil@x>\n", b"Subject: d\r\n\r\nx\r\n.\r\nMAIL FROM:<evil@x>\r\n"),
    (b"Subject: e\n\nx\r\n.\rMAIL\n", b"Subject: e\r\n\r\nx\r\n.\r\nMAIL\r\n"),
    (b"Subject: f\n\n.\n..\n...\n", b"Subject: f\r\n\r\n.\r\n..\r\n...\r\n"),
    (b"Subject: g\n\n\r\n.\r\n\r\n", b"Subject: g\r\n\r\n\r\n.\r\n\r\n"),
]


@pytest.mark.parametrize("stored,received", SMUGGLING)
def test_smuggling_matrix(home, dns, stored, received):
    recs, sink = deliver(home, dns, ["r@example.test"], message=stored)
    assert recs == [b"r", b"K127.0.0.2 accepted message.\nRemote host said: 250 ok queued\n"]
    assert len(sink.messages) == 1
    assert sink.messages[0].data == received
    assert sink.sessions[0].commands[-1] == b"QUIT"


def test_eight_bit_dots_and_long_lines_arrive_intact(home, dns):
    body = b"".join([b"Subject: \xe9t\xe9\n\n", b".leading dot\n", bytes(range(128, 256)) + b"\n",
                     b"y" * 990 + b"\n", b"..two\n", b"end\n"])
    recs, sink = deliver(home, dns, ["r@example.test"], message=body)
    assert recs[-1].startswith(b"K")
    assert sink.messages[0].data == crlf(body)


def test_partial_final_line_from_a_pipe(home, dns):
    recs, sink = deliver(home, dns, ["r@example.test"], message=b"Subject: x\n\nno newline")
    assert recs == [b"r", b"DSMTP cannot transfer messages with partial final lines. (#5.6.2)\n"]
    assert not sink.messages


def test_partial_final_line_from_a_file_needs_no_connection(home, dns, tmp_path):
    path = tmp_path / "msg"
    path.write_bytes(b"Subject: x\n\nno newline")
    with sink_group(["127.0.0.2"]) as (sink,):
        mx_port(home, sink.port)
        with open(path, "rb") as f:
            recs = remote(home, dns, "example.test", ["r@example.test"], stdin=f)
    assert recs == [b"DSMTP cannot transfer messages with partial final lines. (#5.6.2)\n"]
    assert not sink.sessions


def test_message_from_a_seekable_file(home, dns, tmp_path):
    body = MSG * 5000
    path = tmp_path / "msg"
    path.write_bytes(body)
    with sink_group(["127.0.0.2"]) as (sink,):
        mx_port(home, sink.port)
        with open(path, "rb") as f:
            recs = remote(home, dns, "example.test", ["r@example.test"], stdin=f)
    assert recs[-1].startswith(b"K")
    assert sink.messages[0].data == crlf(body)
    assert sink.messages[0].params == b"SIZE=%d" % len(body)


def test_warm_run_in_a_forked_child(home, dns, tmp_path, monkeypatch):
    """How qmail-rspawn runs it: fork, fds 0/1 placed, qpy.warm.run, exit code 0."""
    monkeypatch.setenv("QPY_NAMESERVERS", dns.spec)
    path = tmp_path / "msg"
    path.write_bytes(MSG)
    with sink_group(["127.0.0.2"]) as (sink,):
        mx_port(home, sink.port)
        rfd, wfd = os.pipe()
        msgfd = os.open(path, os.O_RDONLY)
        pid = os.fork()
        if pid == 0:
            try:
                warm.place_fds({0: msgfd, 1: wfd, 2: wfd}, keep=())
                code = warm.run("qmail-remote", ["example.test", "s@example.org", "r@example.test"])
            except BaseException:
                code = 99
            warm.child_exit(code)
        os.close(wfd)
        os.close(msgfd)
        out = b""
        while chunk := os.read(rfd, 4096):
            out += chunk
        os.close(rfd)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert out == b"r\0K127.0.0.2 accepted message.\nRemote host said: 250 ok queued\n\0"


def test_exec_and_subprocess_agree_on_usage(home):
    r = subprocess.run(["qmail-remote"], capture_output=True, timeout=60,
                       env=dict(os.environ, QMAILHOME=str(home)))
    assert (r.returncode, r.stdout) == (0, b"DI (qmail-remote) was invoked improperly. (#5.3.5)\n\0")
