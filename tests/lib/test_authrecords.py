"""qpy.authrecords: the syntax of SPF, DKIM key, DMARC, MTA-STS and TLS-RPT records."""
from __future__ import annotations

import pytest

from qpy import authrecords as ar


def test_tag_list_and_zone_txt():
    assert ar.tag_list(" v=DMARC1 ;p = none; ") == [("v", "DMARC1"), ("p", "none")]
    with pytest.raises(ValueError):
        ar.tag_list("v=DMARC1; reject")
    assert ar.zone_txt("a.test", 'x "y"') == 'a.test. IN TXT "x \\"y\\""'
    long = ar.zone_txt("a.test", "p" * 600)
    assert long.count('"') == 6 and '"' + "p" * 250 + '"' in long


def test_spf_records_and_terms():
    assert ar.spf_records(["v=spf1 -all", "V=SPF1", "v=spf10 -all", "x v=spf1"]) == \
        ["v=spf1 -all", "V=SPF1"]
    assert ar.spf_terms("v=spf1 +a mx:b.test/24 -include:c.test ip6:2001:db8::/32 "
                        "redirect=d.test exp=e.test ~all") == [
        ("a", ""), ("mx", "b.test/24"), ("include", "c.test"), ("ip6", "2001:db8::/32"),
        ("redirect=", "d.test"), ("exp=", "e.test"), ("all", "")]


@pytest.mark.parametrize("record, why", [
    ("v=spf1 moo -all", "unknown term"),
    ("v=spf1 include -all", "is not include:<value>"),
    ("v=spf1 ip4:1.2.3 -all", "not an address"),
    ("v=spf1 ip4:2001:db8:: -all", "not an IPv4 address"),
    ("v=spf1 all:x", "all takes no argument"),
    ("v=spf1 redirect=a.test redirect=b.test", "redirect= appears twice"),
])
def test_spf_terms_that_do_not_parse(record, why):
    with pytest.raises(ValueError, match=why):
        ar.spf_terms(record)


def test_spf_with_puts_the_term_first():
    assert ar.spf_with("v=spf1 mx -all", "ip4:192.0.2.1") == "v=spf1 ip4:192.0.2.1 mx -all"
    assert ar.spf_with("v=spf1", "a") == "v=spf1 a"


def test_dkim_public():
    assert ar.dkim_public("v=DKIM1; k=ed25519; p=AAEC Aw==", "ed25519") == b"\0\1\2\3"
    assert ar.dkim_public("p=AAECAw==", "rsa") == b"\0\1\2\3"       # k= defaults to rsa
    for text, why in (("k=rsa; v=DKIM1; p=AA==", "must come first"), ("v=DKIM1", "no p="),
                      ("v=DKIM1; p=", "revoked"), ("v=DKIM1; p=AA==", "but the key is ed25519"),
                      ("k=ed25519; p=A!", "not base64")):
        with pytest.raises(ValueError, match=why):
            ar.dkim_public(text, "ed25519")
    assert ar.pub_file('s._domainkey.a.test. IN TXT ( "v=DKIM1; k=ed25519; p=AAEC" "Aw==" )') == \
        ("ed25519", b"\0\1\2\3")


@pytest.mark.parametrize("text, why", [
    ("v=DMARC1; p=reject; sp=none; adkim=s; aspf=r; pct=50; rua=mailto:a@b.test!10m,"
     "mailto:c@d.test; fo=1; future=x", None),
    ("p=none; v=DMARC1", "v=DMARC1 must come first"),
    ("v=DMARC1", "no p= tag"),
    ("v=DMARC1; p=maybe", "p=maybe is not none, quarantine or reject"),
    ("v=DMARC1; p=none; sp=all", "sp=all is not"),
    ("v=DMARC1; p=none; adkim=x", "adkim=x is not r or s"),
    ("v=DMARC1; p=none; pct=101", "pct=101 is not a number"),
    ("v=DMARC1; p=none; p=reject", "p= appears twice"),
    ("v=DMARC1; p=none; rua=postmaster@a.test", "is not a URI"),
])
def test_dmarc_problem(text, why):
    problem = ar.dmarc_problem(text)
    assert problem == why if why is None else why in problem


@pytest.mark.parametrize("text, why", [
    ("v=STSv1; id=20240101T000000Z;", None),
    ("v=STSv1; id=1; ext_1=yes", None),
    ("id=1; v=STSv1", "v=STSv1 must come first"),
    ("v=STSv1", "no id= field"),
    ("v=STSv1; id=" + "1" * 33, "is not 1 to 32 letters"),
    ("v=STSv1; id=1; bad=a b", "is not a valid extension field"),
])
def test_sts_problem(text, why):
    problem = ar.sts_problem(text)
    assert problem == why if why is None else why in problem


@pytest.mark.parametrize("text, why", [
    ("v=TLSRPTv1; rua=mailto:tls@a.test,https://r.a.test/report", None),
    ("v=TLSRPTv1", "no rua= field"),
    ("v=TLSRPTv1; rua=ftp://a.test/", "is not a mailto: or https: URI"),
])
def test_tlsrpt_problem(text, why):
    problem = ar.tlsrpt_problem(text)
    assert problem == why if why is None else why in problem
