"""DNS for one SMTP transaction: a timeout per lookup and a budget for the whole message.

qmail-smtpd's checks of a client (SPF, HELO and sender domain, DKIM, DMARC, ARC) ask DNS
many times per message; a resolver that stops answering must cost each session at most
``control/dnsbudget`` seconds in all and ``control/timeoutdns`` seconds per question, and
must never turn into a permanent refusal.  ``Budget`` hands out resolvers and lookups that
respect both: once the budget is spent every further lookup fails at once with
``Spent`` (a temporary DNS failure for the caller), and a timeout is always ``Spent`` or
dnspython's Timeout — never NXDOMAIN.  Each SMTP session is its own process, so a slow
lookup blocks only its own client.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from qpy import control, resolver
from qpy.errors import QmailError


class Spent(QmailError):
    """The message's DNS budget is used up: every further lookup is a temporary failure."""


class Budget:
    """The DNS allowance of one message (or one SMTP transaction)."""

    def __init__(self, total: float | None = None, per_lookup: float | None = None) -> None:
        self.total = float(control.read_int("dnsbudget") if total is None else total)
        self.per_lookup = float(control.read_int("timeoutdns") if per_lookup is None else per_lookup)
        self.spent = 0.0            # seconds spent waiting for DNS so far
        self._resolver: dns.resolver.Resolver | None = None

    def remaining(self) -> float:
        """Seconds left for DNS in this message (never negative).

        Only time spent in lookups counts, not the client's: a budget made at MAIL
        still has its seconds after a DATA that took minutes to arrive."""
        return max(0.0, self.total - self.spent)

    def lifetime(self) -> float:
        """The time the next lookup may take; Spent if none is left."""
        left = min(self.per_lookup, self.remaining())
        if left <= 0.05:
            raise Spent("DNS budget for this message used up (#4.4.3)")
        return left

    def resolver(self) -> dns.resolver.Resolver:
        """The instance's resolver (qpy.resolver), made once per budget."""
        if self._resolver is None:
            self._resolver = resolver.make_resolver(self.per_lookup)
        return self._resolver

    def resolve(self, name: str, rdtype: str, raise_on_no_answer: bool = True) -> dns.resolver.Answer:
        """One lookup within the budget; dnspython's exceptions, or Spent."""
        res = self.resolver()
        lifetime = self.lifetime()
        res.timeout = min(res.timeout, lifetime)
        start = time.monotonic()
        try:
            return res.resolve(name, rdtype, lifetime=lifetime,
                               raise_on_no_answer=raise_on_no_answer, search=False)
        finally:
            self.spent += time.monotonic() - start

    def txt_lookup(self) -> Callable[..., bytes | None]:
        """dkimpy's ``dnsfunc`` within the budget: a timeout or Spent is dkim.DnsTimeoutError."""
        def get_txt(name: bytes | str, timeout: float = 5) -> bytes | None:
            import dkim
            qname = name.decode("ascii", "replace") if isinstance(name, bytes) else name
            try:
                answer = self.resolve(qname, "TXT", raise_on_no_answer=False)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoNameservers, dns.name.LabelTooLong,
                    dns.name.EmptyLabel):
                return None
            except (dns.exception.Timeout, Spent) as e:
                raise dkim.DnsTimeoutError(str(e))
            for rrset in answer.response.answer:
                if rrset.rdtype == dns.rdatatype.TXT:
                    return b"".join(list(rrset.items)[0].strings)
            return None
        return get_txt
