"""qpy.inbound on real signed bytes: DKIM (RSA by Mail::DKIM, Ed25519 by dkimpy), DMARC under
each policy, ARC chains sealed by Mail::DKIM::ARC, forged Authentication-Results removed.

Keys are published by the loopback DNS server (tests/dnsserver.py, $QPY_NAMESERVERS); one RSA
key serves every domain's selector s1.  Each test calls ``inbound.check()`` once and reads
the Authentication-Results it returns.
"""
from __future__ import annotations

import re
import time

import pytest

from authkit import Keys, arc_seal, dkim_sign, ed25519_key, ed25519_sign, need_perl_dkim, txt
from dnsserver import DNSServer
from qpy import inbound
from qpy.dnsbudget import Budget
from qpy.spfcheck import Verdict

SRV = b"test.example"
SIGNED = ("example.org", "mail.example.org", "unrelated.example", "quarantine.example",
          "none.example", "nodmarc.example", "sub.example", "news.sub.example",
          "mail.strict.example", "pct0.example", "twice.example", "relay.example",
          "relay2.example", "slow.example")
DMARC = {"example.org": "v=DMARC1; p=reject", "quarantine.example": "v=DMARC1; p=quarantine",
         "none.example": "v=DMARC1; p=none", "sub.example": "v=DMARC1; p=none; sp=reject",
         "strict.example": "v=DMARC1; p=reject; adkim=s; aspf=s",
         "pct0.example": "v=DMARC1; p=reject; pct=0", "norua.example": "v=DMARC1; p=bogus",
         "rua.example": "v=DMARC1; p=bogus; rua=mailto:r@rua.example"}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    need_perl_dkim()
    return Keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def ed():
    return ed25519_key()


@pytest.fixture(scope="module")
def dns(keys, ed):
    zone: dict[str, list[tuple[str, str]]] = {
        f"s1._domainkey.{d}": [("TXT", txt(keys.record("a")))] for d in SIGNED}
    zone["e1._domainkey.example.org"] = [("TXT", txt(ed[1]))]
    zone["old._domainkey.example.org"] = [("TXT", txt("v=DKIM1; k=rsa; p="))]
    for domain, record in DMARC.items():
        zone[f"_dmarc.{domain}"] = [("TXT", txt(record)), ("TXT", txt("not dmarc"))]
    zone["_dmarc.twice.example"] = [("TXT", txt("v=DMARC1; p=none")),
                                    ("TXT", txt("v=DMARC1; p=reject"))]
    with DNSServer(zone, drop={"s1._domainkey.slow.example", "_dmarc.slow.example"}) as server:
        yield server


@pytest.fixture(autouse=True)
def nameservers(monkeypatch, dns):
    monkeypatch.setenv("QPY_NAMESERVERS", dns.spec)


def msg(frm: str = "alice@example.org", subject: str = "hello", extra: str = "") -> bytes:
    return (f"From: Alice <{frm}>\nTo: bob@test.example\nSubject: {subject}\n"
            f"Date: Fri, 4 Dec 2026 12:00:00 +0000\n{extra}\n.dotted line\nbody\n").encode()


def stored(wire: bytes) -> bytes:
    return wire.replace(b"\r\n", b"\n")


def check(message: bytes, spf: Verdict | None = None, enforce: bool = False) -> inbound.Checked:
    return inbound.check(message, spf, Budget(10, 2), enforce=enforce, authserv_id=SRV)


def spf(result: str, domain: str = "example.org") -> Verdict:
    return Verdict(result, "mailfrom", domain, f"bounce@{domain}", "192.0.2.7", "client.example")


def lines(checked: inbound.Checked) -> list[bytes]:
    return checked.fields.rstrip(b"\n").split(b"\n")


def b_of(message: bytes) -> bytes:
    head = message.split(b"\n\n")[0].replace(b"\n\t", b"").replace(b"\n ", b"")
    return re.sub(rb"\s", b"", re.search(rb"; ?b=([^;]+)", head)[1])


# -- DKIM -------------------------------------------------------------------------------------

def test_an_unsigned_message_without_from(keys):
    c = check(b"Subject: no author\n\nbody\n")
    assert c.fields == (b"Authentication-Results: test.example;\n\tdkim=none;\n"
                        b"\tdmarc=none (no From: domain);\n\tarc=none\n")
    assert c.refusal is None and c.message == b"Subject: no author\n\nbody\n"


def test_mail_dkim_rsa_signature_passes_and_aligns(keys):
    signed = stored(dkim_sign(msg(), keys.pem("a"), "example.org", "s1"))
    c = check(signed)
    b = b_of(signed)
    assert lines(c) == [b"Authentication-Results: test.example;",
                        b"\tdkim=pass header.d=example.org header.s=s1 header.a=rsa-sha256"
                        b" header.b=" + inbound._value(b[:8]) + b";",
                        b"\tdmarc=pass (p=reject dis=none) header.from=example.org;",
                        b"\tarc=none"]
    assert c.message == signed and c.signatures[0].b == b[:8]


@pytest.mark.parametrize("case, result", [
    ("body", b"dkim=fail (body hash did not verify)"),
    ("signed header", b"dkim=fail (signature did not verify)"),
    ("unsigned header", b"dkim=pass"),
    ("expired", b"dkim=permerror (signature expired)"),
    ("revoked key", b"dkim=permerror (key revoked)"),
    ("no key", b"dkim=permerror (no key)"),
])
def test_tampered_rsa_signatures(keys, case, result):
    now = int(time.time())
    selector = {"revoked key": "old", "no key": "gone"}.get(case, "s1")
    stamps = (now - 20 * 86400, now - 10 * 86400) if case == "expired" else (None, None)
    signed = stored(dkim_sign(msg(), keys.pem("a"), "example.org", selector, *stamps))
    if case == "body":
        signed = signed.replace(b"\nbody\n", b"\nbodY\n")
    elif case == "signed header":
        signed = signed.replace(b"Subject: hello", b"Subject: hellO")
    elif case == "unsigned header":
        signed = signed.replace(b"\n\n", b"\nX-Added: later\n\n", 1)
    (clause,) = [x for x in lines(check(signed)) if x.startswith(b"\tdkim=")]
    assert clause.startswith(b"\t" + result + b" header.d=example.org header.s=" + selector.encode())
    dmarc = b"\tdmarc=pass" if result == b"dkim=pass" else b"\tdmarc=fail (p=reject dis=none)"
    assert any(x.startswith(dmarc) for x in lines(check(signed)))


def test_ed25519_signature_passes_and_tampering_fails(ed):
    wire = msg().replace(b"\n", b"\r\n")
    signed = stored(ed25519_sign(wire, ed[0], "example.org", "e1"))
    good = check(signed).signatures[0]
    assert (good.result, good.algorithm, good.selector) == ("pass", b"ed25519-sha256", b"e1")
    bad = check(signed.replace(b"To: bob@", b"To: eve@")).signatures[0]
    assert (bad.result, bad.reason) == ("fail", "signature did not verify")


def test_every_signature_gets_its_clause_and_a_distinct_header_b(keys, ed):
    once = dkim_sign(msg(), keys.pem("a"), "unrelated.example", "s1")
    twice = stored(ed25519_sign(once, ed[0], "example.org", "e1"))
    c = check(twice)
    assert [(s.result, s.domain) for s in c.signatures] == [
        ("pass", b"example.org"), ("pass", b"unrelated.example")]
    b1, b2 = (s.b for s in c.signatures)
    assert len(b1) >= 8 and len(b2) >= 8 and b1[:8] != b2[:8]
    assert c.dmarc[0].result == "pass"


def test_rsa_sha1_is_not_acceptable(keys):
    signed = stored(dkim_sign(msg(), keys.pem("a"), "example.org", "s1")).replace(
        b"a=rsa-sha256", b"a=rsa-sha1")
    s = check(signed).signatures[0]
    assert (s.result, s.reason) == ("policy", "rsa-sha1 is not acceptable, RFC 8301")


def test_a_header_section_dkimpy_cannot_read_is_permerror_not_a_crash(keys):
    signed = stored(dkim_sign(msg(), keys.pem("a"), "example.org", "s1"))
    broken = signed.replace(b"\nTo:", b"\nno colon here\nTo:", 1)
    c = check(broken)
    assert c.signatures[0].result == "permerror" and c.dmarc[0].result == "fail"


# -- DMARC ------------------------------------------------------------------------------------

def dmarc_of(c: inbound.Checked) -> list[bytes]:
    return [x.strip(b"\t;") for x in lines(c) if x.startswith(b"\tdmarc=")]


def test_dmarc_reject_enforced_with_550_only_when_asked_and_spf_was_checked(keys):
    signed = stored(dkim_sign(msg(), keys.pem("a"), "unrelated.example", "s1"))
    off = check(signed, spf("fail"))
    assert dmarc_of(off) == [b"dmarc=fail (p=reject dis=none) header.from=example.org"]
    assert off.refusal is None
    on = check(signed, spf("fail"), enforce=True)
    assert dmarc_of(on) == [b"dmarc=fail (p=reject dis=reject) header.from=example.org"]
    assert on.refusal == b"550 sorry, the DMARC policy of example.org rejects this message (#5.7.1)"
    unknown = check(signed, None, enforce=True)
    assert unknown.refusal is None and dmarc_of(unknown) == [
        b"dmarc=fail (p=reject dis=none; SPF not checked: not enforced) header.from=example.org"]


def test_spf_alignment_relaxed_and_strict(keys):
    assert dmarc_of(check(msg(), spf("pass"), True)) == [
        b"dmarc=pass (p=reject dis=none) header.from=example.org"]
    assert check(msg(), spf("pass", "bounce.example.org"), True).dmarc[0].result == "pass"
    assert check(msg(), spf("pass", "other.example"), True).refusal is not None
    strict = msg("a@strict.example")
    assert check(strict, spf("pass", "strict.example"), True).dmarc[0].result == "pass"
    assert check(strict, spf("pass", "mail.strict.example"), True).dmarc[0].result == "fail"
    assert lines(check(msg(), spf("pass")))[1] == b"\tspf=pass smtp.mailfrom=example.org;"


def test_dkim_alignment_relaxed_and_strict(keys):
    sub = stored(dkim_sign(msg(), keys.pem("a"), "mail.example.org", "s1"))
    assert check(sub, spf("fail"), True).dmarc[0].result == "pass"       # relaxed
    strict = stored(dkim_sign(msg("a@strict.example"), keys.pem("a"), "mail.strict.example", "s1"))
    c = check(strict, spf("fail"), True)
    assert c.signatures[0].result == "pass" and c.dmarc[0].result == "fail"
    assert c.refusal is not None


def test_quarantine_adds_the_field_a_dot_qmail_can_test(keys):
    c = check(msg("a@quarantine.example"), spf("fail", "quarantine.example"), True)
    assert lines(c)[0] == b"X-Qpy-Quarantine: dmarc quarantine.example"
    assert lines(c)[1] == b"Authentication-Results: test.example;" and c.refusal is None
    assert dmarc_of(c) == [b"dmarc=fail (p=quarantine dis=quarantine) header.from=quarantine.example"]
    off = check(msg("a@quarantine.example"), spf("fail", "quarantine.example"), False)
    assert not off.fields.startswith(b"X-Qpy-Quarantine")


def test_p_none_and_no_record(keys):
    c = check(msg("a@none.example"), spf("fail", "none.example"), True)
    assert dmarc_of(c) == [b"dmarc=fail (p=none dis=none) header.from=none.example"]
    assert c.refusal is None
    assert dmarc_of(check(msg("a@nodmarc.example"), spf("fail", "nodmarc.example"), True)) == [
        b"dmarc=none header.from=nodmarc.example"]


def test_subdomain_policy_from_the_organizational_domain(keys):
    c = check(msg("a@news.sub.example"), spf("fail", "news.sub.example"), True)
    assert dmarc_of(c) == [b"dmarc=fail (p=none sp=reject dis=reject) header.from=news.sub.example"]
    assert c.refusal is not None
    top = check(msg("a@sub.example"), spf("fail", "sub.example"), True)
    assert dmarc_of(top) == [b"dmarc=fail (p=none dis=none) header.from=sub.example"]
    signed = stored(dkim_sign(msg("a@news.sub.example"), keys.pem("a"), "sub.example", "s1"))
    assert check(signed, spf("fail"), True).dmarc[0].result == "pass"


def test_pct_zero_applies_the_next_milder_policy(keys):
    c = check(msg("a@pct0.example"), spf("fail", "pct0.example"), True)
    assert c.refusal is None and c.fields.startswith(b"X-Qpy-Quarantine: dmarc pct0.example\n")


def test_unusable_records_are_permerror_or_p_none(keys):
    assert dmarc_of(check(msg("a@twice.example"), spf("fail", "twice.example"), True)) == [
        b"dmarc=permerror (more than one DMARC record) header.from=twice.example"]
    assert dmarc_of(check(msg("a@norua.example"), spf("fail", "norua.example"), True)) == [
        b"dmarc=permerror (DMARC record without a valid p=) header.from=norua.example"]
    assert dmarc_of(check(msg("a@rua.example"), spf("fail", "rua.example"), True)) == [
        b"dmarc=fail (p=none dis=none) header.from=rua.example"]


def test_two_from_domains_are_both_evaluated_and_the_strictest_wins(keys):
    two = msg("a@none.example>, <b@example.org")
    c = check(two, spf("fail", "none.example"), True)
    assert dmarc_of(c) == [b"dmarc=fail (p=none dis=none) header.from=none.example",
                           b"dmarc=fail (p=reject dis=reject) header.from=example.org"]
    assert b"example.org" in c.refusal


def test_silent_dns_is_temperror_within_the_budget_and_never_enforced(keys):
    signed = stored(dkim_sign(msg("a@slow.example"), keys.pem("a"), "slow.example", "s1"))
    start = time.monotonic()
    c = inbound.check(signed, spf("fail", "slow.example"), Budget(3, 1), enforce=True,
                      authserv_id=SRV)
    assert time.monotonic() - start < 3.5
    assert lines(c)[2].startswith(b"\tdkim=temperror (key lookup failed) header.d=slow.example")
    assert dmarc_of(c) == [b"dmarc=temperror (DNS trouble) header.from=slow.example"]
    assert c.refusal is None


def test_an_unaligned_signature_in_trouble_does_not_excuse_the_author_domain(keys):
    signed = stored(dkim_sign(msg(), keys.pem("a"), "slow.example", "s1"))
    c = inbound.check(signed, spf("fail"), Budget(3, 1), enforce=True, authserv_id=SRV)
    assert c.signatures[0].result == "temperror" and c.dmarc[0].result == "fail"
    assert c.refusal is not None


def test_organizational_domains_and_alignment():
    assert inbound.org_domain(b"a.b.example.co.uk") == b"example.co.uk"
    assert inbound.org_domain(b"co.uk") == b"co.uk"
    assert inbound.org_domain(b"Mail.Example.ORG.") == b"example.org"
    assert inbound.aligned(b"mail.example.org", b"example.org", strict=False)
    assert not inbound.aligned(b"mail.example.org", b"example.org", strict=True)
    assert not inbound.aligned(b"example.co.uk", b"other.co.uk", strict=False)


@pytest.mark.parametrize("value, domains", [
    ("Alice <a@Example.ORG.>", [b"example.org"]),
    ("x@evil.example <x@bank.example>", [b"evil.example", b"bank.example"]),
    ('"x\\" <a@bank.example>', [b"bank.example"]),         # the parser keeps a '>' on it
    ("<a@bank.example>>", [b"bank.example"]),
    ("a@b\u00fccher.example", [b"xn--bcher-kva.example"]),
    ("undisclosed recipients", []),
    ("a@[192.0.2.1]", []),
])
def test_from_domains_are_read_as_a_reader_would(value, domains):
    assert inbound.author_domains([(b"from", value.encode())]) == domains


def test_record_parsing():
    assert inbound.parse_record(b"v=DMARC1; p=Reject ;sp=none; pct=50;") == {
        b"v": b"DMARC1", b"p": b"Reject", b"sp": b"none", b"pct": b"50"}
    assert inbound.parse_record(b"p=reject; v=DMARC1") is None
    assert inbound.parse_record(b"v=spf1 -all") is None


# -- ARC --------------------------------------------------------------------------------------

def sealed_once(keys) -> bytes:
    first = msg(extra="Authentication-Results: relay.example; dkim=none; spf=pass"
                      " smtp.mailfrom=example.org\n")
    return arc_seal(first, keys.pem("a"), "relay.example", "s1", "relay.example", "none")


def test_arc_chains_sealed_by_mail_dkim(keys):
    one = stored(sealed_once(keys))
    assert check(one).arc == "pass" and lines(check(one))[-1] == b"\tarc=pass"
    two = arc_seal(b"Authentication-Results: relay2.example; arc=pass\r\n" + sealed_once(keys),
                   keys.pem("a"), "relay2.example", "s1", "relay2.example", "pass")
    assert check(stored(two)).arc == "pass"
    broken = one.replace(b"\nbody\n", b"\nbodY\n")
    c = check(broken)
    assert c.arc == "fail" and lines(c)[-1].startswith(b"\tarc=fail (")
    assert check(msg()).arc == "none"


# -- forged verdicts --------------------------------------------------------------------------

FORGED = [
    b"Authentication-Results: test.example; dkim=pass header.d=bank.example\n",
    b"authentication-results : TEST.EXAMPLE.;\n\tdmarc=pass\n header.from=bank.example\n",
    b"Authentication-Results: (our verdict, honest) \"test.example\" 1; spf=pass\n",
    b"Authentication-Results:\n\ttest.example;\n\tdkim=pass\n",
    b"X-Qpy-Quarantine: none\n",
]
KEPT = [b"Authentication-Results: relay.example; dkim=pass header.d=bank.example\n",
        b"Authentication-Results: test.example.org; spf=pass\n",
        b"Authentication-Results: mx.test.example; spf=pass\n",
        b"ARC-Authentication-Results: i=1; test.example; dkim=pass\n"]


def test_forged_fields_of_ours_are_removed_and_others_kept():
    head = b"From: a@bank.example\n" + b"".join(f + k for f, k in zip(FORGED, KEPT + [b""]))
    body = b"\nAuthentication-Results: test.example; in the body stays\n"
    assert inbound.strip_ours(head + body, SRV) == b"From: a@bank.example\n" + b"".join(KEPT) + body
    crlf = (head + body).replace(b"\n", b"\r\n")
    assert inbound.strip_ours(crlf, b"Test.Example") == (
        b"From: a@bank.example\n" + b"".join(KEPT) + body).replace(b"\n", b"\r\n")
    plain = b"From: a@b.example\nSubject: s\n\nbody\n"
    assert inbound.strip_ours(plain, SRV) is plain


def test_check_returns_the_message_without_forged_fields(keys):
    forged = msg(extra="".join(f.decode() for f in FORGED))
    c = check(forged)
    assert c.message == msg() and c.fields.count(b"Authentication-Results") == 1


def test_authserv_id_of():
    assert inbound.authserv_id_of(b" (a (nested) comment)\r\n\t Test.Example. 1; x") == b"test.example"
    assert inbound.authserv_id_of(b' "quo\\"ted"; x') == b'quo"ted'
    assert inbound.authserv_id_of(b"") == b""
