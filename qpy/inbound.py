"""Mail from outside: its DKIM signatures, DMARC and ARC checked, the verdicts written down.

qmail-smtpd holds a message from a client that is neither RELAYCLIENT nor authenticated
until its end, then calls ``check()`` once.  It verifies every DKIM-Signature (RFC 6376:
RSA and Ed25519, dkimpy with PyNaCl; at most MAX_SIGNATURES of them), evaluates DMARC
(RFC 7489) for each From: domain, validates the ARC chain (RFC 8617, dkimpy's
arc_verify), and returns a ``Checked``:

- ``fields``: one ``Authentication-Results:`` field (RFC 8601; authserv-id from
  control/authservid, else me) with ``spf=`` (the transaction's qpy.spfcheck.Verdict,
  when SPF was checked), one ``dkim=`` per signature with ``header.d``, ``header.s``,
  ``header.a`` and ``header.b`` (b= cut to the first 8 or more characters that tell the
  message's signatures apart, RFC 6008), ``dkim=none`` for an unsigned message, one
  ``dmarc=<result> (p=… [sp=…] dis=…) header.from=<domain>`` per From: domain and
  ``arc=``; above it ``X-Qpy-Quarantine: dmarc <domain>`` when DMARC asks for quarantine
  and control/dmarcenforce is 1;
- ``message``: the message without the Authentication-Results fields that carry our
  authserv-id (compared without case; folded lines go with their field) and without
  X-Qpy-Quarantine fields, so nobody outside can forge our verdict; other fields stay;
- ``refusal``: ``550 … (#5.7.1)`` when dmarcenforce is 1 and a failing From: domain's
  policy is p=reject (after pct=), else None.

DMARC: the ``_dmarc.<From domain>`` TXT record, else the organizational domain's (the
``publicsuffixlist`` package's bundled list; nothing is fetched), whose ``sp=`` then
applies; more than one record, or one without a usable p= (and no rua=, §6.6.3), is
permerror.  A DKIM pass or an SPF pass whose domain aligns (relaxed: same
organizational domain; strict: same name; adkim=, aspf=) passes.  A fail is enforced
only when SPF was checked (spfbehavior ≥ 1): without it an SPF-aligned sender would be
refused wrongly.  pct= below 100 applies the next milder policy to the messages outside
the sample (§6.6.4).  DNS trouble (a timeout, SERVFAIL, the spent qpy.dnsbudget.Budget)
is ``temperror`` for a signature, and for DMARC when its record, or a potentially
aligned identifier, could not be looked up; temperror is never enforced.  A malformed
name an attacker puts into d= or s= is no record, never DNS trouble.
"""
from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qpy import control, spfcheck, submit

if TYPE_CHECKING:       # dnspython only when a message is checked
    from qpy.dnsbudget import Budget

MAX_SIGNATURES = 10         # verified per message (RFC 6376 §6.1 lets verifiers limit them)
MAX_FROM_DOMAINS = 5        # From: domains evaluated per message
MINKEY = 1024               # RSA bits (RFC 8301 §3.2)
QUARANTINE = b"X-Qpy-Quarantine"
POLICIES = (b"none", b"quarantine", b"reject")
_RANK = {"none": 0, "quarantine": 1, "reject": 2}
_MILDER = {"reject": "quarantine", "quarantine": "none", "none": "none"}
_NOT_TOKEN = re.compile(rb'[^!#$%&\'*+\-.0-9A-Z^_`a-z{|}~]')    # RFC 2045 token chars
_OURS = re.compile(rb"^(?:authentication-results|x-qpy-quarantine)[ \t]*:([^\n]*\n?"
                   rb"(?:[ \t][^\n]*\n?)*)", re.I | re.M)


class _Trouble(Exception):
    """A lookup that got no usable answer: timeout, SERVFAIL, spent budget."""


# -- what was found ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Signature:
    """The verdict on one DKIM-Signature (RFC 8601 §2.7.1)."""

    result: str             # pass, fail, policy, neutral, temperror, permerror
    domain: bytes           # d=
    selector: bytes         # s=
    algorithm: bytes        # a=
    b: bytes                # b=, cut for header.b
    reason: str = ""

    def clause(self) -> bytes:
        """``dkim=<result> (<reason>) header.d=… header.s=… header.a=… header.b=…``."""
        return (b"dkim=" + self.result.encode() + _comment(self.reason)
                + b" header.d=" + _value(self.domain) + b" header.s=" + _value(self.selector)
                + b" header.a=" + _value(self.algorithm) + b" header.b=" + _value(self.b))


@dataclass(frozen=True)
class Dmarc:
    """DMARC for one From: domain (RFC 7489 §11.2)."""

    result: str                 # pass, fail, none, temperror, permerror
    domain: bytes               # the From: domain; b"" when the message has none
    policy: bytes = b""         # the record's p=; b"" without a record
    sp: bytes = b""             # the record's sp= when it is the policy that applies
    disposition: str = "none"   # what is done: none, quarantine, reject
    reason: str = ""

    def clause(self) -> bytes:
        """``dmarc=<result> (p=… dis=…) header.from=<domain>``."""
        notes = []
        if self.policy:
            notes.append(b"p=" + self.policy + (b" sp=" + self.sp if self.sp else b"")
                         + b" dis=" + self.disposition.encode())
        if self.reason:
            notes.append(_clean(self.reason))
        text = b"dmarc=" + self.result.encode()
        if notes:
            text += b" (" + b"; ".join(notes) + b")"
        return text + (b" header.from=" + _value(self.domain) if self.domain else b"")


@dataclass(frozen=True)
class Checked:
    """What check() found, and what qmail-smtpd does with it."""

    fields: bytes                   # put on top: X-Qpy-Quarantine? Authentication-Results
    message: bytes                  # the message without forged fields of ours
    refusal: bytes | None           # 550 5.7.1 for DMARC p=reject under dmarcenforce 1
    signatures: tuple[Signature, ...]
    dmarc: tuple[Dmarc, ...]
    arc: str                        # pass, fail, none


# -- the one call -----------------------------------------------------------------------------

def check(message: bytes, spf: spfcheck.Verdict | None = None, budget: Budget | None = None,
          enforce: bool | None = None, authserv_id: bytes | None = None) -> Checked:
    """Check ``message`` (as stored: LF lines, without our Received line); DNS on ``budget``
    (None: a new one); ``enforce`` and ``authserv_id`` default to control/dmarcenforce == 1
    and control/authservid (else me)."""
    srv = authserv_id if authserv_id is not None else submit.authserv_id()
    if enforce is None:
        enforce = control.read_int("dmarcenforce") == 1
    if budget is None:
        from qpy.dnsbudget import Budget
        budget = Budget()
    fields = submit.header_fields(message)
    names = {name for name, _ in fields}
    lookup = TxtLookup(budget)
    arcs = bool(names & {b"arc-seal", b"arc-message-signature", b"arc-authentication-results"})
    wire = submit.wire(message) if arcs or b"dkim-signature" in names else b""
    sigs = verify_dkim(wire, lookup) if b"dkim-signature" in names else []
    dmarcs = [evaluate_dmarc(d, sigs, spf, lookup, enforce) for d in author_domains(fields)]
    if not dmarcs:
        dmarcs = [Dmarc("none", b"", reason="no From: domain")]
    arc, why = verify_arc(wire, lookup) if arcs else ("none", "")
    clauses = [] if spf is None else [spf.ar_clause().encode("utf-8", "replace")]
    clauses += [s.clause() for s in sigs] or [b"dkim=none"]
    clauses += [d.clause() for d in dmarcs]
    clauses.append(b"arc=" + arc.encode() + _comment(why))
    top = b"Authentication-Results: " + srv + b";\n\t" + b";\n\t".join(clauses) + b"\n"
    worst = max(dmarcs, key=lambda d: _RANK[d.disposition])
    refusal = None
    if worst.disposition == "reject":
        refusal = (b"550 sorry, the DMARC policy of %s rejects this message (#5.7.1)"
                   % _clean(worst.domain.decode("ascii", "replace")))
    elif worst.disposition == "quarantine":
        top = QUARANTINE + b": dmarc " + _value(worst.domain) + b"\n" + top
    return Checked(top, strip_ours(message, srv), refusal, tuple(sigs), tuple(dmarcs), arc)


def preload() -> None:
    """In a long-lived parent of qmail-smtpd sessions: import dkimpy and dnspython and
    parse the Public Suffix List once (~110 ms), instead of once per session."""
    try:
        import dkim  # noqa: F401
        import nacl.signing  # noqa: F401
        from qpy import dnsbudget  # noqa: F401
        _suffixes()
    except ImportError:
        pass                        # the session will say what is missing


# -- forged fields ----------------------------------------------------------------------------

def strip_ours(message: bytes, authserv_id: bytes) -> bytes:
    """``message`` (LF or CRLF lines) without Authentication-Results fields that carry
    ``authserv_id`` and without X-Qpy-Quarantine fields; everything else byte for byte."""
    end = header_end(message)
    head = message[:end]
    ours = authserv_id.lower().rstrip(b".")
    cuts = [m.span() for m in _OURS.finditer(head)
            if m[0][:1] in b"Xx" or authserv_id_of(m[1]) == ours]
    if not cuts:
        return message
    kept, pos = [], 0
    for start, stop in cuts:
        kept.append(head[pos:start])
        pos = stop
    return b"".join(kept) + head[pos:] + message[end:]


def header_end(message: bytes) -> int:
    """Where the header section ends: the offset of the empty line (or the end)."""
    if message[:1] == b"\n" or message[:2] == b"\r\n":
        return 0
    m = re.search(rb"\n\r?\n", message)
    return len(message) if m is None else m.start() + 1


def authserv_id_of(value: bytes) -> bytes:
    """The authserv-id an Authentication-Results value starts with (RFC 8601 §2.2: comments
    and folding skipped, a quoted-string unquoted), lower case, without a final dot."""
    i, depth = 0, 0
    while i < len(value):                   # [CFWS]
        c = value[i:i + 1]
        if c == b"\\" and depth:
            i += 1
        elif c == b"(":
            depth += 1
        elif c == b")" and depth:
            depth -= 1
        elif not depth and not c.isspace():
            break
        i += 1
    rest = value[i:]
    if rest[:1] == b'"':
        m = re.match(rb'"((?:[^"\\]|\\.)*)"', rest, re.S)
        word = re.sub(rb"\\(.)", rb"\1", m[1], flags=re.S) if m else rest[1:]
    else:
        word = re.match(rb"[^\s;()]*", rest)[0]     # type: ignore[index]
    return word.lower().rstrip(b".")


# -- DKIM -------------------------------------------------------------------------------------

class TxtLookup:
    """dkimpy's ``dnsfunc`` on the message's budget: the first TXT record of a name, None
    for none; dkim.DnsTimeoutError for DNS trouble.  Answers are kept for the message (DKIM
    and ARC often ask for the same key) and ``trouble`` says whether any lookup failed."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.answers: dict[str, list[bytes] | None] = {}     # None: DNS trouble
        self.trouble = False

    def records(self, name: str) -> list[bytes]:
        """All TXT records of ``name`` (strings joined); _Trouble for DNS trouble."""
        key = name.lower().rstrip(".")
        if key not in self.answers:
            try:
                self.answers[key] = _txt(self.budget, key)
            except _Trouble:
                self.answers[key] = None
        found = self.answers[key]
        if found is None:
            self.trouble = True
            raise _Trouble(name)
        return found

    def __call__(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        import dkim
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        try:
            found = self.records(text)
        except _Trouble:
            raise dkim.DnsTimeoutError(f"DNS trouble for {text}") from None
        return found[0] if found else None

    def state(self, name: bytes) -> list[bytes] | None:
        """What a lookup of ``name`` gave: its records, or None for DNS trouble."""
        return self.answers.get(name.decode("ascii", "replace").lower().rstrip("."), [])


def _txt(budget: Budget, name: str) -> list[bytes]:
    """The TXT records of ``name`` on ``budget``: [] for no such name or no data (a name
    that cannot exist included); _Trouble only for timeouts, SERVFAIL and a spent budget."""
    import dns.exception
    import dns.resolver

    from qpy.dnsbudget import Spent
    try:
        answer = budget.resolve(name, "TXT", raise_on_no_answer=False)
    except spfcheck.no_such_name():
        return []
    except (Spent, dns.exception.Timeout, dns.resolver.NoNameservers,
            dns.resolver.LifetimeTimeout) as e:
        raise _Trouble(f"{name}: {e}") from None
    except (dns.exception.DNSException, ValueError, UnicodeError):
        return []                       # a name nobody can publish records at
    return [b"".join(r.strings) for r in answer.rrset or []]


def verify_dkim(wire: bytes, lookup: TxtLookup) -> list[Signature]:
    """One Signature per DKIM-Signature of ``wire`` (CRLF lines), at most MAX_SIGNATURES."""
    import dkim
    from dkim.util import parse_tag_value
    try:
        checker: dkim.DKIM | None = dkim.DKIM(wire, minkey=MINKEY)
        values = [v for n, v in checker.headers if n.lower() == b"dkim-signature"]
    except Exception:                   # a header section dkimpy cannot read
        checker = None
        values = [v for n, v in submit.header_fields(wire.replace(b"\r\n", b"\n"))
                  if n == b"dkim-signature"]
    values = values[:MAX_SIGNATURES]
    tags: list[dict[bytes, bytes]] = []
    for value in values:
        try:
            tags.append(parse_tag_value(re.sub(rb"\r?\n[ \t]", b" ", value)))
        except Exception:
            tags.append({})
    bs = [re.sub(rb"\s+", b"", t.get(b"b", b"")) for t in tags]
    out = []
    for i, t in enumerate(tags):
        if checker is None:
            result, reason = "permerror", "header section unreadable"
        elif not t:
            result, reason = "permerror", "signature unreadable"
        else:
            result, reason = _verify_one(checker, i, t, lookup)
        out.append(Signature(result, t.get(b"d", b"unknown"), t.get(b"s", b"unknown"),
                             t.get(b"a", b"unknown"), _short_b(bs[i], bs), reason))
    return out


def _verify_one(checker, idx: int, tags: dict[bytes, bytes], lookup: TxtLookup) -> tuple[str, str]:
    """(result, reason) of the idx-th signature."""
    import dkim
    if tags.get(b"a", b"").lower() == b"rsa-sha1":
        return "policy", "rsa-sha1 is not acceptable, RFC 8301"
    try:
        if checker.verify(idx=idx, dnsfunc=lookup):
            return "pass", ""
    except dkim.ValidationError as e:
        text = str(e)
        if "body hash mismatch" in text:
            return "fail", "body hash did not verify"
        if "x= value is past" in text:
            return "permerror", "signature expired"
        return "permerror", text.split(" (")[0]
    except dkim.KeyFormatError as e:
        return "permerror", str(e).split(":")[0]
    except dkim.DKIMException as e:
        return "permerror", str(e).split(":")[0][:60]
    except Exception as e:              # dkimpy on input it did not expect
        return "permerror", type(e).__name__
    name = tags.get(b"s", b"") + b"._domainkey." + tags.get(b"d", b"")
    found = lookup.state(name)
    if found is None:
        return "temperror", "key lookup failed"
    if not found:
        return "permerror", "no key"
    key = dict(_tag_pairs(found[0]))
    if key.get(b"p", b"x") == b"":
        return "permerror", "key revoked"
    try:
        dkim.evaluate_pk(name, found[0])
    except Exception:
        return "permerror", "key unusable"
    return "fail", "signature did not verify"


def _tag_pairs(text: bytes) -> list[tuple[bytes, bytes]]:
    """A tag=value list's pairs, names lower case, lenient."""
    pairs = []
    for part in text.split(b";"):
        name, eq, value = part.partition(b"=")
        if eq:
            pairs.append((name.strip().lower(), re.sub(rb"\s+", b"", value)))
    return pairs


def _short_b(b: bytes, every: list[bytes]) -> bytes:
    """The shortest start of ``b``, at least 8 characters, that no other b= shares (RFC 6008)."""
    n = 8
    while n < len(b) and any(o != b and o[:n] == b[:n] for o in every):
        n += 1
    return b[:n] or b"none"


# -- ARC --------------------------------------------------------------------------------------

def verify_arc(wire: bytes, lookup: TxtLookup) -> tuple[str, str]:
    """(pass | fail | none, reason) for the ARC chain of ``wire``."""
    import dkim
    lookup.trouble = False
    try:
        cv, _, reason = dkim.arc_verify(wire, dnsfunc=lookup, minkey=MINKEY)
    except Exception as e:              # dkimpy on input it did not expect
        return "fail", type(e).__name__
    if cv == dkim.CV_Pass:
        return "pass", ""
    if cv == dkim.CV_None:
        return "none", ""
    return "fail", "DNS trouble" if lookup.trouble else str(reason)[:80]


# -- DMARC ------------------------------------------------------------------------------------

def author_domains(fields: list[tuple[bytes, bytes]]) -> list[bytes]:
    """The distinct domains of the From: addresses, in order, lower case, IDNA (at most
    MAX_FROM_DOMAINS: two From: fields or addresses are evaluated each)."""
    from email.utils import getaddresses
    values = [v.decode("utf-8", "replace") for n, v in fields if n == b"from"]
    texts = [address.rpartition("@")[2] for _, address in getaddresses(values) if "@" in address]
    if not any(_hostname(t) for t in texts):     # a From: its parser gives up on: any @domain
        texts = re.findall(r"@([^\s@]+)", " ".join(values))
    found: list[bytes] = []
    for text in texts:
        domain = _hostname(text)
        if domain and domain not in found:
            found.append(domain)
    return found[:MAX_FROM_DOMAINS]


def _hostname(text: str) -> bytes:
    """The host name ``text`` starts with (letters, digits, ``-``, ``.``), lower case, IDNA;
    b"" if there is none (``paypal.com>`` is paypal.com: what a reader would see)."""
    m = re.match(r"[^\W_](?:[\w.-]*[^\W_])?", text.strip())
    try:
        return m[0].lower().encode("idna") if m else b""
    except UnicodeError:
        return b""


def org_domain(domain: bytes) -> bytes:
    """The organizational domain (RFC 7489 §3.2): the public suffix and one label more."""
    name = domain.decode("ascii", "replace").lower().rstrip(".")
    try:
        found = _suffixes().privatesuffix(name)
    except Exception:
        found = None
    return (found or name).encode("ascii", "replace")


_psl: list = []


def _suffixes():
    """The Public Suffix List of the publicsuffixlist package (its bundled copy), parsed once."""
    if not _psl:
        from publicsuffixlist import PublicSuffixList
        _psl.append(PublicSuffixList())
    return _psl[0]


def aligned(identifier: bytes, author: bytes, strict: bool) -> bool:
    """DMARC identifier alignment (RFC 7489 §3.1)."""
    a, b = identifier.lower().rstrip(b"."), author.lower().rstrip(b".")
    return a == b if strict else bool(a) and org_domain(a) == org_domain(b)


def parse_record(text: bytes) -> dict[bytes, bytes] | None:
    """The tags of a DMARC record (names lower case), None unless it starts v=DMARC1."""
    pairs = [p.partition(b"=") for p in text.split(b";")]
    if not pairs or pairs[0][0].strip().lower() != b"v" or pairs[0][2].strip() != b"DMARC1":
        return None
    tags: dict[bytes, bytes] = {}
    for name, eq, value in pairs:
        if eq:
            tags.setdefault(name.strip().lower(), value.strip())
    return tags


def find_policy(domain: bytes, records: Callable[[str], list[bytes]]
                ) -> tuple[dict[bytes, bytes], bool] | None:
    """(the DMARC record's tags, found at the organizational domain) for ``domain``, or None;
    ValueError for records that cannot be used; _Trouble for DNS trouble."""
    for at_org in (False, True):
        name = org_domain(domain) if at_org else domain
        if at_org and name == domain:
            break
        found = [t for t in (parse_record(r) for r in records("_dmarc." + name.decode("ascii")))
                 if t is not None]
        if len(found) > 1:
            raise ValueError("more than one DMARC record")
        if found:
            tags = found[0]
            bad = tags.get(b"p", b"").lower() not in POLICIES or \
                tags.get(b"sp", b"none").lower() not in POLICIES
            if bad and not tags.get(b"rua"):
                raise ValueError("DMARC record without a valid p=")
            if bad:                     # RFC 7489 §6.6.3 step 6: as if p=none
                tags = {b"v": b"DMARC1", b"p": b"none"}
            return tags, at_org
    return None


def evaluate_dmarc(domain: bytes, sigs: list[Signature], spf: spfcheck.Verdict | None,
                   lookup: TxtLookup, enforce: bool) -> Dmarc:
    """DMARC for one From: domain."""
    try:
        found = find_policy(domain, lookup.records)
    except _Trouble:
        return Dmarc("temperror", domain, reason="DNS trouble")
    except ValueError as e:
        return Dmarc("permerror", domain, reason=str(e))
    if found is None:
        return Dmarc("none", domain)
    tags, at_org = found
    p = tags[b"p"].lower()
    sp = tags.get(b"sp", b"").lower() if at_org else b""     # a subdomain's policy
    policy = sp or p
    strict_dkim = tags.get(b"adkim", b"r").lower() == b"s"
    strict_spf = tags.get(b"aspf", b"r").lower() == b"s"
    dkim_ids = [s for s in sigs if aligned(s.domain, domain, strict_dkim)]
    spf_ok = spf is not None and aligned(_ascii(spf.domain), domain, strict_spf)
    if any(s.result == "pass" for s in dkim_ids) or (spf_ok and spf.result == "pass"):
        return Dmarc("pass", domain, p, sp)
    if any(s.result == "temperror" for s in dkim_ids) or (spf_ok and spf.result == "temperror"):
        return Dmarc("temperror", domain, p, sp, reason="DNS trouble")
    if not enforce:
        return Dmarc("fail", domain, p, sp)
    if spf is None:
        return Dmarc("fail", domain, p, sp, reason="SPF not checked: not enforced")
    disposition = policy.decode()
    if random.randrange(100) >= _pct(tags.get(b"pct", b"100")):
        disposition = _MILDER[disposition]      # outside the sample (RFC 7489 §6.6.4)
    return Dmarc("fail", domain, p, sp, disposition)


def _ascii(domain: str) -> bytes:
    """A domain as DNS spells it (IDNA), b"" if it cannot be one."""
    try:
        return domain.strip().rstrip(".").lower().encode("idna")
    except UnicodeError:
        return b""


def _pct(text: bytes) -> int:
    """pct= as a number from 0 to 100 (100 when it is not one)."""
    return int(text) if text.isdigit() and int(text) <= 100 else 100


# -- header text ------------------------------------------------------------------------------

def _value(text: bytes) -> bytes:
    """A property value (RFC 8601 §2.2): a token, else a quoted-string; printable ASCII only."""
    text = bytes(c for c in text if 0x20 < c < 0x7f)[:255]
    if text and not _NOT_TOKEN.search(text):
        return text
    return b'"' + text.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _clean(text: str) -> bytes:
    """Text for a comment: printable ASCII without parentheses or backslashes, cut at 100."""
    return "".join(c if " " <= c <= "~" and c not in "()\\" else "?" for c in text)[:100].encode()


def _comment(text: str) -> bytes:
    """`` (text)``, or nothing for no text."""
    return b" (" + _clean(text) + b")" if text else b""
