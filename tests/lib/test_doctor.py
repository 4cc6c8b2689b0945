"""qpy.doctor's pieces that need no zone: certificate names, the SPF hook, the report."""
from __future__ import annotations

import datetime

import pytest
import spf

from conftest import control
from dnsserver import DNSServer
from qpy import doctor
from qpy.doctor import FAIL, OK, WARN, Check


@pytest.mark.parametrize("pattern, name, matches", [
    ("mx.a.test", "MX.A.test.", True),
    ("*.a.test", "mx.a.test", True),
    ("*.a.test", "a.test", False),
    ("*.a.test", "x.mx.a.test", False),
    ("*.test", "a.test", False),            # a wildcard needs two labels after it
    ("m*.a.test", "mx.a.test", False),      # partial wildcards are not honoured
    ("mx.*.test", "mx.a.test", False),
])
def test_name_matches(pattern, name, matches):
    assert doctor.name_matches(pattern, name) is matches


def test_check_cert_missing_and_window(home):
    assert doctor.check_cert(["mx.a.test"]).status == WARN       # no control/servercert.pem
    control(home, "servercert.pem", b"not a certificate")
    assert doctor.check_cert(["mx.a.test"]) == Check(
        FAIL, "cert", "control/servercert.pem holds no certificate that parses")


def test_check_cert_not_yet_valid(home, certificate):
    control(home, "servercert.pem", certificate)
    past = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
    check = doctor.check_cert(["mx.test.example"], now=past)
    assert check.status == FAIL and "valid only from" in check.text


def test_spf_hook_uses_our_resolver_and_is_restored(home, monkeypatch):
    saved = spf.DNSLookup
    zone = {"a.test": [("TXT", '"v=spf1 a:h.a.test -all"')], "h.a.test": [("A", "192.0.2.7")]}
    with DNSServer(zone) as srv:
        monkeypatch.setenv("QPY_NAMESERVERS", srv.spec)
        host = doctor.Host("h.a.test", "h.a.test", "192.0.2.7", True)
        assert doctor.spf_evaluate(doctor.Lookup(), host, "a.test")[0] == "pass"
        assert ("h.a.test", "A") in srv.queries
    assert spf.DNSLookup is saved


def test_spf_lookups_loop_and_redirect_beside_all(home, monkeypatch):
    zone = {"a.test": [("TXT", '"v=spf1 include:b.test -all"')],
            "b.test": [("TXT", '"v=spf1 include:a.test -all"')],
            "c.test": [("TXT", '"v=spf1 redirect=d.test"')],
            "d.test": [("TXT", '"v=spf1 mx a -all redirect=a.test"')]}
    with DNSServer(zone) as srv:
        monkeypatch.setenv("QPY_NAMESERVERS", srv.spec)
        look = doctor.Lookup()
        with pytest.raises(doctor.SpfError, match="includes a.test in a loop"):
            doctor.spf_lookups(look, "a.test", "v=spf1 include:b.test -all")
        assert doctor.spf_lookups(look, "c.test", "v=spf1 redirect=d.test") == 3
        with pytest.raises(doctor.SpfError, match="include:a..test in the SPF record of e.test: "
                                                  "no SPF record there"):
            doctor.spf_lookups(look, "e.test", "v=spf1 include:a..test -all")


def test_report_lists_each_fix_once_and_exit_code():
    checks = [Check(OK, "mx", "fine", ("not shown",)), Check(WARN, "a", "w", ("x",)),
              Check(FAIL, "b", "f", ("x", "y"))]
    assert doctor.report(checks) == ("ok    mx: fine\nwarn  a: w\nfail  b: f\n\n"
                                     "; records to publish\nx\ny\n")
    assert doctor.exit_code(checks) == 1 and doctor.exit_code(checks[:2]) == 0


def test_default_domains(home):
    control(home, "me", "mx.a.test\n")
    assert doctor.default_domains() == ["a.test"]
    control(home, "me", "a.test\n")
    assert doctor.default_domains() == ["a.test"]
    control(home, "dkimdomains", "b.test:s1\nc.test:s2\n")
    assert doctor.default_domains() == ["b.test", "c.test"]
