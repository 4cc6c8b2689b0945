"""The RFC 7208 test suite (tests/data/spf/) run through qmail-smtpd.

For each scenario a loopback DNS server serves its zone data; each test case is one
qmail-smtpd process (bin/qmail-smtpd on pipes) with the case's host as TCPREMOTEIP,
``EHLO <helo>`` and ``MAIL FROM:<mailfrom>`` in the dialogue and control/spfbehavior 1;
the verdict is read from the Received-SPF field of the message it queued.  Cases that
give an explanation are run a second time with SPFBEHAVIOR=3 ($SPFBEHAVIOR overriding the
control file), and the 550 at RCPT must carry it.

The zone data is served as the suite's own driver (pyspf's test/testspf.py) gives it to
pyspf: an SPF record is also a TXT record unless the name has TXT records or says
``TXT: NONE``; ``TIMEOUT`` drops the question (and a name under ``error.`` missing from the
zone too) unless a record of the asked type came before it.  An empty TXT record (zero
strings) cannot be sent in DNS; it is served as one empty string, which SPF ignores alike.
A local part that is not a dot-atom is quoted in MAIL FROM (RFC 5321 §4.1.2), so
``@example.net`` is sent as ``""@example.net`` and not taken for a source route.

Cases whose result differs are listed in DISAGREE with the reason; every other case must
agree.  The figures are printed (``pytest -s``) and recorded in bench/RESULTS.md.
"""
from __future__ import annotations

import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rrset
import pytest
import yaml             # setup.cfg's test extra

from conftest import control
from dnsserver import DNSServer
from smtpdkit import CLEARED, queued

SUITE = Path(__file__).resolve().parent.parent / "data" / "spf" / "rfc7208-tests.yml"
IN = dns.rdataclass.IN
WORKERS = 8
TTL = 60
ATEXT = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\Z")
ACCEPTED = re.compile(rb"\r\n250 (?:2\.0\.0 )?ok \d+ qp (\d+)\r\n")

# case → why qmail-smtpd's verdict differs from the suite's
DISAGREE: dict[str, str] = {
    "ptr-cname-loop": "temperror, not neutral: a CNAME loop reaches pyspf as the resolver's"
                      " failure (dnspython: every server failed, as a recursive resolver's"
                      " SERVFAIL), and pyspf does not skip a ptr name whose A lookup fails"
                      " (RFC 7208 §5.5); the suite's driver passes only because pyspf itself"
                      " detects the loop when it is handed the CNAMEs one by one",
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in CLEARED + ("SPFBEHAVIOR",):
        monkeypatch.delenv(name, raising=False)


# -- the zone data as testspf.py serves it ------------------------------------------------

def load_zone(zonedata: dict) -> dict[bytes, list]:
    """name → entries: "TIMEOUT" or (type, value); SPF copied to TXT as testspf.getrdata does."""
    zone = {}
    for name, records in zonedata.items():
        entries, generated, generate = [], [], True
        for record in records:
            if not isinstance(record, dict):
                entries.append(record)                  # TIMEOUT
                continue
            for rtype, value in record.items():
                if rtype in ("TXT", "SPF") and isinstance(value, str):
                    value = (value,)
                if rtype == "TXT":
                    generate = False
                elif rtype == "SPF" and generate:
                    generated.append(("TXT", value))
                if value != ("NONE",):
                    entries.append((rtype, value))
        zone[name.lower().encode()] = entries + (generated if generate else [])
    return zone


def rdata(rtype: str, value):
    """One record of the zone data as dnspython rdata."""
    kind = dns.rdatatype.from_text(rtype)
    if rtype == "A":
        return dns.rdtypes.IN.A.A(IN, kind, value)
    if rtype == "AAAA":
        return dns.rdtypes.IN.AAAA.AAAA(IN, kind, value)
    if rtype == "MX":
        target = dns.name.from_text(value[1]) if value[1] else dns.name.root
        return dns.rdtypes.ANY.MX.MX(IN, kind, value[0], target)
    if rtype in ("PTR", "CNAME"):
        cls = dns.rdtypes.ANY.PTR.PTR if rtype == "PTR" else dns.rdtypes.ANY.CNAME.CNAME
        return cls(IN, kind, dns.name.from_text(value))
    strings = [s.encode("utf-8") for s in value] or [b""]   # TXT, SPF
    return dns.rdtypes.ANY.TXT.TXT(IN, kind, strings)


class ZoneServer(DNSServer):
    """DNSServer answering from one scenario's zone data."""

    def __init__(self, zonedata: dict) -> None:
        super().__init__({})
        self.zone = load_zone(zonedata)

    def answer(self, wire: bytes) -> bytes | None:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        qtype = dns.rdatatype.to_text(question.rdtype)
        name = question.name
        for _ in range(8):                          # a CNAME chain, followed here
            key = b".".join(name.labels[:-1]).lower()
            entries = self.zone.get(key)
            if entries is None:
                if key.startswith(b"error."):
                    return None
                if not response.answer:
                    response.set_rcode(dns.rcode.NXDOMAIN)
                break
            found, cname, silent = [], None, True
            for entry in entries:
                if entry == "TIMEOUT":
                    if silent:
                        return None
                    break
                rtype, value = entry
                if rtype == qtype:
                    silent = False
                    if value == "TIMEOUT":
                        return None
                    found.append(rdata(rtype, value))
                elif rtype == "CNAME" and value != "TIMEOUT":
                    cname = rdata(rtype, value)
            if found or cname is None:
                if found:
                    response.answer.append(self._set(name, qtype, found))
                break
            response.answer.append(self._set(name, "CNAME", [cname]))
            name = cname.target
        return response.to_wire()

    @staticmethod
    def _set(name: dns.name.Name, rtype: str, items: list) -> dns.rrset.RRset:
        rrset = dns.rrset.RRset(name, IN, dns.rdatatype.from_text(rtype))
        for item in items:
            rrset.add(item, TTL)
        return rrset


# -- driving qmail-smtpd -------------------------------------------------------------------

def mailfrom(address: str) -> str:
    """The address as MAIL FROM carries it: a local part that is no dot-atom quoted."""
    if not address:
        return ""
    local, at, domain = address.rpartition("@")
    if not at:
        return address
    if not ATEXT.match(local):
        local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{local}@{domain}"


def session(home: Path, dns_spec: str, case: dict, behavior: str | None = None) -> bytes:
    """One SMTP dialogue for ``case``; qmail-smtpd's output."""
    env = dict(os.environ, QMAILHOME=str(home), TCPREMOTEIP=case["host"],
               TCPLOCALIP="192.0.2.1", TCPLOCALHOST="mx.test.example", QPY_NAMESERVERS=dns_spec)
    if behavior is not None:
        env["SPFBEHAVIOR"] = behavior
    dialogue = (f"EHLO {case['helo']}\r\nMAIL FROM:<{mailfrom(case['mailfrom'])}>\r\n"
                f"RCPT TO:<postmaster@test.example>\r\nDATA\r\nSubject: spf\r\n\r\nx\r\n.\r\n"
                f"QUIT\r\n").encode()
    r = subprocess.run([str(home / "bin" / "qmail-smtpd")], input=dialogue, capture_output=True,
                       env=env, timeout=120)
    assert r.stderr == b"", r.stderr
    return r.stdout


def verdict(home: Path, out: bytes) -> str:
    """The result in the Received-SPF field of the message the dialogue queued."""
    pid = ACCEPTED.search(out)
    assert pid, out
    mess = queued(home)[pid[1]][0]
    field = re.search(rb"^Received-SPF: (\w+) ", mess, re.M)
    assert field, mess
    return field[1].decode()


def explanation(out: bytes) -> str | None:
    """The explanation in the 550 at RCPT, or None."""
    found = re.search(rb"\r\n550 5\.7\.23 SPF fail for [^:]*: (.*) \(#5\.7\.23\)\r\n", out)
    return None if found is None else found[1].decode()


def scenarios() -> list[dict]:
    with open(SUITE, encoding="utf-8") as f:
        return list(yaml.safe_load_all(f))


def test_rfc7208_suite_through_qmail_smtpd(home, capsys):
    control(home, "spfbehavior", "1\n")
    control(home, "timeoutdns", "1\n")      # a dropped question costs a second, not five
    agree, disagree, exp_agree, exp_disagree, total = [], {}, [], {}, 0
    for scenario in scenarios():
        with ZoneServer(scenario["zonedata"]) as server:
            cases = sorted(scenario["tests"].items())
            total += len(cases)
            with ThreadPoolExecutor(WORKERS) as pool:
                outs = list(pool.map(lambda c: session(home, server.spec, c[1]), cases))
                want_exp = [(n, c) for n, c in cases if "explanation" in c]
                exp_outs = list(pool.map(lambda c: session(home, server.spec, c[1], "3"),
                                         want_exp))
        for (name, case), out in zip(cases, outs):
            expected = case["result"] if isinstance(case["result"], list) else [case["result"]]
            got = verdict(home, out)
            if got in expected:
                agree.append(name)
            else:
                disagree[name] = f"{got}, suite says {'/'.join(expected)}"
        for (name, case), out in zip(want_exp, exp_outs):
            got_exp = explanation(out)
            want = case["explanation"]
            if want == "DEFAULT":       # ours: qpy.spfcheck.DEFAULT_EXP
                ok = got_exp is not None and "designated mail servers" in got_exp
            else:
                ok = got_exp == want
            if ok:
                exp_agree.append(name)
            else:
                exp_disagree[name] = f"{got_exp!r}, suite says {want!r}"
    with capsys.disabled():
        print(f"\nRFC 7208 suite through qmail-smtpd: {len(agree)} of {total} results agree; "
              f"explanations: {len(exp_agree)} of {len(exp_agree) + len(exp_disagree)} agree")
        for name, why in sorted({**disagree, **exp_disagree}.items()):
            print(f"  differs: {name}: {why}")
    unexpected = {n: w for n, w in {**disagree, **exp_disagree}.items() if n not in DISAGREE}
    assert not unexpected
