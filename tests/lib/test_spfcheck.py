"""qpy.spfcheck and qpy.clientcheck's pieces that need no SMTP: spfbehavior's table, check()
on a DNS budget, HELO syntax; qpy.dnsbudget's accounting."""
from __future__ import annotations

import time

import pytest
import spf

from dnsserver import DNSServer
from qpy import clientcheck, controlfiles, spfcheck
from qpy.dnsbudget import Budget
from qpy.spfcheck import Verdict


def verdict(result: str, explanation: str = "") -> Verdict:
    return Verdict(result, "mailfrom", "d.example", "a@d.example", "192.0.2.7", "h.example",
                   explanation)


@pytest.mark.parametrize("result, first", [
    ("pass", 8), ("temperror", 2), ("fail", 3), ("softfail", 4), ("neutral", 5), ("none", 6),
    ("permerror", 6),
])
def test_refusal_by_level(result, first):
    """Each level refuses what the one below does, and its own result; pass never."""
    for level in range(8):
        reply = spfcheck.refusal(verdict(result, "why"), level)
        if level < first:
            assert reply is None, (result, level)
        elif result == "temperror":
            assert reply == b"451 SPF temperror for d.example: DNS trouble, try again later (#4.7.24)"
        else:
            code = {"fail": b"5.7.23", "permerror": b"5.7.24"}.get(result, b"5.7.1")
            assert reply == b"550 SPF %s for d.example: why (#%s)" % (result.encode(), code)
    assert spfcheck.refusal(None, 6) is None


def test_received_spf_values_are_dot_atoms_or_quoted_strings():
    v = Verdict("neutral", "mailfrom", "d.example", 'a"b c@d.example', "2001:db8::7",
                "JUMPIN' JUPITER\r\nX-Injected: 1")
    assert v.received_spf("mx.example") == (
        b"Received-SPF: neutral (mx.example: domain of a\"b c@d.example neither permits nor"
        b" denies 2001:db8::7 as permitted sender)\n"
        b'\tclient-ip="2001:db8::7";\n\tenvelope-from="a\\"b c@d.example";\n'
        b"\thelo=\"JUMPIN' JUPITER??X-Injected: 1\";\n\treceiver=mx.example;\n\tidentity=mailfrom\n")


def test_the_built_in_explanation_is_the_documented_one():
    spfexp = controlfiles.entry("spfexp")
    assert spfcheck.DEFAULT_EXP in spfexp.absent and spfcheck.DEFAULT_EXP in spfexp.meaning


def test_check_on_a_spent_budget_or_a_silent_server_is_temperror(home, monkeypatch):
    with DNSServer({"d.example": [("TXT", '"v=spf1 -all"')]}, drop={"slow.example"}) as srv:
        monkeypatch.setenv("QPY_NAMESERVERS", srv.spec)
        budget = Budget(total=10, per_lookup=1)
        assert spfcheck.check("192.0.2.7", "a@d.example", "h", budget).result == "fail"
        started = time.monotonic()
        v = spfcheck.check("192.0.2.7", "a@slow.example", "h", budget)
        assert v.result == "temperror" and time.monotonic() - started < 3
        assert 0.9 < budget.spent < 3
        asked = len(srv.queries)
        spent = Budget(total=0, per_lookup=1)
        assert spfcheck.check("192.0.2.7", "a@d.example", "h", spent).result == "temperror"
        assert len(srv.queries) == asked            # not even asked
    assert spf.DNSLookup is not None


def test_check_without_an_identity_or_an_address(home):
    budget = Budget(total=0, per_lookup=1)
    assert spfcheck.check("192.0.2.7", "", None, budget) == Verdict(
        "none", "helo", "", "", "192.0.2.7", "")
    v = spfcheck.check("unknown", "a@d.example", "h.example", budget)
    assert (v.result, v.identity, v.domain, v.sender) == ("none", "mailfrom", "d.example",
                                                          "a@d.example")


def test_budget_counts_only_time_spent_in_lookups(home):
    budget = Budget(total=2, per_lookup=1)
    time.sleep(0.3)
    assert budget.remaining() == 2.0 and budget.lifetime() == 1.0


@pytest.mark.parametrize("helo, ok", [
    (b"mx.example.com", True), (b"mx.example.com.", True), (b"mx.example.com \t", True),
    (b"[192.0.2.1]", True), (b"[IPv6:2001:db8::1]", True), (b"mx", False),
    (b"mx.example.com.." , False), (b"mx.-x.com", False), (b"1.2.3.4", False),
    (b"[1.2.3.4.5]", False), (b"[IPv6:1.2.3.4]", False), (b"m\xc3\xa9l.example", False),
    (b"x." * 126 + b"com", False), (b"a.b", True),
])
def test_helo_valid(helo, ok):
    assert clientcheck.helo_valid(helo) is ok
