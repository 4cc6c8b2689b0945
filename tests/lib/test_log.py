"""qpy.log: qmail-send's log lines, byte for byte (docs/protocols.md §8)."""
from __future__ import annotations

import os

from qpy import log


def test_line_formats():
    assert log.status((1, 0), (10, 20)) == b"status: local 1/10 remote 0/20"
    assert log.status((0, 3), (10, 20), True) == b"status: local 0/10 remote 3/20 exitasap"
    assert log.exiting() == b"status: exiting"
    assert log.new_msg(457) == b"new msg 457"
    assert log.info_msg(457, 1203, b"joe@a.example", 3141, 1001) == \
        b"info msg 457: bytes 1203 from <joe@a.example> qp 3141 uid 1001"
    assert log.starting_delivery(1, 457, 0, b"bob@b.example") == \
        b"starting delivery 1: msg 457 to local bob@b.example"
    assert log.starting_delivery(2, 457, 1, b"x@c.example") == \
        b"starting delivery 2: msg 457 to remote x@c.example"
    assert log.bounce_msg(457, 3150) == b"bounce msg 457 qp 3150"
    assert log.triple_bounce(457) == b"triple bounce: discarding bounce/457"
    assert log.end_msg(457) == b"end msg 457"


def test_delivery_results_and_logsafe_reports():
    assert log.delivery(3, "K", b"did 0+0+1\n") == b"delivery 3: success: did_0+0+1/"
    assert log.delivery(3, "Z", b"Sorry\n100% full\x01\n") == \
        b"delivery 3: deferral: Sorry/100__full_/"
    assert log.delivery(3, "D", b"no\xffway") == b"delivery 3: failure: no_way"
    assert log.delivery(3, "X", b"whatever") == b"delivery 3: report mangled, will defer"
    assert log.delivery(3, "", b"") == b"delivery 3: report mangled, will defer"


def test_sender_and_recipient_are_logsafe():
    assert log.info_msg(1, 2, b"a b\n%c", 3, 4) == b"info msg 1: bytes 2 from <a_b/_c> qp 3 uid 4"
    assert log.starting_delivery(1, 2, 0, b"t\tx@y") == b"starting delivery 1: msg 2 to local t_x@y"


def test_log_writes_one_line_per_call_and_survives_a_dead_reader():
    r, w = os.pipe()
    lg = log.Log(w)
    lg.line(b"new msg 1")
    lg.warning("unable to stat mess/1/1")
    lg.alert(b"cannot start: qmail-send is already running")
    os.close(w)
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    assert data == (b"new msg 1\nwarning: unable to stat mess/1/1\n"
                    b"alert: cannot start: qmail-send is already running\n")
    r, w = os.pipe()
    os.close(r)
    log.Log(w).line(b"nobody listens")  # EPIPE is ignored (SIGPIPE is ignored by Python)
    os.close(w)
