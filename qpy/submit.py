"""What the queue writer does to a submission besides storing it: DKIM, ARC, SRS.

The writer (qpy.queuewrite: qmail-queue, qmail-queued's children as qmailq, an SMTP
server's in-process writer) is where the trust decision arrives and where the keys
are (control/domainkeys/ is readable only by the queue's owner).  A submission
carries FLAGS, set by the program that knows where the message came from:

- ``SIGN``: the message is our users' own — a local submission (qmail-inject), an
  SMTP/QMTP client with RELAYCLIENT or after AUTH, a QMQP peer, a bounce of
  qmail-send.  It gets a DKIM-Signature per signing key of its From: domain
  (qpy.dkimkeys), so DMARC aligns.  ``$DKIMSIGN`` (the indimail/qmail-dkim
  variable, set by tcprules for trusted clients) also asks for it; its value, a key
  path there, is not used: keys come only from control/domainkeys/.
- ``FORWARD``: a forward of a message received (qmail-local's ``&address``,
  forward, fastforward, dot-forward; ``$QPY_FORWARD=1``).  Never DKIM-signed, even
  when its From: names one of our domains; its envelope sender outside our domains
  becomes an SRS address (qpy.srs) and the message gets an ARC set (RFC 8617) after
  the chain it already has is checked.  FORWARD wins over SIGN.

Whatever the flags, a recipient that is a valid SRS address of ours is turned back
into the address it stands for (a bounce to a forwarded message goes home).

How the flags travel: the environment (``DKIMSIGN``, ``QPY_FORWARD``) of the
process that runs qmail-queue; qmail-queue's client sends them as the byte that
carries its fds to qmail-queued, or in its maildrop/ header (qpy.maildrop).  A
client is believed only about its own message: any local user may already submit
mail that gets signed, and qmaild is the program that decides about SMTP clients.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

from qpy import control, dkimkeys
from qpy.errors import QmailError, QueueFail
from qpy.exitcodes import QQ

SIGN = 1
FORWARD = 2
FLAGS = SIGN | FORWARD

# The header fields signed (RFC 6376 §5.4.1's list and the List-* fields); From once more
# than it occurs (oversigned: nobody can add a second From: under the signature).
SIGNED = (b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to",
          b"in-reply-to", b"references", b"mime-version", b"content-type",
          b"content-transfer-encoding", b"list-id", b"list-help", b"list-unsubscribe",
          b"list-unsubscribe-post", b"list-subscribe", b"list-post", b"list-owner",
          b"list-archive")


def preload() -> None:
    """In a long-lived parent of writers: import the signing libraries (~100 ms) once, if
    this instance signs at all, so each forked writer does not pay for them again."""
    try:
        if dkimkeys.selectors():
            import dkim  # noqa: F401
            import nacl.signing  # noqa: F401
            from cryptography.hazmat.primitives import serialization  # noqa: F401
            from email import utils  # noqa: F401
            from qpy import resolver  # noqa: F401
    except (ImportError, OSError, QmailError):
        pass                        # the writer will say what is wrong, per message


def from_env(env: Mapping[bytes, bytes] | None = None) -> int:
    """The flags asked for by ``env`` (default: this process's environment)."""
    env = os.environb if env is None else env
    if env.get(b"QPY_FORWARD"):
        return FORWARD
    return SIGN if b"DKIMSIGN" in env else 0


def set_env(env: dict[bytes, bytes] | os._Environ[bytes], flags: int) -> None:
    """Make ``env`` ask for exactly ``flags``."""
    env.pop(b"DKIMSIGN", None)
    env.pop(b"QPY_FORWARD", None)
    if flags & FORWARD:
        env[b"QPY_FORWARD"] = b"1"
    elif flags & SIGN:
        env[b"DKIMSIGN"] = b""


# --- the envelope ---------------------------------------------------------------------

def envelope(flags: int, records: bytes) -> bytes:
    """The envelope records (``F…\\0T…\\0…``, checked) after SRS in both directions."""
    fields = records.split(b"\0")
    changed = False
    for i, field in enumerate(fields):
        if field[:1] == b"T" and field[1:5].upper() in (b"SRS0", b"SRS1"):
            from qpy import srs
            back = srs.reverse_recipient(field[1:])
            if back != field[1:]:
                fields[i], changed = b"T" + back, True
    # a VERP sender (``owner-@domain-@[]``, qmail-local's list owner) is ours and is
    # expanded per recipient by qmail-send: never rewritten
    if flags & FORWARD and fields[0][:1] == b"F" and fields[0] != b"F" \
            and not fields[0].endswith(b"-@[]"):
        from qpy import srs
        sender = srs.forward_sender(fields[0][1:])
        if sender != fields[0][1:]:
            fields[0], changed = b"F" + sender, True
    return b"\0".join(fields) if changed else records


# --- the message ----------------------------------------------------------------------

def wire(message: bytes) -> bytes:
    """The message as qmail-remote sends it (LF → CRLF), which is what a verifier sees."""
    return message.replace(b"\n", b"\r\n")


def stored(field: bytes) -> bytes:
    """A header field made by dkimpy (CRLF) as the queue stores lines (LF)."""
    return field.replace(b"\r\n", b"\n")


def header_fields(message: bytes) -> list[tuple[bytes, bytes]]:
    """The (lower-cased name, unfolded value) of each header field, in order."""
    end = message.find(b"\n\n")
    head = message if end < 0 else message[:end + 1]
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] = (fields[-1][0], fields[-1][1] + line)
        elif b":" in line:
            name, _, value = line.partition(b":")
            fields.append((name.strip().lower(), value.strip()))
    return fields


def author_domain(fields: list[tuple[bytes, bytes]]) -> bytes | None:
    """The domain of the one address in the one From: field (RFC 5322 §3.6.2), lower case."""
    from email.utils import getaddresses
    froms = [v for n, v in fields if n == b"from"]
    if len(froms) != 1:
        return None
    addrs = getaddresses([froms[0].decode("utf-8", "replace")])
    if len(addrs) != 1 or "@" not in addrs[0][1]:
        return None
    domain = addrs[0][1].rpartition("@")[2].strip().rstrip(".").lower()
    try:
        return domain.encode("idna")
    except UnicodeError:
        return None


def signing_domain(domain: bytes) -> bytes | None:
    """``domain`` or its nearest parent with a line in dkimdomains (DMARC's relaxed alignment)."""
    table = dkimkeys.selectors()
    labels = domain.split(b".")
    for i in range(len(labels) - 1):
        candidate = b".".join(labels[i:])
        if candidate in table:
            return candidate
    return None


def sign(message: bytes) -> bytes:
    """The DKIM-Signature fields (LF lines) for ``message``; b"" when its From: has no key.

    Raises dkimkeys.BadKey for a configured key that cannot be read or used.
    """
    if not dkimkeys.selectors():
        return b""                  # nothing configured: no parsing, no import
    import dkim
    fields = header_fields(message)
    author = author_domain(fields)
    domain = signing_domain(author) if author else None
    if domain is None:
        return b""
    names = [n for n, _ in fields]
    include = [n for n in SIGNED for _ in range(names.count(n))] + [b"from"]
    data = wire(message)
    out = b""
    for key in dkimkeys.signing_keys(domain):
        try:
            sig = dkim.sign(data, key.selector, domain, key.secret, include_headers=include,
                            canonicalize=(b"relaxed", b"relaxed"),
                            signature_algorithm=key.algorithm)
        except dkim.DKIMException as e:
            raise dkimkeys.BadKey(f"DKIM signing with {key.name()} failed: {e}")
        out += stored(sig)
    return out


def authserv_id() -> bytes:
    """control/authservid, else me."""
    return control.read_line_me("authservid") or b"localhost"


def sealer() -> dkimkeys.Key | None:
    """The RSA key that seals forwards: of the dkimdomains domain nearest to me, else the first."""
    table = dkimkeys.selectors()
    me = control.me() or b""
    order = sorted(table, key=lambda d: not (me == d or me.endswith(b"." + d)))
    for domain in order:
        for sel in table[domain]:
            key = dkimkeys.load(domain, sel)
            if key.algorithm == dkimkeys.RSA:
                return key
    return None


def seal(message: bytes) -> bytes:
    """Authentication-Results + an ARC set (LF lines) for a forward of ``message``; b"" if no key.

    The results are ours, checked now: the ARC chain the message has (arc=), and each
    DKIM signature (dkim=); RFC 8617 §5.1.  DNS through qpy.resolver.
    """
    key = sealer()
    if key is None:
        return b""
    import dkim
    from qpy import dnsbudget
    dnsfunc = dnsbudget.Budget().txt_lookup()
    data = wire(message)
    try:
        cv, _, _ = dkim.arc_verify(data, dnsfunc=dnsfunc)
    except dkim.DnsTimeoutError:
        raise QueueFail(QQ.NETWORK)     # a forward waits for DNS rather than break a chain
    except dkim.DKIMException:
        cv = dkim.CV_Fail
    results = [b"arc=" + cv]
    checker = dkim.DKIM(data)
    sigs = [v for n, v in checker.headers if n.lower() == b"dkim-signature"]
    for i in range(len(sigs)):
        try:
            what = b"pass" if checker.verify(idx=i, dnsfunc=dnsfunc) else b"fail"
        except dkim.DnsTimeoutError:
            what = b"temperror"
        except dkim.DKIMException:
            what = b"permerror"
        tags = checker.signature_fields or {}
        results.append(b"dkim=" + what + b" header.d=" + tags.get(b"d", b"unknown")
                       + b" header.s=" + tags.get(b"s", b"unknown"))
    if not sigs:
        results.append(b"dkim=none")
    srv = authserv_id()
    ar = b"Authentication-Results: " + srv + b"; " + b";\r\n\t".join(results) + b"\r\n"
    # arc_sign takes cv= from every AR field of ours it sees: qmail-smtpd's (qpy.inbound)
    # stays in the message but not in this copy (no AR field is under the AMS or the AS)
    from qpy import inbound
    try:
        arc = dkim.arc_sign(ar + inbound.strip_ours(data, srv), key.selector, key.domain,
                            key.secret, srv,
                            include_headers=[n for n in SIGNED
                                             if n in {h.lower() for h, _ in checker.headers}])
    except dkim.DKIMException as e:
        raise dkimkeys.BadKey(f"ARC sealing with {key.name()} failed: {e}")
    return b"".join(stored(f) for f in arc) + stored(ar)


def prefix(flags: int, message: bytes) -> bytes:
    """The header fields to put above ``message`` for these flags.

    Raises QueueFail: 55 for a configured key that cannot be used (nothing leaves
    unsigned because of a broken key), 56 when DNS fails while a forward's chain is checked.
    """
    try:
        if flags & FORWARD:
            return seal(message)
        if flags & SIGN:
            return sign(message)
    except dkimkeys.BadKey:
        raise QueueFail(QQ.CONFIG)
    return b""
