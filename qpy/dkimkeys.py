"""An instance's DKIM keys: control/domainkeys/<domain>/<selector> and control/dkimdomains.

The layout is the qmail DKIM patches' (indimail's dknewkey, s/qmail): the private key
of selector S of domain D is the PEM file ``control/domainkeys/D/S`` (RSA, or Ed25519 as
``openssl genpkey -algorithm Ed25519`` writes it), readable only by the queue's owner
(qmailq in privileged mode: the queue writer signs, qpy.submit); ``S.pub`` beside it is
the TXT record to publish at ``S._domainkey.D``, readable by all.  Which selectors sign
for D is s/qmail's ``control/dkimdomains`` line ``D:S[,S2]`` (two selectors: two
signatures, e.g. one RSA and one Ed25519; anything after a ``|`` is s/qmail's per-domain
tuning and ignored here).  No line for D, no signature.

Domain and selector names become path components, so only lower-case LDH labels
(``[a-z0-9_-]`` joined by dots) are accepted: nothing built from a header can leave
control/domainkeys/.
"""
from __future__ import annotations

import base64
import os
import re
import textwrap
from dataclasses import dataclass

from qpy import auto, control
from qpy.errors import QmailError

RSA = b"rsa-sha256"
ED25519 = b"ed25519-sha256"
RSA_BITS = 2048
_NAME = re.compile(rb"^(?!-)[a-z0-9_-]{1,63}(?<!-)(\.(?!-)[a-z0-9_-]{1,63}(?<!-))*$")


class BadKey(QmailError):
    """A key that cannot be used: missing, unreadable, or not RSA/Ed25519."""


def valid_name(name: bytes) -> bool:
    """True if ``name`` (lower case) is safe as one path component: LDH labels, dots between."""
    return len(name) <= 253 and bool(_NAME.match(name))


def key_path(domain: bytes, selector: bytes) -> str:
    """control/domainkeys/<domain>/<selector>; BadKey for a name that is not valid_name()."""
    if not (valid_name(domain) and valid_name(selector)):
        raise BadKey(f"not a domain or selector name: {domain!r} {selector!r}")
    return os.path.join(control.control_path("domainkeys"), domain.decode(), selector.decode())


@dataclass(frozen=True)
class Key:
    """One private key: what dkimpy needs to sign with it and what DNS must publish."""

    domain: bytes
    selector: bytes
    algorithm: bytes        # RSA or ED25519 (the DKIM a= tag)
    secret: bytes           # dkimpy's form: RSA PEM, or the Ed25519 seed in base64
    public: bytes           # the p= value

    def txt(self) -> str:
        """The TXT record's text: ``v=DKIM1; k=rsa|ed25519; p=…``."""
        k = "rsa" if self.algorithm == RSA else "ed25519"
        return f"v=DKIM1; k={k}; p={self.public.decode()}"

    def name(self) -> str:
        """The record's owner name, ``selector._domainkey.domain``."""
        return f"{self.selector.decode()}._domainkey.{self.domain.decode()}"

    def zone_line(self) -> str:
        """The record as a zone-file line, the text cut into strings of at most 255 bytes."""
        text = self.txt()
        parts = " ".join(f'"{p}"' for p in textwrap.wrap(text, 250, break_on_hyphens=False,
                                                         drop_whitespace=False))
        return f"{self.name()}. IN TXT ( {parts} )"


def from_pem(domain: bytes, selector: bytes, pem: bytes) -> Key:
    """The Key of a PEM private key; BadKey if it is neither RSA nor Ed25519."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
    try:
        # the admin's own key: cryptography's RSA consistency check (18 ms a load) is skipped
        private = serialization.load_pem_private_key(pem, password=None,
                                                     unsafe_skip_rsa_key_validation=True)
    except (ValueError, TypeError) as e:
        raise BadKey(f"{domain.decode()}/{selector.decode()}: not a private key: {e}")
    if isinstance(private, rsa.RSAPrivateKey):
        der = private.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
        return Key(domain, selector, RSA, pem, base64.b64encode(der))
    if isinstance(private, ed25519.Ed25519PrivateKey):
        raw = serialization.Encoding.Raw
        seed = private.private_bytes(raw, serialization.PrivateFormat.Raw,
                                     serialization.NoEncryption())
        pub = private.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
        return Key(domain, selector, ED25519, base64.b64encode(seed), base64.b64encode(pub))
    raise BadKey(f"{domain.decode()}/{selector.decode()}: neither an RSA nor an Ed25519 key")


def load(domain: bytes, selector: bytes) -> Key:
    """Read control/domainkeys/<domain>/<selector>; BadKey if missing or unusable."""
    path = key_path(domain, selector)
    try:
        with open(path, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise BadKey(f"unable to read {path}: {e.strerror}")
    return from_pem(domain, selector, pem)


def selectors() -> dict[bytes, list[bytes]]:
    """control/dkimdomains as {domain: [selector, …]} (domains lower-cased)."""
    table: dict[bytes, list[bytes]] = {}
    for line in control.read_list("dkimdomains") or []:
        domain, sep, rest = line.partition(b":")
        sels = [s.strip() for s in rest.split(b"|", 1)[0].split(b",") if s.strip()]
        if domain.strip():
            table[domain.strip().lower()] = sels if sep and sels else [b"default"]
    return table


def signing_keys(domain: bytes) -> list[Key]:
    """The keys that sign mail from ``domain`` (empty: no line in dkimdomains).  Raises BadKey."""
    return [load(domain.lower(), s) for s in selectors().get(domain.lower(), [])]


def generate(algorithm: bytes, bits: int = RSA_BITS) -> bytes:
    """A new private key as PKCS#8 PEM."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
    if algorithm == ED25519:
        private: object = ed25519.Ed25519PrivateKey.generate()
    else:
        private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return private.private_bytes(serialization.Encoding.PEM,  # type: ignore[attr-defined]
                                 serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())


def _queue_owner() -> tuple[int, int]:
    """The uid and gid the queue writer signs as: queue/'s owner (qmailq, or the user)."""
    st = os.stat(os.path.join(auto.home(), "queue"))
    return st.st_uid, st.st_gid


def store(key: Key, pem: bytes) -> str:
    """Write a new key (0400, the queue owner's) and its .pub (0644); refuse to overwrite."""
    path = key_path(key.domain, key.selector)
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    uid, gid = _queue_owner()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    try:
        if os.geteuid() == 0:
            os.fchown(fd, uid, gid)
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    with open(path + ".pub", "w") as f:
        f.write(key.zone_line() + "\n")
    os.chmod(path + ".pub", 0o644)
    return path


def use(domain: bytes, sels: list[bytes]) -> None:
    """Make ``sels`` the signing selectors of ``domain`` in control/dkimdomains (others kept)."""
    path = control.control_path("dkimdomains")
    lines = [l for l in control.read_list("dkimdomains") or []
             if l.partition(b":")[0].strip().lower() != domain]
    lines.append(domain + b":" + b",".join(sels))
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(b"".join(l + b"\n" for l in lines))
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def on_disk(domain: bytes) -> list[bytes]:
    """Every selector with a key file in control/domainkeys/<domain>/, sorted."""
    key_path(domain, b"x")
    try:
        names = os.listdir(os.path.join(control.control_path("domainkeys"), domain.decode()))
    except FileNotFoundError:
        return []
    return sorted(n.encode() for n in names if not n.endswith(".pub") and valid_name(n.encode()))
