"""qpy doctor against good and broken zones on the loopback DNS server.

Real keys (``qpy dkim keygen``), real certificates (cryptography, and conftest's openssl one),
real DNS (tests/dnsserver.py through QPY_NAMESERVERS); each broken zone breaks one thing.
"""
from __future__ import annotations

import datetime
import json
import re
import socket
from pathlib import Path

import pytest

from conftest import control
from dnsserver import DNSServer
from qpy.programs.qpy import main

DOMAIN = "good.test"
MX = "mx.good.test"
IP = "192.0.2.25"
PTR = "25.2.0.192.in-addr.arpa"


def make_cert(names: list[str], days_from: int = -1, days_to: int = 90) -> bytes:
    """A self-signed certificate for ``names`` (SAN) and its key, in one PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now + datetime.timedelta(days=days_from))
            .not_valid_after(now + datetime.timedelta(days=days_to))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM)
            + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()))


def keygen(home: Path, domain: str, selector: str, kind: str) -> str:
    """``qpy dkim keygen``; returns the TXT rdata text of the record it asks to publish."""
    assert main(["dkim", "keygen", domain, "--selector", selector, "--type", kind,
                 "--home", str(home)]) == 0
    line = (home / "control" / "domainkeys" / domain / f"{selector}.pub").read_text()
    return re.search(r"\((.*)\)", line)[1].strip()


@pytest.fixture
def site(home, capsys):
    """An instance that sends for good.test (two keys, a certificate) and a zone where all is well."""
    control(home, "me", MX + "\n")
    rsa = keygen(home, DOMAIN, "rsa1", "rsa")
    ed = keygen(home, DOMAIN, "ed1", "ed25519")
    (home / "control" / "servercert.pem").write_bytes(make_cert([MX]))
    capsys.readouterr()
    zone = {
        DOMAIN: [("MX", f"10 {MX}."), ("TXT", f'"v=spf1 ip4:{IP} -all"'),
                 ("TXT", '"google-site-verification=abc"')],
        MX: [("A", IP)],
        PTR: [("PTR", f"{MX}.")],
        f"rsa1._domainkey.{DOMAIN}": [("TXT", rsa)],
        f"ed1._domainkey.{DOMAIN}": [("TXT", ed)],
        f"_dmarc.{DOMAIN}": [("TXT", f'"v=DMARC1; p=quarantine; rua=mailto:postmaster@{DOMAIN}"')],
        f"_mta-sts.{DOMAIN}": [("TXT", '"v=STSv1; id=20240101T000000"')],
        f"_smtp._tls.{DOMAIN}": [("TXT", f'"v=TLSRPTv1; rua=mailto:tls@{DOMAIN}"')],
    }
    return home, zone


def doctor(site, capsys, monkeypatch, *args: str, servfail=frozenset()) -> tuple[int, list[str]]:
    """Serve the site's zone and run ``qpy doctor``; (exit code, output lines)."""
    home, zone = site
    with DNSServer(zone, servfail=set(servfail)) as srv:
        monkeypatch.setenv("QPY_NAMESERVERS", srv.spec)
        code = main(["doctor", "--home", str(home), *(args or (DOMAIN, "--ip", IP))])
    return code, capsys.readouterr().out.splitlines()


def line(lines: list[str], start: str) -> str:
    """The one output line starting with ``start``."""
    found = [l for l in lines if l.startswith(start)]
    assert len(found) == 1, (start, lines)
    return found[0]


def records(lines: list[str]) -> list[str]:
    """The records suggested after the checks."""
    return lines[lines.index("; records to publish") + 1:] if "; records to publish" in lines else []


def test_good_zone_is_all_ok(site, capsys, monkeypatch):
    code, lines = doctor(site, capsys, monkeypatch)
    assert code == 0, lines
    assert [l.split(":")[0] for l in lines] == [
        "ok    mx", "ok    ptr", "ok    spf", "ok    dkim rsa1", "ok    dkim ed1", "ok    dmarc",
        "ok    cert", "ok    mta-sts", "ok    tls-rpt"]
    assert line(lines, "ok    mx") == f"ok    mx: {DOMAIN} MX 10 {MX} (this host)"
    assert line(lines, "ok    ptr") == f"ok    ptr: {IP} PTR {MX}, which resolves back to {IP}"
    assert line(lines, "ok    spf") == (f"ok    spf: {DOMAIN}: 'v=spf1 ip4:{IP} -all' passes "
                                        f"for {IP} (0 DNS lookups)")
    assert line(lines, "ok    dkim rsa1") == (f"ok    dkim rsa1: rsa1._domainkey.{DOMAIN} "
                                              f"publishes the rsa key (signing)")
    assert line(lines, "ok    dkim ed1").endswith("publishes the ed25519 key (signing)")
    assert line(lines, "ok    cert").startswith(f"ok    cert: the certificate covers {MX} until ")
    assert records(lines) == []


def test_without_domain_checks_the_dkimdomains_domains_and_json(site, capsys, monkeypatch):
    code, lines = doctor(site, capsys, monkeypatch, "--ip", IP, "--json")
    report = json.loads("\n".join(lines))
    assert code == 0 and report["ok"] is True and report["records"] == []
    assert report["checks"][0] == {"status": "ok", "name": "mx",
                                   "text": f"{DOMAIN} MX 10 {MX} (this host)", "fix": []}


def test_no_spf(site, capsys, monkeypatch):
    site[1][DOMAIN] = [r for r in site[1][DOMAIN] if "spf1" not in r[1]]
    code, lines = doctor(site, capsys, monkeypatch)
    assert code == 1
    assert line(lines, "fail  spf") == f"fail  spf: no SPF record (v=spf1 TXT) at {DOMAIN}"
    assert records(lines) == [f'{DOMAIN}. IN TXT "v=spf1 ip4:{IP} -all"']


def test_spf_needing_eleven_lookups(site, capsys, monkeypatch):
    zone = site[1]
    zone[DOMAIN][1] = ("TXT", f'"v=spf1 ip4:{IP} a mx include:_spf.{DOMAIN} -all"')
    zone[f"_spf.{DOMAIN}"] = [("TXT", '"v=spf1 a:a.good.test mx:b.good.test ptr '
                                      f'include:_more.{DOMAIN} ~all"')]
    zone[f"_more.{DOMAIN}"] = [("TXT", '"v=spf1 exists:x.good.test a a a -all"')]
    code, lines = doctor(site, capsys, monkeypatch)
    assert code == 1
    assert line(lines, "fail  spf") == (f"fail  spf: the SPF record of {DOMAIN} needs 11 DNS "
                                        f"lookups; RFC 7208 §4.6.4 allows 10")
    assert f'{DOMAIN}. IN TXT "v=spf1 ip4:{IP} -all"' in records(lines)


def test_spf_that_fails_for_the_address(site, capsys, monkeypatch):
    site[1][DOMAIN][1] = ("TXT", '"v=spf1 ip4:198.51.100.0/24 -all"')
    code, lines = doctor(site, capsys, monkeypatch)
    assert code == 1
    assert line(lines, "fail  spf") == (f"fail  spf: {DOMAIN}: 'v=spf1 ip4:198.51.100.0/24 -all' "
                                        f"gives fail for {IP}")
    assert records(lines) == [f'{DOMAIN}. IN TXT "v=spf1 ip4:{IP} ip4:198.51.100.0/24 -all"']


def test_spf_through_include_and_mx_is_evaluated_on_our_resolver(site, capsys, monkeypatch):
    zone = site[1]
    zone[DOMAIN][1] = ("TXT", f'"v=spf1 include:_spf.{DOMAIN} -all"')
    zone[f"_spf.{DOMAIN}"] = [("TXT", f'"v=spf1 mx:{DOMAIN} -all"')]
    code, lines = doctor(site, capsys, monkeypatch)
    assert code == 0, lines
    assert line(lines, "ok    spf").endswith(f"passes for {IP} (2 DNS lookups)")


def test_dkim_key_mismatch(site, capsys, monkeypatch):
    home, zone = site
    other = keygen(home, "other.test", "rsa1", "rsa")
    zone[f"rsa1._domainkey.{DOMAIN}"] = [("TXT", other)]
    capsys.readouterr()
    code, lines = doctor(site, capsys, monkeypatch)
    assert code == 1
    assert line(lines, "fail  dkim rsa1") == (
        f"fail  dkim rsa1: rsa1._domainkey.{DOMAIN} publishes another key than "
        f"control/domainkeys/{DOMAIN}/rsa1")
    assert line(lines, "ok    dkim ed1")
    pub = (home / "control" / "domainkeys" / DOMAIN / "rsa1.pub").read_text().strip()
    assert records(lines) == [pub]


def test_selector_not_published(site, capsys, monkeypatch):
    del site[1][f"ed1._domainkey.{DOMAIN}"]
    code, lines = doctor(site, capsys, monkeypatch)
    assert code == 1
    assert line(lines, "fail  dkim ed1") == (f"fail  dkim ed1: ed1._domainkey.{DOMAIN} "
                                             f"is not published (signing)")
    pub = (site[0] / "control" / "domainkeys" / DOMAIN / "ed1.pub").read_text().strip()
    assert records(lines) == [pub]


def test_unpublished_key_that_does_not_sign_only_warns(site, capsys, monkeypatch):
    keygen(site[0], DOMAIN, "next", "ed25519")      # a second ed25519 key: rotation, not signing
    code, lines = doctor(site, capsys, monkeypatch)
    assert code == 0
    assert line(lines, "warn  dkim next") == (f"warn  dkim next: next._domainkey.{DOMAIN} "
                                              f"is not published (not signing yet)")


def test_unreadable_private_key_is_checked_against_its_pub_file(site, capsys, monkeypatch):
    (site[0] / "control" / "domainkeys" / DOMAIN / "ed1").unlink()
    code, lines = doctor(site, capsys, monkeypatch)
    assert code == 0, lines
    assert line(lines, "ok    dkim ed1")


def test_ptr_mismatch(site, capsys, monkeypatch):
    site[1][PTR] = [("PTR", "host-25.provider.test.")]
    code, lines = doctor(site, capsys, monkeypatch)
    assert code == 1
    assert line(lines, "fail  ptr") == f"fail  ptr: {IP} PTR host-25.provider.test, not the HELO name {MX}"
    assert records(lines) == [f"{PTR}. IN PTR {MX}.   ; ask the owner of {IP} (your provider)"]


def test_ptr_name_that_does_not_resolve_back(site, capsys, monkeypatch):
    site[1][MX] = [("A", "192.0.2.99")]
    code, lines = doctor(site, capsys, monkeypatch)
    assert code == 1
    assert line(lines, "fail  ptr") == f"fail  ptr: {IP} PTR {MX}, but {MX} resolves to 192.0.2.99"
    assert f"{MX}. IN A {IP}" in records(lines)


def test_helohost_is_the_name_the_ptr_must_give(site, capsys, monkeypatch):
    control(site[0], "helohost", "out.good.test\n")
    code, lines = doctor(site, capsys, monkeypatch)
    assert code == 1
    assert line(lines, "fail  ptr") == f"fail  ptr: {IP} PTR {MX}, not the HELO name out.good.test"


def test_mx_elsewhere(site, capsys, monkeypatch):
    site[1][DOMAIN][0] = ("MX", "10 mail.provider.test.")
    site[1]["mail.provider.test"] = [("A", "198.51.100.7")]
    code, lines = doctor(site, capsys, monkeypatch)
    assert code == 1
    assert line(lines, "fail  mx") == (f"fail  mx: {DOMAIN} MX 10 mail.provider.test: "
                                       f"none is this host ({MX})")
    assert f"{DOMAIN}. IN MX 10 {MX}." in records(lines)


def test_no_dmarc(site, capsys, monkeypatch):
    del site[1][f"_dmarc.{DOMAIN}"]
    code, lines = doctor(site, capsys, monkeypatch)
    assert code == 1
    assert line(lines, "fail  dmarc") == f"fail  dmarc: no DMARC record at _dmarc.{DOMAIN}"
    assert records(lines) == [f'_dmarc.{DOMAIN}. IN TXT "v=DMARC1; p=none; '
                              f'rua=mailto:postmaster@{DOMAIN}"']


def test_bad_dmarc(site, capsys, monkeypatch):
    site[1][f"_dmarc.{DOMAIN}"] = [("TXT", '"v=DMARC1; p=maybe"')]
    code, lines = doctor(site, capsys, monkeypatch)
    assert code == 1
    assert line(lines, "fail  dmarc") == (f"fail  dmarc: _dmarc.{DOMAIN}: 'v=DMARC1; p=maybe': "
                                          f"p=maybe is not none, quarantine or reject")


def test_expired_certificate(site, capsys, monkeypatch):
    control(site[0], "servercert.pem", make_cert([MX], days_from=-100, days_to=-3))
    code, lines = doctor(site, capsys, monkeypatch)
    assert code == 1
    assert re.fullmatch(r"fail  cert: the certificate expired on \d{4}-\d\d-\d\d",
                        line(lines, "fail  cert"))
    assert records(lines) == []


def test_certificate_expiring_within_21_days_fails(site, capsys, monkeypatch):
    control(site[0], "servercert.pem", make_cert([f"*.{DOMAIN}"], days_to=10))
    code, lines = doctor(site, capsys, monkeypatch)
    assert code == 1
    assert re.fullmatch(rf"fail  cert: the certificate for {MX} expires on \S+, in 9 days: renew it",
                        line(lines, "fail  cert"))


def test_certificate_for_another_name(site, capsys, monkeypatch, certificate):
    control(site[0], "servercert.pem", certificate)      # openssl's, CN=mx.test.example, no SAN
    code, lines = doctor(site, capsys, monkeypatch)
    assert code == 1
    assert line(lines, "fail  cert") == f"fail  cert: the certificate is for mx.test.example, not {MX}"


def test_bad_mta_sts_record(site, capsys, monkeypatch):
    site[1][f"_mta-sts.{DOMAIN}"] = [("TXT", '"v=STSv1; id=2024-01-01"')]
    code, lines = doctor(site, capsys, monkeypatch)
    assert code == 1
    assert line(lines, "fail  mta-sts") == (f"fail  mta-sts: _mta-sts.{DOMAIN}: 'v=STSv1; "
                                            f"id=2024-01-01': id='2024-01-01' is not 1 to 32 "
                                            f"letters and digits")


def test_bad_tls_rpt_record_and_absent_mta_sts(site, capsys, monkeypatch):
    del site[1][f"_mta-sts.{DOMAIN}"]
    site[1][f"_smtp._tls.{DOMAIN}"] = [("TXT", f'"v=TLSRPTv1; rua=tls@{DOMAIN}"')]
    code, lines = doctor(site, capsys, monkeypatch)
    assert code == 1
    assert line(lines, "ok    mta-sts") == f"ok    mta-sts: no mta-sts record at _mta-sts.{DOMAIN} (optional)"
    assert line(lines, "fail  tls-rpt").endswith(f"rua: 'tls@{DOMAIN}' is not a mailto: or https: URI")


def test_servfail_gives_dns_trouble_lines(site, capsys, monkeypatch):
    code, lines = doctor(site, capsys, monkeypatch, servfail={DOMAIN, f"_dmarc.{DOMAIN}"})
    assert code == 1
    assert line(lines, "fail  mx") == (f"fail  mx: DNS trouble: {DOMAIN} MX: every nameserver "
                                       f"failed (SERVFAIL or refused)")
    assert line(lines, "fail  spf").startswith(f"fail  spf: DNS trouble: {DOMAIN} TXT")
    assert line(lines, "fail  dmarc").startswith("fail  dmarc: DNS trouble")
    assert line(lines, "ok    dkim rsa1")


def test_silent_resolver_gives_dns_trouble_not_a_traceback(site, capsys, monkeypatch):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        monkeypatch.setenv("QPY_NAMESERVERS", f"127.0.0.1:{silent.getsockname()[1]}")
        code = main(["doctor", DOMAIN, "--ip", IP, "--timeout", "0.5", "--home", str(site[0])])
    lines = capsys.readouterr().out.splitlines()
    assert code == 1
    checks = [l for l in lines if l and not l.startswith(";") and "IN " not in l]
    assert all(l.startswith("fail") and "DNS trouble" in l for l in checks
               if not l.startswith(("ok    cert", "warn"))), lines
    assert line(lines, "fail  mx").startswith("fail  mx: DNS trouble: the resolver does not answer")
    assert line(lines, "fail  dmarc").startswith("fail  dmarc: DNS trouble: the resolver does not")


def test_usage_and_instance_trouble(site, capsys, tmp_path, monkeypatch):
    assert main(["doctor", DOMAIN, "--ip", "not-an-ip", "--home", str(site[0])]) == 100
    assert main(["doctor", "bad domain!", "--home", str(site[0])]) == 100
    assert main(["doctor", DOMAIN, "--home", str(tmp_path / "none")]) == 111
    assert "is not an instance" in capsys.readouterr().err
    monkeypatch.setenv("QPY_NAMESERVERS", "nameserver.test")
    assert main(["doctor", DOMAIN, "--ip", IP, "--home", str(site[0])]) == 111
    assert "unusable nameservers" in capsys.readouterr().err
