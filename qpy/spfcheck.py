"""SPF (RFC 7208) for qmail-smtpd: the verdict on a client, and how it is written down.

``Verdict`` is one check's outcome: its result (RFC 7208 §2.6: none, neutral, pass,
fail, softfail, temperror, permerror), the identity checked (``mailfrom``, or ``helo``
when MAIL FROM is ``<>``), that identity's domain, and what the header needs.
``received_spf()`` is the Received-SPF field (§9.1); ``ar_clause()`` the ``spf=`` part
of Authentication-Results (RFC 8601 §2.7.2).
"""
from __future__ import annotations

from dataclasses import dataclass

RESULTS = ("none", "neutral", "pass", "fail", "softfail", "temperror", "permerror")


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
        fields = [f"client-ip={self.ip}", f"envelope-from=\"{self.sender}\"",
                  f"helo={self.helo or 'unknown'}", f"receiver={receiver}",
                  f"identity={self.identity}"]
        text = f"Received-SPF: {self.result} ({_clean(comment)})\n\t" + ";\n\t".join(
            _clean(f) for f in fields) + "\n"
        return text.encode("utf-8", "replace")

    def ar_clause(self) -> str:
        """``spf=<result> smtp.mailfrom=<domain>`` (or ``smtp.helo=``)."""
        key = "smtp.mailfrom" if self.identity == "mailfrom" else "smtp.helo"
        return f"spf={self.result} {key}={_clean(self.domain) or 'unknown'}"


def _clean(text: str) -> str:
    """Text safe inside a header: no control characters, no parentheses that could end a comment."""
    return "".join(c if c.isprintable() and c not in "()\\" else "?" for c in text)
