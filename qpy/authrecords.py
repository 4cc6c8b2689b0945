"""The syntax of the TXT records mail authentication publishes: SPF, DKIM keys, DMARC,
MTA-STS and TLS-RPT (no DNS here: qpy.doctor looks them up).

Each ``*_problem`` function returns what is wrong with one record's text, or None;
``spf_terms`` and ``dkim_public`` raise ValueError with the reason.  Tag lists are
``name=value`` separated by ``;`` (RFC 6376 §3.2, RFC 7489 §6.4, RFC 8461 §3.1,
RFC 8460 §3), blanks around each part ignored, a trailing ``;`` allowed.
"""
from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from typing import Callable

SPF_MECHANISMS = ("all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists")
DMARC_POLICIES = ("none", "quarantine", "reject")
_SPF_VERSION = re.compile(r"^v=spf1(\s|$)", re.I)
_SPF_MODIFIER = re.compile(r"^([a-z][a-z0-9_.-]*)=(.*)$", re.I)
_SPF_MECHANISM = re.compile(r"^[-+~?]?([a-z0-9]+)([:/].*)?$", re.I)
_STS_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")
_EXT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_EXT_VALUE = re.compile(r"^[\x21-\x3a\x3c\x3e-\x7e]+$")
_REPORT_URI = re.compile(r"^(mailto:[^@\s]+@[^@\s]+|https://\S+)$", re.I)
_URI = re.compile(r"^[a-z][a-z0-9+.-]*:\S+$", re.I)


def tag_list(text: str) -> list[tuple[str, str]]:
    """``a=b; c=d;`` as [("a", "b"), ("c", "d")]; ValueError for a part without ``=``."""
    tags = []
    for part in text.split(";"):
        part = part.strip()
        if part:
            name, sep, value = part.partition("=")
            if not sep or not name.strip():
                raise ValueError(f"{part!r} is not tag=value")
            tags.append((name.strip(), value.strip()))
    return tags


def zone_txt(owner: str, text: str) -> str:
    """A TXT zone-file line, the text cut into strings of at most 250 characters."""
    quoted = text.replace("\\", "\\\\").replace('"', '\\"')
    parts = " ".join(f'"{quoted[i:i + 250]}"' for i in range(0, len(quoted), 250))
    return f"{owner}. IN TXT {parts}"


# -- SPF (RFC 7208) ---------------------------------------------------------------------

def spf_records(texts: list[str]) -> list[str]:
    """The TXT texts that are SPF records (``v=spf1`` first)."""
    return [t for t in texts if _SPF_VERSION.match(t)]


def spf_terms(record: str) -> list[tuple[str, str]]:
    """(name, argument) of each term after v=spf1, a modifier's name ending in ``=``.

    The argument of ``include:d`` is ``d``; of ``a:d/24`` it is ``d/24``.  ValueError for
    an unknown mechanism, a missing or malformed argument, a repeated redirect= or exp=."""
    terms: list[tuple[str, str]] = []
    for word in record.split()[1:]:
        m = _SPF_MODIFIER.match(word)
        if m:
            name = m[1].lower() + "="
            if name in ("redirect=", "exp=") and any(n == name for n, _ in terms):
                raise ValueError(f"{name} appears twice")
            if name == "redirect=" and not m[2]:
                raise ValueError("redirect= needs a domain")
            terms.append((name, m[2]))
            continue
        m = _SPF_MECHANISM.match(word)
        if not m or m[1].lower() not in SPF_MECHANISMS:
            raise ValueError(f"unknown term {word!r}")
        name, arg = m[1].lower(), m[2] or ""
        if name == "all" and arg:
            raise ValueError(f"{word!r}: all takes no argument")
        if name in ("include", "exists", "ip4", "ip6") and (len(arg) < 2 or arg[0] != ":"):
            raise ValueError(f"{word!r} is not {name}:<value>")
        if name in ("ip4", "ip6"):
            try:
                net = ipaddress.ip_network(arg[1:], strict=False)
            except ValueError:
                raise ValueError(f"{word!r}: not an address") from None
            if net.version != int(name[2]):
                raise ValueError(f"{word!r}: not an IPv{name[2]} address")
        terms.append((name, arg[1:] if arg.startswith(":") else arg))
    return terms


def spf_with(record: str, term: str) -> str:
    """``record`` with ``term`` right after v=spf1."""
    head, _, rest = record.partition(" ")
    return f"{head} {term} {rest.strip()}".strip()


# -- DKIM key records (RFC 6376 §3.6.1) ------------------------------------------------------

def dkim_public(text: str, k: str) -> bytes:
    """The decoded p= of a key record whose k= must be ``k``; ValueError saying what is wrong."""
    tags = tag_list(text)
    got = dict(tags)
    if "v" in got and tags[0] != ("v", "DKIM1"):
        raise ValueError("v=DKIM1 must come first")
    if "p" not in got:
        raise ValueError("no p= tag")
    p = re.sub(r"\s", "", got["p"])
    if not p:
        raise ValueError("p= is empty (a revoked key)")
    if got.get("k", "rsa").lower() != k:
        raise ValueError(f"k={got.get('k', 'rsa')}, but the key is {k}")
    try:
        return base64.b64decode(p, validate=True)
    except binascii.Error:
        raise ValueError("p= is not base64") from None


def pub_file(line: str) -> tuple[str, bytes]:
    """(k=, public key) of a ``.pub`` zone line as qpy dkim keygen writes it; ValueError."""
    text = "".join(re.findall(r'"([^"]*)"', line))
    k = dict(tag_list(text)).get("k", "rsa").lower()
    return k, dkim_public(text, k)


# -- DMARC (RFC 7489 §6.3) -----------------------------------------------------------------

def dmarc_problem(text: str) -> str | None:
    """What is wrong with a DMARC record, or None (unknown tags are ignored, as receivers do)."""
    try:
        tags = tag_list(text)
    except ValueError as e:
        return str(e)
    if not tags or tags[0] != ("v", "DMARC1"):
        return "v=DMARC1 must come first"
    got: dict[str, str] = {}
    for name, value in tags:
        if name in got:
            return f"{name}= appears twice"
        got[name] = value
    if "p" not in got:
        return "no p= tag"
    for tag in ("p", "sp"):
        if tag in got and got[tag] not in DMARC_POLICIES:
            return f"{tag}={got[tag]} is not none, quarantine or reject"
    for tag in ("adkim", "aspf"):
        if tag in got and got[tag] not in ("r", "s"):
            return f"{tag}={got[tag]} is not r or s"
    for tag, top in (("pct", 100), ("ri", 2 ** 32 - 1)):
        if tag in got and not (got[tag].isdigit() and int(got[tag]) <= top):
            return f"{tag}={got[tag]} is not a number up to {top}"
    for tag in ("rua", "ruf"):
        for uri in got[tag].split(",") if tag in got else []:
            if not _URI.match(uri.strip().split("!")[0]):
                return f"{tag}: {uri.strip()!r} is not a URI"
    return None


# -- MTA-STS (RFC 8461 §3.1) and TLS-RPT (RFC 8460 §3) ----------------------------------------

def policy_problem(text: str, version: str, field: str,
                   valid: Callable[[str], str | None]) -> str | None:
    """``v=VERSION; FIELD=…`` plus extension fields; ``valid`` judges FIELD's value."""
    try:
        tags = tag_list(text)
    except ValueError as e:
        return str(e)
    if not tags or tags[0] != ("v", version):
        return f"v={version} must come first"
    got = dict(tags)
    if field not in got:
        return f"no {field}= field"
    for tag, value in tags[1:]:
        if tag != field and not (_EXT_NAME.match(tag) and _EXT_VALUE.match(value)):
            return f"{tag}={value!r} is not a valid extension field"
    return valid(got[field])


def sts_problem(text: str) -> str | None:
    """An _mta-sts record: ``v=STSv1; id=<1 to 32 letters and digits>``."""
    return policy_problem(text, "STSv1", "id", lambda v: None if _STS_ID.match(v) else
                          f"id={v!r} is not 1 to 32 letters and digits")


def tlsrpt_problem(text: str) -> str | None:
    """An _smtp._tls record: ``v=TLSRPTv1; rua=<mailto: or https: URI>[,…]``."""
    def uris(value: str) -> str | None:
        bad = [u.strip() for u in value.split(",") if not _REPORT_URI.match(u.strip())]
        return f"rua: {bad[0]!r} is not a mailto: or https: URI" if bad else None
    return policy_problem(text, "TLSRPTv1", "rua", uris)
