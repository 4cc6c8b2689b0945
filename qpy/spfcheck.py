"""SPF (RFC 7208) for qmail-smtpd: the verdict on a client, and how it is written down.

``Verdict`` is one check's outcome: its result (RFC 7208 §2.6: none, neutral, pass,
fail, softfail, temperror, permerror), the identity checked (``mailfrom``, or ``helo``
when MAIL FROM is ``<>``), that identity's domain, and what the header needs.
``received_spf()`` is the Received-SPF field (§9.1); ``ar_clause()`` the ``spf=`` part
of Authentication-Results (RFC 8601 §2.7.2).

``check()`` makes a Verdict with pyspf, every lookup on the transaction's
qpy.dnsbudget.Budget: a timeout, a SERVFAIL or a spent budget is ``temperror``, never
``fail``.  pyspf looks names up through its module-level ``DNSLookup``; ``resolving()``
points that hook at a resolver of ours while one evaluation runs (qpy doctor uses it too).
A client address that is no IP address (``unknown``) and ``<>`` without a HELO give
``none`` without a lookup.

``refusal()`` is the qmail SPF patch's control/spfbehavior on a Verdict: 0 and 1 never
refuse; 2 answers temperror with ``451 … (#4.7.24)``; 3 refuses fail with ``550 … (#5.7.23)``
(RFC 7372); 4 also softfail, 5 also neutral (``#5.7.1``, a local policy); 6 also none and
permerror (``#5.7.24``).  The explanation in a 550 is the domain's exp= for fail (§6.2),
else control/spfexp, else DEFAULT_EXP, macros expanded (§7), printable ASCII only and cut
at EXP_MAX characters, for it may come from anyone's DNS.
"""
from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:       # qmail-smtpd imports this module; dnspython only when SPF is on
    from qpy.dnsbudget import Budget

RESULTS = ("none", "neutral", "pass", "fail", "softfail", "temperror", "permerror")
DEFAULT_EXP = "%{i} is not one of %{d}'s designated mail servers"   # libspf2's
EXP_MAX = 300
# spfbehavior level from which a result is refused at RCPT (temperror: 451 at MAIL from 2)
REFUSED_FROM = {"fail": 3, "softfail": 4, "neutral": 5, "none": 6, "permerror": 6}
_STATUS = {"fail": "5.7.23", "softfail": "5.7.1", "neutral": "5.7.1", "none": "5.7.1",
           "permerror": "5.7.24"}
_NOT_OURS = "\0qpy: the domain gave no explanation\0"
_HOOK = threading.Lock()
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\Z")


@dataclass(frozen=True)
class Verdict:
    """One SPF check of one SMTP transaction."""

    result: str             # one of RESULTS
    identity: str           # "mailfrom" or "helo"
    domain: str             # the domain whose record was checked
    sender: str             # the MAIL FROM address (postmaster@helo for <>)
    ip: str                 # the client's address
    helo: str               # the HELO/EHLO argument
    explanation: str = ""   # for fail: the domain's exp= text or control/spfexp, expanded

    def received_spf(self, receiver: str) -> bytes:
        """``Received-SPF: <result> (<comment>) key=value; …`` with an LF, as qpy stores lines."""
        comment = f"{receiver}: domain of {self.sender} "
        comment += {"pass": "designates", "fail": "does not designate",
                    "softfail": "does not designate"}.get(self.result, "neither permits nor denies")
        comment += f" {self.ip} as permitted sender"
        if self.result in ("temperror", "permerror", "none"):
            comment = f"{receiver}: {self.result} for {self.domain}"
        fields = [("client-ip", self.ip), ("envelope-from", self.sender),
                  ("helo", self.helo or "unknown"), ("receiver", receiver),
                  ("identity", self.identity)]
        text = f"Received-SPF: {self.result} ({_clean(comment)})\n\t" + ";\n\t".join(
            f"{key}={_value(value)}" for key, value in fields) + "\n"
        return text.encode("utf-8", "replace")

    def ar_clause(self) -> str:
        """``spf=<result> smtp.mailfrom=<domain>`` (or ``smtp.helo=``)."""
        key = "smtp.mailfrom" if self.identity == "mailfrom" else "smtp.helo"
        return f"spf={self.result} {key}={_clean(self.domain) or 'unknown'}"


def _clean(text: str) -> str:
    """Text safe inside a header: no control characters, no parentheses that could end a comment."""
    return "".join(c if c.isprintable() and c not in "()\\" else "?" for c in text)


def _value(text: str) -> str:
    """A key-value pair's value (RFC 7208 §9.1): a dot-atom as it is, else a quoted-string."""
    clean = _clean(text)
    if _DOT_ATOM.match(clean):
        return clean
    return '"' + clean.replace('"', '\\"') + '"'


# -- checking ---------------------------------------------------------------------------------

def check(ip: str, sender: str, helo: str | None, budget: Budget, receiver: str = "unknown",
          exp: str | None = None) -> Verdict:
    """SPF for one transaction: ``sender`` is MAIL FROM ("" for ``<>``: the HELO identity,
    postmaster@helo); ``exp`` is control/spfexp (None: DEFAULT_EXP)."""
    helo = helo or ""
    if not sender and not helo:         # <> and no HELO: no identity to check
        return Verdict("none", "helo", "", "", ip, helo)
    with resolving(_budget_rdatas(budget), (_Trouble,)) as spf:
        try:
            query = spf.query(i=ip, s=sender, h=helo, receiver=receiver, querytime=0)
        except spf.PermError:           # not an IP address (TCPREMOTEIP unknown)
            domain = sender.rpartition("@")[2] if sender else helo
            return Verdict("none", "mailfrom" if sender else "helo", domain,
                           sender or f"postmaster@{helo}", ip, helo)
        query.set_default_explanation(_NOT_OURS)
        try:
            result, _code, text = query.check()
        except Exception as e:          # pyspf's own trouble is never a reason to refuse
            result, text = "temperror", f"SPF evaluation failed: {e}"
        explanation = ""
        if result == "fail" and text != _NOT_OURS:
            explanation = text                          # the domain's exp= (§6.2)
        elif result == "permerror":
            explanation = text                          # what is wrong with the record
        elif result in REFUSED_FROM:
            explanation = _expand(query, exp or DEFAULT_EXP)
    if result not in RESULTS:
        result = "temperror"
    return Verdict(result, query.ident, query.o, query.s, ip, helo, _printable(explanation))


def refusal(verdict: Verdict | None, behavior: int) -> bytes | None:
    """The reply control/spfbehavior gives ``verdict`` (None: accept): temperror's 451
    belongs to MAIL, the 550s to RCPT, as in the qmail SPF patch."""
    if verdict is None or behavior < 2:
        return None
    domain = _printable(verdict.domain) or "unknown"
    if verdict.result == "temperror":
        return (b"451 SPF temperror for %s: DNS trouble, try again later (#4.7.24)"
                % domain.encode())
    level = REFUSED_FROM.get(verdict.result)
    if level is None or behavior < level:
        return None
    text = f"550 SPF {verdict.result} for {domain}"
    if verdict.explanation:
        text += f": {verdict.explanation}"
    return f"{text} (#{_STATUS[verdict.result]})".encode()


@contextlib.contextmanager
def resolving(rdatas: Callable[[str, str], list[Any]],
              trouble: tuple[type[BaseException], ...]) -> Iterator[Any]:
    """pyspf (the module) with its DNS hook on ``rdatas(name, type)`` → records ([] for
    none); the exceptions in ``trouble`` become pyspf's TempError.  The hook is module
    state: one evaluation at a time."""
    import spf

    def lookup(name: str, qtype: str, strict: Any = True, timeout: Any = None) -> list:
        try:
            found = rdatas(str(name), qtype)
        except trouble as e:
            raise spf.TempError(str(e)) from None
        values: list[Any]
        if qtype in ("A", "AAAA"):
            values = [r.address for r in found]
        elif qtype == "MX":     # a null MX (RFC 7505) names no host: "", never a query for "."
            values = [(r.preference, r.exchange.to_text(True) if len(r.exchange) > 1 else "")
                      for r in found]
        elif qtype == "PTR":
            values = [r.target.to_text(True) for r in found]
        else:
            values = [r.strings for r in found]
        return [((name, qtype), v) for v in values]

    with _HOOK:
        saved, spf.DNSLookup = spf.DNSLookup, lookup
        try:
            yield spf
        finally:
            spf.DNSLookup = saved


class _Trouble(Exception):
    """A lookup that got no usable answer (timeout, SERVFAIL, spent budget)."""


def no_such_name() -> tuple[type[Exception], ...]:
    """dnspython's failures that mean no records: NXDOMAIN, no data, a name that cannot
    exist (RFC 7208 §4.3: such a name has no records)."""
    import dns.name
    import dns.resolver
    return (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.name.EmptyLabel,
            dns.name.LabelTooLong, dns.name.NameTooLong, dns.name.IDNAException,
            dns.name.BadEscape)


def _budget_rdatas(budget: Budget) -> Callable[[str, str], list[Any]]:
    """Lookups on ``budget``: [] for no such name or no data, _Trouble for anything else."""
    import dns.exception

    from qpy.dnsbudget import Spent
    nothing = no_such_name()

    def rdatas(name: str, qtype: str) -> list[Any]:
        try:
            answer = budget.resolve(name, qtype, raise_on_no_answer=False)
        except nothing:
            return []
        except Spent as e:
            raise _Trouble(e.text) from None
        except dns.exception.DNSException as e:    # Timeout, NoNameservers (SERVFAIL), …
            raise _Trouble(f"DNS {name} {qtype}: {e}") from None
        return list(answer.rrset or [])
    return rdatas


def _expand(query: Any, text: str) -> str:
    """``text`` with its RFC 7208 §7 macros expanded (as an explanation: c, r, t allowed);
    the text as it is if it does not expand."""
    try:
        return str(query.expand(text, stripdot=False))
    except Exception:                   # a bad macro, or DNS trouble for %{p}
        return text


def _printable(text: str) -> str:
    """Printable ASCII only (an explanation goes into a reply line), at most EXP_MAX."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in text).strip()
    return clean[:EXP_MAX]
