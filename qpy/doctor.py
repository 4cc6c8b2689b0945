"""The admin's pre-flight check of a sending domain (``qpy doctor``): DNS, keys, certificate.

Every lookup goes through the instance's resolver (qpy.resolver: $QPY_NAMESERVERS,
control/nameservers), SPF evaluation included: pyspf looks names up through its
module-level ``DNSLookup`` hook (dnspython's default resolver, i.e. /etc/resolv.conf),
which ``qpy.spfcheck.resolving`` points at our resolver while one evaluation runs.

This host, as receivers see it: control/me; the HELO name (control/helohost, else me);
the address mail leaves from (given, else the source address the kernel picks for a UDP
connect() to a public address, which sends nothing).  Each check is a small function
returning a ``Check``: status (ok, warn, fail), name, one line of why, and the zone-file
lines (``;`` lines are advice) that would fix it.

- mx        the domain's MX records name this host: me, the HELO name, or a name with one of
            this host's addresses (interfaces, the sending address, me's A/AAAA)
- ptr       (once) the address's PTR is the HELO name, whose A/AAAA lead back to it (FCrDNS)
- spf       exactly one v=spf1 TXT; it parses; at most 10 DNS-querying terms (include, a, mx,
            ptr, exists, redirect), counted through includes and redirects (RFC 7208 §4.6.4)
            over the whole tree, not only the path one evaluation takes; pyspf says pass
- dkim S    every selector of the domain in control/dkimdomains or on disk: S._domainkey
            publishes the p= of its private key (of S.pub if the key is unreadable); a key
            that does not sign yet only warns when unpublished
- dmarc     one v=DMARC1 record at _dmarc (v first, p= none|quarantine|reject, tags valid)
- cert      control/servercert.pem covers the MX names that are this host (else me): SAN
            DNS names, CN only without SAN, a wildcard for exactly one left-most label; an
            expired certificate fails, and so does one that expires within 21 days (an
            ACME client renews 30 days ahead: one this close means renewal is failing)
- mta-sts, tls-rpt   if published: RFC 8461 / RFC 8460 syntax (the policy is not fetched)

The records' syntax is qpy.authrecords'.  Without a domain named, the domains checked are
those of control/dkimdomains (the ones we sign for), else me's parent domain.  A resolver
that fails gives ``fail <check>: DNS trouble …``; after one timeout the remaining lookups
fail at once instead of waiting again.  ``exit_code``: 1 when any check fails, else 0.
"""
from __future__ import annotations

import datetime
import ipaddress
import socket
from dataclasses import asdict, dataclass
from typing import Any, Callable

import dns.exception
import dns.name
import dns.resolver
import dns.reversename

from qpy import control, dkimkeys, mx, resolver, spfcheck
from qpy.authrecords import dkim_public, dmarc_problem, pub_file, spf_records, spf_terms, \
    spf_with, sts_problem, tag_list, tlsrpt_problem, zone_txt
from qpy.errors import QmailError

OK, WARN, FAIL = "ok", "warn", "fail"
TIMEOUT = 10.0
CERT_DAYS = 21
SPF_LIMIT = 10
SPF_GIVE_UP = 50            # stop walking a tree this far over the limit
SPF_QUERYING = ("include", "a", "mx", "ptr", "exists", "redirect=")
PUBLIC = (("198.41.0.4", 53), ("2001:503:ba3e::2:30", 53))    # a.root-servers.net


class DNSTrouble(QmailError):
    """A lookup that got no usable answer (timeout, SERVFAIL, refused)."""


class SpfError(QmailError):
    """An SPF record, or one it includes, that cannot be evaluated."""


@dataclass(frozen=True)
class Check:
    """One line of the report and the records that would fix it."""

    status: str                 # OK, WARN or FAIL
    name: str
    text: str
    fix: tuple[str, ...] = ()

    def line(self) -> str:
        """``ok    spf: why``."""
        return f"{self.status:<4}  {self.name}: {self.text}"


@dataclass(frozen=True)
class Host:
    """This instance as receivers see it."""

    me: str
    helo: str
    ip: str | None              # the address mail leaves from; None: unknown
    given: bool                 # the admin named it (--ip)


# -- DNS through the instance's resolver -------------------------------------------------

class Lookup:
    """The instance's resolver; every failure but NXDOMAIN and no data is DNSTrouble."""

    def __init__(self, timeout: float = TIMEOUT) -> None:
        try:
            self.res = resolver.make_resolver(timeout)
        except ValueError as e:         # an entry that parses but is no address
            raise DNSTrouble(f"unusable nameservers: {e}") from None
        self.dead: str | None = None

    def rdatas(self, name: str, rdtype: str) -> list[Any]:
        """The records of one type; [] for NXDOMAIN or no data."""
        if self.dead:
            raise DNSTrouble(self.dead)
        try:
            answer = self.res.resolve(name, rdtype, search=False, raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.name.EmptyLabel,
                dns.name.LabelTooLong, dns.name.NameTooLong):      # no such name can exist
            return []
        except dns.exception.Timeout:
            self.dead = f"DNS trouble: the resolver does not answer ({name} {rdtype} timed out)"
            raise DNSTrouble(self.dead) from None
        except dns.resolver.NoNameservers:
            raise DNSTrouble(f"DNS trouble: {name} {rdtype}: every nameserver failed "
                             f"(SERVFAIL or refused)") from None
        except dns.exception.DNSException as e:
            raise DNSTrouble(f"DNS trouble: {name} {rdtype}: {e}") from None
        return list(answer.rrset or [])

    def txt(self, name: str) -> list[str]:
        """Each TXT record's strings joined."""
        return [b"".join(r.strings).decode("utf-8", "replace") for r in self.rdatas(name, "TXT")]

    def addresses(self, name: str) -> list[str]:
        """A then AAAA, canonical text."""
        return [str(ipaddress.ip_address(r.address))
                for t in ("A", "AAAA") for r in self.rdatas(name, t)]

    def mx(self, name: str) -> list[tuple[int, str]]:
        """(preference, exchange) sorted; the null MX's exchange is ``""``."""
        return sorted((r.preference, r.exchange.to_text(omit_final_dot=True).lower())
                      for r in self.rdatas(name, "MX"))

    def ptr(self, ip: str) -> list[str]:
        """The names an address's PTR records give."""
        return [r.target.to_text(omit_final_dot=True).lower()
                for r in self.rdatas(reverse_name(ip), "PTR")]


def reverse_name(ip: str) -> str:
    """``2.0.0.127.in-addr.arpa.`` for 127.0.0.2."""
    return dns.reversename.from_address(ip).to_text()


# -- this host -----------------------------------------------------------------------------

def outgoing_ip() -> str | None:
    """The source address the kernel picks towards the Internet (UDP connect: no packet)."""
    for target in PUBLIC:
        family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect(target)
                return str(ipaddress.ip_address(s.getsockname()[0].split("%")[0]))
        except (OSError, ValueError):
            continue
    return None


def this_host(ip: str | None) -> Host:
    """me, the HELO name and the sending address; ControlError if control/ is unreadable."""
    me = (control.read_line("me") or b"").decode("utf-8", "replace").lower().rstrip(".")
    helo = (control.read_line_me("helohost") or b"").decode("utf-8", "replace").lower().rstrip(".")
    if ip is not None:
        return Host(me, helo or me, str(ipaddress.ip_address(ip)), True)
    return Host(me, helo or me, outgoing_ip(), False)


def default_domains() -> list[str]:
    """Every domain in control/dkimdomains; without one, me's parent domain (``mx.example.com``
    → ``example.com``), or me itself when it has fewer than three labels."""
    table = dkimkeys.selectors()
    if table:
        return [d.decode("utf-8", "replace") for d in table]
    me = (control.read_line("me") or b"").decode("utf-8", "replace").lower().rstrip(".")
    labels = me.split(".") if me else []
    return [".".join(labels[1:] if len(labels) > 2 else labels)] if labels else []


def _unusable(host: Host) -> str | None:
    """Why the sending address cannot be checked, or None."""
    if host.ip is None:
        return "no route to the Internet to learn the address mail leaves from; give it with --ip"
    if not host.given and not ipaddress.ip_address(host.ip).is_global:
        return f"{host.ip} is not a public address (NAT?); give the public one with --ip"
    return None


def our_addresses(look: Lookup, host: Host) -> set[str]:
    """This host's interface addresses, the sending address, and me's A/AAAA."""
    ours: set[str] = set()
    try:
        ours |= mx.own_ips()
    except QmailError:
        pass
    if host.ip:
        ours.add(host.ip)
    if host.me:
        try:
            ours |= set(look.addresses(host.me))
        except DNSTrouble:
            pass
    return ours


# -- the checks --------------------------------------------------------------------------

def check_mx(look: Lookup, host: Host, ours: set[str], domain: str) -> tuple[Check, list[str]]:
    """MX of ``domain`` point at this host; also returns the names that do."""
    fix = (f"{domain}. IN MX 10 {host.me}.",)

    def is_us(name: str) -> bool:
        return name in (host.me, host.helo) or bool(ours & set(look.addresses(name)))

    try:
        records = look.mx(domain)
        if not records:
            if is_us(domain):
                return Check(WARN, "mx", f"no MX record for {domain}; mail goes to its own "
                                         f"address (implicit MX), which is this host", fix), [domain]
            return Check(FAIL, "mx", f"no MX record for {domain}", fix), []
        if records == [(0, "")]:
            return Check(FAIL, "mx", f"{domain} has a null MX (0 .): it receives no mail", fix), []
        us = [name for _, name in records if is_us(name)]
    except DNSTrouble as e:
        return Check(FAIL, "mx", e.text), []
    listed = ", ".join(f"{p} {n}" for p, n in records)
    if not us:
        return Check(FAIL, "mx", f"{domain} MX {listed}: none is this host ({host.me})", fix), []
    others = [n for _, n in records if n not in us]
    if others:
        return Check(WARN, "mx", f"{domain} MX {listed}: {', '.join(others)} is not this host "
                                 f"(a backup MX?)"), us
    return Check(OK, "mx", f"{domain} MX {listed} (this host)"), us


def check_ptr(look: Lookup, host: Host) -> Check:
    """The sending address's PTR is the HELO name, and that name resolves back to it."""
    why = _unusable(host)
    if why or host.ip is None:
        return Check(WARN, "ptr", why or "")
    ip, helo = host.ip, host.helo
    ask = f"{reverse_name(ip)} IN PTR {helo}.   ; ask the owner of {ip} (your provider)"
    try:
        names = look.ptr(ip)
        if not names:
            return Check(FAIL, "ptr", f"{ip} has no PTR record (HELO name {helo})", (ask,))
        if helo not in names:
            return Check(FAIL, "ptr", f"{ip} PTR {', '.join(names)}, not the HELO name {helo}",
                         (ask,))
        back = look.addresses(helo)
    except DNSTrouble as e:
        return Check(FAIL, "ptr", e.text)
    if ip not in back:
        kind = "AAAA" if ":" in ip else "A"
        return Check(FAIL, "ptr", f"{ip} PTR {helo}, but {helo} resolves to "
                                  f"{', '.join(back) or 'nothing'}", (f"{helo}. IN {kind} {ip}",))
    return Check(OK, "ptr", f"{ip} PTR {helo}, which resolves back to {ip}")


def spf_lookups(look: Lookup, domain: str, record: str) -> int:
    """The DNS-querying terms of ``record`` and of every record it includes or redirects to.

    Raises SpfError (does not parse, include without record, loop) and DNSTrouble."""
    count = 0

    def walk(owner: str, text: str, path: tuple[str, ...]) -> None:
        nonlocal count
        try:
            terms = spf_terms(text)
        except ValueError as e:
            raise SpfError(f"the SPF record of {owner} does not parse: {e}") from None
        has_all = any(n == "all" for n, _ in terms)
        for name, arg in terms:
            if name not in SPF_QUERYING or name == "redirect=" and has_all:
                continue                    # redirect= beside all is ignored (RFC 7208 §6.1)
            count += 1
            if count > SPF_GIVE_UP:
                return
            if name not in ("include", "redirect=") or "%" in arg:
                continue                    # a macro is known only when evaluated
            target = arg.lower().rstrip(".")
            if target in path + (owner,):
                raise SpfError(f"the SPF record of {owner} includes {target} in a loop")
            found = spf_records(look.txt(target))
            if len(found) != 1:
                term = name + arg if name.endswith("=") else f"{name}:{arg}"
                raise SpfError(f"{term} in the SPF record of {owner}: " + (
                    f"{len(found)} SPF records there" if found else "no SPF record there"))
            walk(target, found[0], path + (owner,))

    walk(domain, record, ())
    return count


def spf_evaluate(look: Lookup, host: Host, domain: str) -> tuple[str, str]:
    """pyspf's result and explanation for postmaster@domain from the sending address."""
    with spfcheck.resolving(look.rdatas, (DNSTrouble,)) as spf:
        query = spf.query(i=host.ip, s=f"postmaster@{domain}", h=host.helo, querytime=0)
        result, _code, text = query.check()
    return result, text


def check_spf(look: Lookup, host: Host, domain: str) -> Check:
    """One SPF record, parsing, within 10 lookups, passing for the sending address."""
    ip, why = host.ip, _unusable(host)
    term = "a mx" if why or not ip else f"ip{6 if ':' in ip else 4}:{ip}"
    suggest = zone_txt(domain, f"v=spf1 {term} -all")
    try:
        found = spf_records(look.txt(domain))
        if not found:
            return Check(FAIL, "spf", f"no SPF record (v=spf1 TXT) at {domain}", (suggest,))
        if len(found) > 1:
            return Check(FAIL, "spf", f"{len(found)} SPF records at {domain}; RFC 7208 §4.5 "
                                      f"allows one", (f"; keep one SPF record at {domain}, e.g.",
                                                      suggest))
        record = found[0]
        count = spf_lookups(look, domain, record)
    except SpfError as e:
        return Check(FAIL, "spf", e.text, (suggest,))
    except DNSTrouble as e:
        return Check(FAIL, "spf", e.text)
    if count > SPF_LIMIT:
        many = f"more than {SPF_GIVE_UP}" if count > SPF_GIVE_UP else str(count)
        return Check(FAIL, "spf", f"the SPF record of {domain} needs {many} DNS lookups; "
                                  f"RFC 7208 §4.6.4 allows {SPF_LIMIT}",
                     ("; replace include, a and mx terms with ip4:/ip6: ranges, e.g.", suggest))
    if why or ip is None:
        return Check(WARN, "spf", f"{domain}: {record!r} parses ({count} DNS lookups); "
                                  f"not evaluated: {why}")
    result, text = spf_evaluate(look, host, domain)
    if result == "pass":
        return Check(OK, "spf", f"{domain}: {record!r} passes for {ip} ({count} DNS lookups)")
    if result == "temperror":
        return Check(FAIL, "spf", text if text.startswith("DNS trouble") else f"DNS trouble: {text}")
    fixed = suggest if result == "permerror" else zone_txt(domain, spf_with(record, term))
    return Check(FAIL, "spf", f"{domain}: {record!r} gives {result} for {ip}"
                              + (f" ({text})" if text and result == "permerror" else ""), (fixed,))


def published_key(domain: bytes, selector: bytes) -> tuple[str, bytes, str]:
    """(k=, public key, zone line) of a selector: its private key, else its .pub; BadKey."""
    try:
        key = dkimkeys.load(domain, selector)
        k = "ed25519" if key.algorithm == dkimkeys.ED25519 else "rsa"
        return k, dkim_public(key.txt(), k), key.zone_line()
    except dkimkeys.BadKey as e:
        try:
            with open(dkimkeys.key_path(domain, selector) + ".pub") as f:
                line = f.read().strip()
            return (*pub_file(line), line)
        except (OSError, ValueError):
            raise e from None


def check_dkim(look: Lookup, domain: str, selector: str, signing: bool) -> Check:
    """S._domainkey.domain publishes the selector's key."""
    name, owner = f"dkim {selector}", f"{selector}._domainkey.{domain}"
    state = "signing" if signing else "not signing yet"
    try:
        k, public, line = published_key(domain.encode(), selector.encode())
        texts = look.txt(owner)
    except dkimkeys.BadKey as e:
        return Check(FAIL, name, e.text)
    except DNSTrouble as e:
        return Check(FAIL, name, e.text)
    if not texts:
        return Check(FAIL if signing else WARN, name, f"{owner} is not published ({state})",
                     (line,))
    if len(texts) > 1:
        return Check(FAIL, name, f"{owner} has {len(texts)} TXT records; verifiers need one",
                     (line,))
    try:
        published = dkim_public(texts[0], k)
    except ValueError as e:
        return Check(FAIL, name, f"{owner}: {e}", (line,))
    if published != public:
        return Check(FAIL, name, f"{owner} publishes another key than "
                                 f"control/domainkeys/{domain}/{selector}", (line,))
    return Check(OK, name, f"{owner} publishes the {k} key ({state})")


def check_dkim_all(look: Lookup, domain: str) -> list[Check]:
    """check_dkim for every selector of ``domain``; a warning when it has none."""
    name = domain.encode()
    try:
        active = dkimkeys.selectors().get(name, [])
        sels = active + [s for s in dkimkeys.on_disk(name) if s not in active]
    except dkimkeys.BadKey as e:
        return [Check(FAIL, "dkim", e.text)]
    if not sels:
        return [Check(WARN, "dkim", f"no DKIM key for {domain}: its mail leaves unsigned",
                      (f"; qpy dkim keygen {domain}   (then publish the record it prints)",))]
    return [check_dkim(look, domain, s.decode(), s in active) for s in sels]


def check_dmarc(look: Lookup, domain: str) -> Check:
    """One v=DMARC1 record at _dmarc.domain, and it parses."""
    owner = f"_dmarc.{domain}"
    suggest = zone_txt(owner, f"v=DMARC1; p=none; rua=mailto:postmaster@{domain}")
    try:
        texts = [t for t in look.txt(owner) if "dmarc" in t.lower()]
    except DNSTrouble as e:
        return Check(FAIL, "dmarc", e.text)
    if not texts:
        return Check(FAIL, "dmarc", f"no DMARC record at {owner}", (suggest,))
    if len(texts) > 1:
        return Check(FAIL, "dmarc", f"{len(texts)} DMARC records at {owner}: receivers then "
                                    f"apply none (RFC 7489 §6.6.3)", (suggest,))
    problem = dmarc_problem(texts[0])
    if problem:
        return Check(FAIL, "dmarc", f"{owner}: {texts[0]!r}: {problem}", (suggest,))
    policy = dict(tag_list(texts[0]))["p"]
    return Check(OK, "dmarc", f"{owner}: p={policy}"
                              + (" (reports only, no enforcement)" if policy == "none" else ""))


def name_matches(pattern: str, name: str) -> bool:
    """RFC 6125 §6.4: exact, or ``*.rest`` for one left-most label (rest has a dot)."""
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern.startswith("*."):
        label, _, rest = name.partition(".")
        return bool(label) and rest == pattern[2:] and "." in rest
    return "*" not in pattern and pattern == name


def certificate_names(cert: Any) -> list[str]:
    """The SAN DNS names; the subject's CN only when there is no SAN extension."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        return list(san.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def _utc(cert: Any, name: str) -> datetime.datetime:
    """A validity bound, timezone-aware (``*_utc`` is cryptography 42's; 41 has naive UTC)."""
    value = getattr(cert, name + "_utc", None)
    return value if value is not None else getattr(cert, name).replace(tzinfo=datetime.timezone.utc)


def check_cert(names: list[str], now: datetime.datetime | None = None) -> Check:
    """control/servercert.pem covers ``names`` and does not expire within CERT_DAYS."""
    from cryptography import x509
    try:
        data = control.read_bytes("servercert.pem")
    except QmailError as e:
        return Check(WARN, "cert", e.text)
    if data is None:
        return Check(WARN, "cert", "no control/servercert.pem: the SMTP server offers no STARTTLS")
    try:
        cert = x509.load_pem_x509_certificates(data)[0]
    except ValueError:
        return Check(FAIL, "cert", "control/servercert.pem holds no certificate that parses")
    now = now or datetime.datetime.now(datetime.timezone.utc)
    until, since = _utc(cert, "not_valid_after"), _utc(cert, "not_valid_before")
    covered = certificate_names(cert)
    missing = [n for n in names if not any(name_matches(p, n) for p in covered)]
    if until <= now:
        return Check(FAIL, "cert", f"the certificate expired on {until:%Y-%m-%d}")
    if since > now:
        return Check(FAIL, "cert", f"the certificate is valid only from {since:%Y-%m-%d}")
    if missing:
        return Check(FAIL, "cert", f"the certificate is for {', '.join(covered) or 'no name'}, "
                                   f"not {', '.join(missing)}")
    left = (until - now).days
    if left < CERT_DAYS:
        return Check(FAIL, "cert", f"the certificate for {', '.join(names)} expires on "
                                   f"{until:%Y-%m-%d}, in {left} days: renew it")
    return Check(OK, "cert", f"the certificate covers {', '.join(names)} until {until:%Y-%m-%d}")


def check_policy(look: Lookup, name: str, owner: str, problem: Callable[[str], str | None]) -> Check:
    """An optional record (MTA-STS, TLS-RPT): none is ok, one must be valid, two are wrong.

    Every TXT at ``owner`` starting ``v=`` counts, so a wrong version is reported, not ignored."""
    try:
        texts = [t for t in look.txt(owner) if t.lstrip().startswith("v=")]
    except DNSTrouble as e:
        return Check(FAIL, name, e.text)
    if not texts:
        return Check(OK, name, f"no {name} record at {owner} (optional)")
    if len(texts) > 1:
        return Check(FAIL, name, f"{len(texts)} records at {owner}; there must be one")
    why = problem(texts[0])
    if why:
        return Check(FAIL, name, f"{owner}: {texts[0]!r}: {why}")
    return Check(OK, name, f"{owner}: {texts[0]!r}")


# -- the whole report -------------------------------------------------------------------------

def run(domains: list[str], ip: str | None = None, timeout: float = TIMEOUT) -> list[Check]:
    """Every check for ``domains`` (the PTR check once); ControlError if control/ is unreadable."""
    look = Lookup(timeout)
    host = this_host(ip)
    ours = our_addresses(look, host)
    checks: list[Check] = []
    for domain in domains:
        check, names = check_mx(look, host, ours, domain)
        checks.append(check)
        if domain == domains[0]:
            checks.append(check_ptr(look, host))
        checks.append(check_spf(look, host, domain))
        checks += check_dkim_all(look, domain)
        checks.append(check_dmarc(look, domain))
        checks.append(check_cert(names or [host.me]))
        checks.append(check_policy(look, "mta-sts", f"_mta-sts.{domain}", sts_problem))
        checks.append(check_policy(look, "tls-rpt", f"_smtp._tls.{domain}", tlsrpt_problem))
    return checks


def records(checks: list[Check]) -> list[str]:
    """The fix lines of every check that is not ok, each once."""
    return list(dict.fromkeys(f for c in checks if c.status != OK for f in c.fix))


def report(checks: list[Check]) -> str:
    """One line per check, then the records to publish."""
    lines = [c.line() for c in checks]
    fixes = records(checks)
    if fixes:
        lines += ["", "; records to publish", *fixes]
    return "\n".join(lines) + "\n"


def as_dict(checks: list[Check]) -> dict[str, Any]:
    """The report as data (``qpy doctor --json``)."""
    return {"checks": [dict(asdict(c), fix=list(c.fix)) for c in checks],
            "records": records(checks), "ok": exit_code(checks) == 0}


def exit_code(checks: list[Check]) -> int:
    """0 when nothing fails (warnings allowed), else 1."""
    return 1 if any(c.status == FAIL for c in checks) else 0
