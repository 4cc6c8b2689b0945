"""What qmail-smtpd checks about a client before it takes its mail: the HELO, the sender's
domain, SPF.  Each check is switched on by a control file and is off for an instance
without it; none applies to a RELAYCLIENT or authenticated client (the caller decides).

- ``helocheck`` bit 1 (Postfix's reject_invalid_helo_hostname and
  reject_non_fqdn_helo_hostname): a HELO/EHLO argument that is neither an FQDN (two or
  more labels of letters, digits, ``-`` and ``_`` as Postfix allows, none starting or
  ending with ``-``, the last not all digits, at most 253 bytes, one final dot allowed)
  nor an address literal (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``) → ``BAD_HELO``.
- ``helocheck`` bit 2: a HELO naming this host (control/me, control/locals, the
  greeting's first word, $TCPLOCALHOST, a domain listed as such in rcpthosts or
  morercpthosts.cdb) or one of its addresses (literal or bare) from a client that is
  neither loopback nor one of this host's addresses → ``OUR_HELO``.
- ``senderdomaincheck`` 1 (Postfix's reject_unknown_sender_domain): the MAIL FROM
  domain needs an MX, A or AAAA record.  NXDOMAIN or no such record → ``NO_SENDER_DOMAIN``;
  a null MX (RFC 7505: the domain sends and receives no mail) → ``NULL_MX``; DNS that
  fails, times out or has spent the budget → ``SENDER_DNS`` (450: never 5xx for DNS
  trouble).  ``<>`` and address literals are not looked up.
- ``spfbehavior`` ($SPFBEHAVIOR overrides) and ``spfexp``: qpy.spfcheck.

The HELO is judged at MAIL, not at HELO: qmail-smtpd does not require a HELO, so a
refused HELO would be a HELO the client simply leaves out; at MAIL the client has had
its chance to authenticate, and the refusal is a message's failure that it reports.
Each MAIL after a bad HELO is refused, until a good HELO.  Order at MAIL: HELO, sender
domain, SPF; the first refusal wins.  Every lookup is on the transaction's
qpy.dnsbudget.Budget.
"""
from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from qpy import control, scan, spfcheck
from qpy.rcpthosts import RcptHosts

if TYPE_CHECKING:       # dnspython only when a check that looks things up is on
    from qpy.dnsbudget import Budget

HELO_SYNTAX, HELO_OURS = 1, 2
BAD_HELO = (b"550 sorry, your HELO name is neither a fully qualified domain name nor an"
            b" address literal (#5.5.2)")
OUR_HELO = b"550 sorry, your HELO name claims to be this host (#5.7.1)"
NO_SENDER_DOMAIN = b"550 sorry, your envelope sender domain has no MX, A or AAAA record (#5.1.8)"
NULL_MX = b"550 sorry, your envelope sender domain accepts no mail (null MX) (#5.7.27)"
SENDER_DNS = (b"450 sorry, I cannot look up your envelope sender domain now, try again later"
              b" (#4.1.8)")
_LABEL = re.compile(rb"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")


class Checks:
    """The checks of one connection: control files and tcpserver's environment, read once."""

    def __init__(self, env: os._Environ | dict, greeting: bytes, rcpthosts: RcptHosts,
                 own_ip: Callable[[bytes], bool]) -> None:
        self.spfbehavior = control.read_int("spfbehavior")
        if env.get("SPFBEHAVIOR") is not None:
            self.spfbehavior = scan.ulong(env["SPFBEHAVIOR"])
        exp = control.read_line("spfexp")
        self.spfexp = exp.decode("utf-8", "replace") if exp else None
        self.helocheck = control.read_int("helocheck")
        self.senderdomaincheck = control.read_int("senderdomaincheck")
        self.dnstotal = control.read_int("dnsbudget")
        self.dnstimeout = control.read_int("timeoutdns")
        self.receiver = (greeting.split() or [b"unknown"])[0].decode("utf-8", "replace")
        self.remoteip = env.get("TCPREMOTEIP") or "unknown"
        self.localhost = os.fsencode(env.get("TCPLOCALHOST") or "").lower()
        self._rcpthosts, self._own_ip = rcpthosts, own_ip
        self._names: set[bytes] | None = None

    def budget(self) -> Budget:
        """A fresh DNS budget for one transaction (control/dnsbudget, control/timeoutdns)."""
        from qpy.dnsbudget import Budget
        return Budget(self.dnstotal, self.dnstimeout)

    def mail(self, sender: bytes, helo: bytes | None, relay: bytes | None,
             budget: Budget) -> tuple[bytes | None, spfcheck.Verdict | None]:
        """At MAIL: (the refusal, None to go on; the SPF verdict, None with SPF off).
        ``relay``: RELAYCLIENT's value or b"" after AUTH (nothing checked); else None."""
        if relay is not None:
            return None, None
        if helo is not None and self.helocheck:
            refusal = self.helo_refusal(helo)
            if refusal is not None:
                return refusal, None
        if self.senderdomaincheck:
            refusal = sender_domain_refusal(sender, budget)
            if refusal is not None:
                return refusal, None
        if not self.spfbehavior:
            return None, None
        verdict = spfcheck.check(self.remoteip, sender.decode("utf-8", "replace"),
                                 None if helo is None else helo.decode("utf-8", "replace"),
                                 budget, self.receiver, self.spfexp)
        refusal = spfcheck.refusal(verdict, self.spfbehavior)
        return (refusal if refusal is not None and refusal[:1] == b"4" else None), verdict

    def rcpt(self, verdict: spfcheck.Verdict | None) -> bytes | None:
        """At RCPT: SPF's 550, where the qmail SPF patch gives it; None to go on."""
        refusal = spfcheck.refusal(verdict, self.spfbehavior)
        return refusal if refusal is not None and refusal[:1] == b"5" else None

    def helo_refusal(self, helo: bytes) -> bytes | None:
        """control/helocheck on the last HELO/EHLO argument."""
        if self.helocheck & HELO_SYNTAX and not helo_valid(helo):
            return BAD_HELO
        if self.helocheck & HELO_OURS and self.claims_us(helo) and not self.local_client():
            return OUR_HELO
        return None

    def claims_us(self, helo: bytes) -> bool:
        """The HELO is one of this host's names or addresses."""
        name = helo.rstrip(b" \t").lower()
        if name.startswith(b"[") and name.endswith(b"]"):
            return self._own_ip(name[1:-1])
        if self._own_ip(b"ipv6:" + name if b":" in name else name):   # a bare address
            return True
        name = name.rstrip(b".")
        if name in self.names():
            return True
        rcpthosts = self._rcpthosts
        if rcpthosts.domains is not None and name in rcpthosts.domains:
            return True
        return rcpthosts.domains is not None and rcpthosts.more is not None and bool(name) \
            and rcpthosts.more.get(name) is not None

    def names(self) -> set[bytes]:
        """This host's names: me, locals, the greeting's first word, $TCPLOCALHOST."""
        if self._names is None:
            found = {self.receiver.encode(), self.localhost}
            found.add(control.read_line("me") or b"")
            found.update(control.read_list("locals") or [])
            self._names = {n.lower().rstrip(b".") for n in found} - {b"", b"unknown"}
        return self._names

    def local_client(self) -> bool:
        """The client is this host: loopback, or one of its addresses."""
        try:
            ip = ipaddress.ip_address(self.remoteip)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_loopback:
            return True
        text = str(ip).encode()
        return self._own_ip(b"ipv6:" + text if ip.version == 6 else text)


def helo_valid(helo: bytes) -> bool:
    """An FQDN or an address literal (trailing blanks ignored)."""
    name = helo.rstrip(b" \t")
    if name.startswith(b"[") and name.endswith(b"]"):
        return address_literal(name[1:-1])
    if name.endswith(b"."):
        name = name[:-1]
    labels = name.split(b".")
    return (len(name) <= 253 and len(labels) >= 2 and not labels[-1].isdigit()
            and all(_LABEL.match(label) for label in labels))


def address_literal(text: bytes) -> bool:
    """``192.0.2.1`` or ``IPv6:2001:db8::1`` (RFC 5321 §4.1.3)."""
    try:
        if text[:5].lower() == b"ipv6:":
            ipaddress.IPv6Address(text[5:].decode("ascii"))
        else:
            ipaddress.IPv4Address(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return False
    return True


def sender_domain_refusal(sender: bytes, budget: Budget) -> bytes | None:
    """control/senderdomaincheck: MX, else A, else AAAA for the sender's domain."""
    at = sender.rfind(b"@")
    domain = sender[at + 1:] if at >= 0 else b""
    if not domain or domain.startswith(b"["):
        return None
    import dns.exception
    from qpy.dnsbudget import Spent
    name = domain.decode("utf-8", "replace")
    try:
        answer = budget.resolve(name, "MX", raise_on_no_answer=False)
        if answer.rrset:
            if all(r.exchange.to_text() == "." for r in answer.rrset):
                return NULL_MX
            return None
        for rdtype in ("A", "AAAA"):
            if budget.resolve(name, rdtype, raise_on_no_answer=False).rrset:
                return None
    except spfcheck.no_such_name():
        return NO_SENDER_DOMAIN
    except (Spent, dns.exception.DNSException):     # timeout, SERVFAIL, spent budget
        return SENDER_DNS
    return NO_SENDER_DOMAIN
