"""Signers that are not ours, for the tests of receiving (qpy.inbound): keys, DKIM, ARC.

    from authkit import Keys, arc_seal, dkim_sign, ed25519_sign, need_perl_dkim, txt

RSA keys are made by openssl; DKIM signatures by Debian's Mail::DKIM::Signer and ARC sets by
Mail::DKIM::ARC::Signer (libmail-dkim-perl), driven by small perl scripts.  Ed25519: no
Debian signer does it (Mail::DKIM 1.20230212 signs RSA only; opendkim-testmsg -k with an
Ed25519 key fails with ``dkim_eom(): Resource unavailable``, and with an RSA key it signs
rsa-sha1 only, printing the last piece of b= twice), so ``ed25519_sign`` uses dkimpy, the library qpy
verifies with; tests/integration/test_inbound_auth.py has OpenDKIM verify those signatures
to show they are right.
"""
from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from conftest import need_program

PERL_SIGN = r"""
use strict; use warnings; use Mail::DKIM::Signer; use Mail::DKIM::TextWrap;
my ($key, $domain, $selector, $t, $x) = @ARGV;
my $s = Mail::DKIM::Signer->new(Algorithm => 'rsa-sha256', Method => 'relaxed/relaxed',
    Domain => $domain, Selector => $selector, KeyFile => $key,
    ($t ? (Timestamp => $t) : ()), ($x ? (Expiration => $x) : ()));
binmode STDIN; binmode STDOUT;
my $m = do { local $/; <STDIN> };
$m =~ s/\015?\012/\015\012/g;
$s->PRINT($m); $s->CLOSE;
print $s->signature->as_string, "\015\012", $m;
"""

PERL_SEAL = r"""
use strict; use warnings; use Mail::DKIM::ARC::Signer; use Mail::DKIM::TextWrap;
my ($key, $domain, $selector, $srvid, $chain) = @ARGV;
my $s = Mail::DKIM::ARC::Signer->new(Algorithm => 'rsa-sha256', Chain => $chain,
    Domain => $domain, SrvId => $srvid, Selector => $selector, KeyFile => $key);
binmode STDIN; binmode STDOUT;
my $m = do { local $/; <STDIN> };
$m =~ s/\015?\012/\015\012/g;
$s->PRINT($m); $s->CLOSE;
die $s->result_detail, "\n" unless $s->result eq 'sealed';
print $s->as_string, $m;
"""


def need_perl_dkim() -> None:
    """Skip without perl and Mail::DKIM (.ci/run installs libmail-dkim-perl)."""
    need_program("perl")
    if subprocess.run(["perl", "-MMail::DKIM::Signer", "-MMail::DKIM::ARC::Signer", "-e", "1"],
                      capture_output=True).returncode:
        pytest.skip("Mail::DKIM (libmail-dkim-perl) is not installed")


def txt(record: str) -> str:
    """A TXT record's text as the loopback DNS server's zone wants it: strings of 200."""
    return " ".join(f'"{record[i:i + 200]}"' for i in range(0, len(record), 200)) or '""'


class Keys:
    """RSA keys made by openssl in ``where``: ``pem(name)`` the private key's path,
    ``record(name)`` the DKIM key record (v=DKIM1; k=rsa; p=…)."""

    def __init__(self, where: Path) -> None:
        self.where = where

    def pem(self, name: str) -> Path:
        path = self.where / f"{name}.pem"
        if not path.exists():
            openssl = need_program("openssl")
            subprocess.run([openssl, "genrsa", "-traditional", "-out", str(path), "2048"],
                           check=True, capture_output=True, timeout=60)
        return path

    def record(self, name: str) -> str:
        der = subprocess.run([need_program("openssl"), "rsa", "-in", str(self.pem(name)),
                              "-pubout", "-outform", "DER"], check=True, capture_output=True,
                             timeout=60).stdout
        return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


def dkim_sign(message: bytes, key: Path, domain: str, selector: str,
              timestamp: int | None = None, expiration: int | None = None) -> bytes:
    """``message`` (LF or CRLF) with a relaxed/relaxed rsa-sha256 DKIM-Signature by
    Mail::DKIM::Signer on top; CRLF lines."""
    need_perl_dkim()
    r = subprocess.run(["perl", "-e", PERL_SIGN, str(key), domain, selector,
                        str(timestamp or ""), str(expiration or "")],
                       input=message, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def arc_seal(message: bytes, key: Path, domain: str, selector: str, srvid: str,
             chain: str) -> bytes:
    """``message`` with one more ARC set by Mail::DKIM::ARC::Signer (``chain``: the cv=,
    none for the first set); it copies the Authentication-Results of ``srvid``."""
    need_perl_dkim()
    r = subprocess.run(["perl", "-e", PERL_SEAL, str(key), domain, selector, srvid, chain],
                       input=message, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def ed25519_key() -> tuple[bytes, str]:
    """(dkimpy's private key: the base64 seed, the DKIM key record) of a new Ed25519 key."""
    import nacl.signing
    key = nacl.signing.SigningKey.generate()
    public = base64.b64encode(bytes(key.verify_key)).decode()
    return base64.b64encode(bytes(key)), f"v=DKIM1; k=ed25519; p={public}"


def ed25519_sign(message: bytes, private: bytes, domain: str, selector: str) -> bytes:
    """``message`` (CRLF) with an ed25519-sha256 DKIM-Signature by dkimpy on top."""
    import dkim
    sig = dkim.sign(message, selector.encode(), domain.encode(), private,
                    canonicalize=(b"relaxed", b"relaxed"), signature_algorithm=b"ed25519-sha256",
                    include_headers=[b"from", b"to", b"subject", b"date"])
    return sig + message
