"""SRS, the Sender Rewriting Scheme: forwarded senders rewritten, bounces to them turned back.

The standard scheme (Shevek's, as libsrs2, Mail::SRS, postsrsd and the qmail SRS patch
write it), so addresses stay valid when an instance moves to or from one of those:

    SRS0=HHHH=TT=domain=local@srs_domain                   a sender from outside
    SRS1=HHHH=forwarder==HHHH=TT=domain=local@srs_domain   a sender already SRS0 (or
                                                            SRS1) at another forwarder

TT is the day (days since the epoch mod 1024) in two base32 characters; HHHH the first
four base64 characters of HMAC-SHA1, keyed with the first secret of control/srs_secrets,
over the lowercased TT + domain + local (SRS0) or forwarder + the rest (SRS1).  Reading
accepts ``SRS0``/``SRS1`` in any case followed by ``=``, ``+`` or ``-`` (libsrs2's
separators), compares hashes without case (some hops lowercase addresses) against every
secret (rotation: a new first line signs, the old ones still verify) and refuses a
timestamp older than control/srs_maxage days (default 21).  An SRS1 address has no
timestamp of ours (libsrs2's rule): it is valid while its hash is, and the first
forwarder checks its own timestamp when the bounce reaches it.

The verbs, each reading the controls itself (cached per process, re-read when one of
them changes on disk):

- ``forward_sender(sender)``: the sender a forward queues with.  Unchanged when SRS is
  off (no control/srs_domain or no secret), for the null sender (``""``, ``#@[]``), a
  sender without a domain, or one of ours (control/locals, a control/virtualdomains
  domain, srs_domain itself).
- ``reverse_recipient(address)``: the original address of a valid SRS address at
  srs_domain (for SRS1 the first forwarder's SRS0 address); anything else unchanged.
- ``check_recipient(address)``: None unless ``address`` is an SRS address at srs_domain
  that is not valid; then the reason, ``"forged"``, ``"expired"`` or ``"malformed"``.
  ``classify`` also tells a valid one apart (RCPT accepts it without rcpthosts).

Addresses that do not start with an SRS tag cost no control read (the queue writer asks
about every recipient).  Reading controls may raise ControlError (temporary).  The secret
is qmaild's and group qmail's, 0440 (qpy.hier.PROVIDED, SECURITY.md).
"""
from __future__ import annotations

import binascii
import os
import secrets as _random
from dataclasses import dataclass

from qpy import addr, auto, control

VALID, FORGED, EXPIRED, MALFORMED = "valid", "forged", "expired", "malformed"
# reason → the enhanced status code of its refusal (RFC 3463): a hash or timestamp that
# does not verify is an authorization failure; a form we never write is no mailbox
CODES = {FORGED: b"5.7.1", EXPIRED: b"5.7.1", MALFORMED: b"5.1.1"}

SEPARATORS = b"=+-"
STAMP_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
HASH_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
HASH_LEN = 4
DAY = 86400
SLOTS = 1024                    # two base32 characters of days
NULL_SENDERS = (b"", b"#@[]")


def refusal(reason: str) -> bytes:
    """The text after ``550 `` (SMTP) or ``D`` (QMTP) for a refused SRS recipient."""
    return b"%s SRS address (#%s)" % (reason.encode(), CODES[reason])


def new_secret() -> bytes:
    """A fresh secret for control/srs_secrets: 192 random bits, one line."""
    return _random.token_urlsafe(24).encode() + b"\n"


def stamp(now: float) -> bytes:
    """Today's timestamp: days since the epoch mod 1024 in two base32 characters."""
    day = int(now // DAY)
    return bytes((STAMP_CHARS[(day >> 5) & 31], STAMP_CHARS[day & 31]))


def stamp_age(tt: bytes, now: float) -> int | None:
    """Days since ``tt`` was written (the 1024-day cycle assumed); None if not a stamp."""
    if len(tt) != 2:
        return None
    then = 0
    for ch in tt.upper():
        i = STAMP_CHARS.find(ch)
        if i < 0:
            return None
        then = then << 5 | i
    return (int(now // DAY) - then) % SLOTS


def make_hash(secret: bytes, *parts: bytes) -> bytes:
    """HHHH: base64 of HMAC-SHA1 over the lowercased parts, its first four characters."""
    import hmac     # hashlib's OpenSSL costs milliseconds: only when SRS is used
    mac = hmac.new(secret, b"".join(p.lower() for p in parts), "sha1").digest()
    return binascii.b2a_base64(mac, newline=False)[:HASH_LEN]


def tagged(local: bytes) -> bytes | None:
    """``b"0"`` or ``b"1"`` if a local part starts with SRS0/SRS1 and a separator."""
    if len(local) > 5 and local[:3].upper() == b"SRS" and local[3:4] in (b"0", b"1") \
            and local[4] in SEPARATORS:
        return local[3:4]
    return None


def _srs0_fields(body: bytes) -> list[bytes] | None:
    """``HHHH=TT=domain=local`` → its four fields, each non-empty; None otherwise."""
    fields = body.split(b"=", 3)
    return fields if len(fields) == 4 and all(fields) else None


def _srs0_tail(rest: bytes) -> list[bytes] | None:
    """An SRS0 address's local part after ``SRS0`` (its separator first) → its four fields."""
    return _srs0_fields(rest[1:]) if rest[:1] and rest[0] in SEPARATORS else None


def _srs1_fields(body: bytes) -> list[bytes] | None:
    """``HHHH=forwarder=<sep>HHHH=TT=domain=local`` → [hash, forwarder, rest]; rest keeps the
    first forwarder's separator and must be an SRS0 tail."""
    fields = body.split(b"=", 2)
    if len(fields) != 3 or not all(fields) or not _srs0_tail(fields[2]):
        return None
    return fields


@dataclass(frozen=True)
class Srs:
    """One instance's SRS settings: the domain, the secrets (first signs), the maximum age,
    and the domains that are ours (their senders are never rewritten)."""

    domain: bytes
    secrets: tuple[bytes, ...]
    maxage: int = 21
    ours: frozenset[bytes] = frozenset()
    virtual: frozenset[bytes] = frozenset()     # virtualdomains keys with a prefix

    def is_ours(self, domain: bytes) -> bool:
        """A domain of this instance: srs_domain, locals, or a virtualdomains domain."""
        domain = domain.lower()
        if domain == self.domain.lower() or domain in self.ours:
            return True
        return any(key in self.virtual for key in addr.domain_keys(domain))

    def forward(self, sender: bytes, now: float) -> bytes:
        """The SRS address for ``sender`` forwarded now, or ``sender`` when it stays."""
        local, domain = addr.split(sender)
        if (sender in NULL_SENDERS or not local or not domain or b"=" in domain
                or self.is_ours(domain)):
            return sender
        kind = tagged(local)
        if kind == b"0" and _srs0_tail(local[4:]):
            host, rest = domain, local[4:]          # another forwarder's SRS0: SRS1
        elif kind == b"1" and (fields := _srs1_fields(local[5:])):
            host, rest = fields[1], fields[2]       # already SRS1: keep its first forwarder
        else:
            tt = stamp(now)
            return b"SRS0=%s=%s=%s=%s@%s" % (make_hash(self.secrets[0], tt, domain, local), tt,
                                            domain, local, self.domain)
        return b"SRS1=%s=%s=%s@%s" % (make_hash(self.secrets[0], host, rest), host, rest,
                                      self.domain)

    def _verify(self, given: bytes, *parts: bytes) -> bool:
        """The hash, compared without case, matches one of the secrets."""
        import hmac
        given = given.lower()
        return any(hmac.compare_digest(given, make_hash(s, *parts).lower()) for s in self.secrets)

    def decode(self, address: bytes, now: float) -> tuple[str | None, bytes]:
        """(verdict, original address): verdict None when ``address`` is not an SRS address at
        srs_domain, else VALID or the reason it is refused; the address is the decoded one
        only for VALID, else ``address``."""
        local, domain = addr.split(address)
        kind = tagged(local)
        if kind is None or domain is None or domain.lower() != self.domain.lower():
            return None, address
        if kind == b"0":
            fields = _srs0_fields(local[5:])
            age = stamp_age(fields[1], now) if fields else None
        else:       # no timestamp of ours: the first forwarder checks its own
            fields = _srs1_fields(local[5:])
            age = 0
        if not fields or age is None or len(fields[0]) != HASH_LEN \
                or not HASH_CHARS.issuperset(fields[0]):
            return MALFORMED, address
        if not self._verify(fields[0], *fields[1:]):
            return FORGED, address
        if age > self.maxage:
            return EXPIRED, address
        if kind == b"0":
            return VALID, fields[3] + b"@" + fields[2]
        return VALID, b"SRS0" + fields[2] + b"@" + fields[1]


def read_secrets() -> tuple[bytes, ...]:
    """control/srs_secrets: one secret a line, blanks stripped, empty and ``#`` lines skipped."""
    data = control.read_bytes("srs_secrets") or b""
    lines = (line.rstrip(b" \t\r\n") for line in data.split(b"\n"))
    return tuple(line for line in lines if line and not line.startswith(b"#"))


def from_control() -> Srs | None:
    """The instance's settings, or None when SRS is off (no srs_domain, or no secret)."""
    domain = control.read_line("srs_domain")
    if not domain:
        return None
    secrets = read_secrets()
    if not secrets:
        return None
    virtual = control.read_map("virtualdomains") or {}
    return Srs(domain=domain, secrets=secrets, maxage=control.read_int("srs_maxage"),
               ours=frozenset(d.lower() for d in control.read_list("locals") or ()),
               virtual=frozenset(k for k, v in virtual.items() if k and v and b"@" not in k))


_cache: tuple[tuple, Srs | None] | None = None


def _signature() -> tuple:
    """What the cached settings were read from: the instance and each file's identity."""
    sig: list = [auto.home()]
    for path in (control.control_path("srs_domain"), control.control_path("srs_secrets"),
                 control.control_path("srs_maxage"), control.control_path("me"),
                 control.control_path("locals"), control.control_path("virtualdomains")):
        try:
            st = os.stat(path)
            sig.append((st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns))
        except OSError:
            sig.append(None)
    return tuple(sig)


def current() -> Srs | None:
    """The settings, read once per process and again when a control file changes."""
    global _cache
    sig = _signature()
    if _cache is None or _cache[0] != sig:
        _cache = (sig, from_control())
    return _cache[1]


def forward_sender(sender: bytes, now: float | None = None) -> bytes:
    """The sender of a forward: its SRS address, or unchanged (see the module's text)."""
    if sender in NULL_SENDERS:
        return sender
    settings = current()
    if settings is None:
        return sender
    return settings.forward(sender, _now(now))


def classify(address: bytes, now: float | None = None) -> str | None:
    """None: not an SRS address at srs_domain (or SRS is off); else VALID or the reason."""
    if tagged(addr.split(address)[0]) is None:
        return None                 # the usual case: no control read
    settings = current()
    return None if settings is None else settings.decode(address, _now(now))[0]


def check_recipient(address: bytes, now: float | None = None) -> str | None:
    """RCPT time: None when ``address`` is not an SRS address at srs_domain or is valid;
    else why it is refused (FORGED, EXPIRED, MALFORMED)."""
    verdict = classify(address, now)
    return None if verdict == VALID else verdict


def reverse_recipient(address: bytes, now: float | None = None) -> bytes:
    """The original address of a valid SRS address at srs_domain; else ``address``."""
    if tagged(addr.split(address)[0]) is None:
        return address
    settings = current()
    return address if settings is None else settings.decode(address, _now(now))[1]


def _now(now: float | None) -> float:
    import time
    return time.time() if now is None else now
