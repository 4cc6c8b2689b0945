"""qpy.mx against the loopback DNS server: order, fallbacks, and qmail's outcome classes."""
from __future__ import annotations

import random
import subprocess
import sys

import pytest

from dnsserver import DNSServer
from qpy import mx
from qpy.mx import Target

ZONE = {
    "two.test": [("MX", "20 mx2.two.test."), ("MX", "10 mx1.two.test.")],
    "mx1.two.test": [("A", "127.0.0.2")],
    "mx2.two.test": [("A", "127.0.0.3"), ("AAAA", "::1")],
    "same.test": [("MX", "10 a.same.test."), ("MX", "10 b.same.test.")],
    "a.same.test": [("A", "127.0.0.2")],
    "b.same.test": [("A", "127.0.0.3")],
    "plain.test": [("A", "127.0.0.4"), ("AAAA", "::1")],
    "six.test": [("AAAA", "::1")],
    "alias.test": [("CNAME", "two.test.")],
    "cnamemx.test": [("MX", "5 host.cnamemx.test.")],
    "host.cnamemx.test": [("CNAME", "real.cnamemx.test.")],
    "real.cnamemx.test": [("A", "127.0.0.5")],
    "halfbroken.test": [("MX", "10 broken.test."), ("MX", "20 mx1.two.test.")],
    "allbroken.test": [("MX", "10 broken.test.")],
    "dangling.test": [("MX", "10 nowhere.test.")],
    "nullmx.test": [("MX", "0 .")],
    "empty.test": [("TXT", '"nothing here"')],
    "literalmx.test": [("MX", "10 127.0.0.6.")],
}


@pytest.fixture
def dns(home, monkeypatch):
    with DNSServer(ZONE, servfail={"broken.test", "servfail.test"}) as srv:
        monkeypatch.setenv("QPY_NAMESERVERS", srv.spec)
        yield srv


def test_mx_in_preference_order_with_a_and_aaaa(dns):
    assert mx.mx_targets(b"two.test") == [
        Target(10, "127.0.0.2"), Target(20, "127.0.0.3"), Target(20, "::1")]


def test_equal_preferences_come_in_random_order(dns):
    orders = {tuple(t.ip for t in mx.mx_targets(b"same.test", random.Random(seed)))
              for seed in range(20)}
    assert orders == {("127.0.0.2", "127.0.0.3"), ("127.0.0.3", "127.0.0.2")}


def test_no_mx_falls_back_to_a_and_aaaa(dns):
    assert mx.mx_targets(b"plain.test") == [Target(0, "127.0.0.4"), Target(0, "::1")]
    assert mx.mx_targets(b"six.test") == [Target(0, "::1")]


def test_cnames_are_followed(dns):
    assert mx.mx_targets(b"alias.test")[0] == Target(10, "127.0.0.2")
    assert mx.mx_targets(b"cnamemx.test") == [Target(5, "127.0.0.5")]


def test_nxdomain_is_permanent_with_qmail_text(dns):
    with pytest.raises(mx.NoSuchHost) as e:
        mx.mx_targets(b"nowhere.test")
    assert e.value.text == "Sorry, I couldn't find any host named nowhere.test. (#5.1.2)"
    assert e.value.letter == "D"


def test_servfail_is_temporary(dns):
    with pytest.raises(mx.DnsTemp) as e:
        mx.mx_targets(b"servfail.test")
    assert e.value.text == "Sorry, I couldn't find any host by that name. (#4.1.2)"
    assert e.value.letter == "Z"
    with pytest.raises(mx.DnsTemp):
        mx.mx_targets(b"allbroken.test")


def test_one_broken_exchanger_does_not_stop_the_others(dns):
    assert mx.mx_targets(b"halfbroken.test") == [Target(20, "127.0.0.2")]


def test_nothing_usable_is_5_4_4(dns):
    for host in (b"dangling.test", b"nullmx.test"):
        with pytest.raises(mx.NoMailExchanger) as e:
            mx.mx_targets(host)
        assert e.value.text == "Sorry, I couldn't find a mail exchanger or IP address. (#5.4.4)"


def test_name_without_addresses_is_no_such_host(dns):
    with pytest.raises(mx.NoSuchHost):
        mx.mx_targets(b"empty.test")


def test_literals_need_no_dns(dns):
    assert mx.mx_targets(b"[127.0.0.9]") == [Target(0, "127.0.0.9")]
    assert mx.mx_targets(b"127.0.0.9") == [Target(0, "127.0.0.9")]
    assert mx.mx_targets(b"[IPv6:::1]") == [Target(0, "::1")]
    assert mx.relay_targets(b"[::1]") == [Target(0, "::1")]
    assert mx.mx_targets(b"literalmx.test") == [Target(10, "127.0.0.6")]
    assert dns.queries == [("literalmx.test", "MX")]


def test_relay_uses_addresses_never_mx(dns):
    assert mx.relay_targets(b"mx2.two.test") == [Target(0, "127.0.0.3"), Target(0, "::1")]
    with pytest.raises(mx.NoSuchHost):
        mx.relay_targets(b"two.test")      # has MX records only
    assert ("two.test", "MX") not in dns.queries


def test_literal_relay_does_not_import_dnspython():
    code = ("import sys; from qpy import mx; print(mx.relay_targets(b'[127.0.0.1]'));"
            "assert not any(m == 'dns' or m.startswith('dns.') for m in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_own_addresses_include_loopback():
    own = mx.own_ips()
    assert {"127.0.0.1", "::1", "0.0.0.0"} <= own
    assert "127.0.0.2" not in own


def test_drop_own():
    own = {"127.0.0.1", "::1"}
    targets = [Target(5, "127.0.0.2"), Target(10, "127.0.0.1"), Target(20, "127.0.0.3")]
    assert mx.drop_own(targets, own) == [Target(5, "127.0.0.2")]
    assert mx.drop_own([Target(20, "127.0.0.3")], own) == [Target(20, "127.0.0.3")]
    for targets in ([Target(10, "127.0.0.1"), Target(20, "127.0.0.3")],
                    [Target(0, "::ffff:127.0.0.1")],
                    [Target(10, "127.0.0.3"), Target(10, "::1")]):
        with pytest.raises(mx.OwnMX) as e:
            mx.drop_own(targets, own)
    assert e.value.text == ("Sorry. Although I'm listed as a best-preference MX or A for that host,\n"
                            "it isn't in my control/locals file, so I don't treat it as local. (#5.4.6)")
