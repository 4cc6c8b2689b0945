"""qpy.resolver points dnspython at the configured server; the test DNS server answers."""
from __future__ import annotations

import dns.resolver
import pytest

from dnsserver import DNSServer
from qpy import resolver


def test_parse_server_forms():
    assert resolver.parse_server("1.2.3.4") == ("1.2.3.4", 53)
    assert resolver.parse_server("1.2.3.4:5353") == ("1.2.3.4", 5353)
    assert resolver.parse_server("::1") == ("::1", 53)
    assert resolver.parse_server("[::1]:5353") == ("::1", 5353)


def test_queries_reach_the_configured_server(monkeypatch, home):
    zone = {"example.test": [("MX", "10 mx.example.test."), ("TXT", '"hello"')],
            "mx.example.test": [("A", "127.0.0.3")],
            "alias.example.test": [("CNAME", "mx.example.test.")]}
    with DNSServer(zone, servfail={"broken.test"}) as srv:
        monkeypatch.setenv("QPY_NAMESERVERS", srv.spec)
        res = resolver.make_resolver(timeout=3)
        mx = res.resolve("example.test", "MX")
        assert [(r.preference, r.exchange.to_text()) for r in mx] == [(10, "mx.example.test.")]
        assert [r.address for r in res.resolve("alias.example.test", "A")] == ["127.0.0.3"]
        with pytest.raises(dns.resolver.NXDOMAIN):
            res.resolve("nowhere.test", "A")
        with pytest.raises(dns.resolver.NoNameservers):
            res.resolve("broken.test", "A")
        res.use_tcp = True
        assert [r.address for r in res.resolve("mx.example.test", "A", tcp=True)] == ["127.0.0.3"]
        assert ("example.test", "MX") in srv.queries


def test_control_file_names_the_server(monkeypatch, home):
    monkeypatch.delenv("QPY_NAMESERVERS", raising=False)
    with DNSServer({"a.test": [("A", "127.0.0.9")]}) as srv:
        (home / "control" / "nameservers").write_text(srv.spec + "\n")
        res = resolver.make_resolver(timeout=3)
        assert [r.address for r in res.resolve("a.test", "A")] == ["127.0.0.9"]
