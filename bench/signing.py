#!/usr/bin/env python3
"""bench/signing.py - what DKIM signing and ARC sealing cost the queue writer, per message.

    python3 bench/signing.py [-n 300] [--size 2000]

Makes a scratch instance with an RSA-2048 and an Ed25519 key for example.org, then times
qpy.submit's work on one message of ``--size`` bytes (a mail client's typical message)
in this process, as the writer does it: no flags (the path every message from the
Internet takes), a signature with each key alone, both keys (two signatures), and an
ARC seal of a forward whose two signatures are verified against a loopback DNS server
(tests/dnsserver.py).  Then qmail-smtpd's checks of mail from outside (qpy.inbound:
DKIM, DMARC, ARC) on the same message unsigned, with the RSA signature, and with both,
against that server, and what one process pays once for them (imports and the Public
Suffix List; tcpserver's parent pays it for its sessions).  Then the same through a real
program: ``qmail-inject`` run
``-n`` times in a row with no key and with both keys (each run is a whole process:
interpreter start included), so the figure is the share of a local submission.
Prints milliseconds per message; nothing is asserted.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def per_call(fn, n: int) -> float:
    fn()                                   # imports and caches outside the timing
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1000


def inject(home: Path, message: bytes, n: int) -> float:
    env = dict(os.environ, QMAILHOME=str(home))
    start = time.perf_counter()
    for _ in range(n):
        subprocess.run([str(home / "bin" / "qmail-inject"), "bob@example.net"], input=message,
                       env=env, check=True)
    return (time.perf_counter() - start) / n * 1000


def checks(unsigned: bytes, rsa: bytes, both: bytes, n: int) -> None:
    """qmail-smtpd's checks of mail from outside (qpy.inbound.check), DNS on loopback:
    a DMARC lookup for every message, a key lookup per signature; a new budget (and so a
    new resolver) per message, as per transaction.  Then what a process pays once."""
    from qpy import inbound
    from qpy.dnsbudget import Budget

    def check(message: bytes):
        return lambda: inbound.check(message, None, Budget(30, 5), enforce=False,
                                     authserv_id=b"mx.example.org")
    print(f"  from outside, unsigned (DMARC):   {per_call(check(unsigned), n):7.3f}")
    print(f"  from outside, RSA-signed:         {per_call(check(rsa), n):7.3f}")
    print(f"  from outside, RSA + Ed25519:      {per_call(check(both), n):7.3f}")
    code = ("import time; t = time.perf_counter(); from qpy import inbound; inbound.preload(); "
            "print(f'{(time.perf_counter() - t) * 1000:.1f}')")
    once = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True,
                          text=True).stdout.strip()
    print(f"  once per process (dkimpy, dnspython, suffix list; tcpserver's parent): {once}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=300)
    ap.add_argument("--size", type=int, default=2000)
    args = ap.parse_args()
    from dnsserver import DNSServer
    from qpy import dkimkeys, hier, submit
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "qmail"
        hier.install(str(home), b"mx.example.org", False)
        os.environ["QMAILHOME"] = str(home)
        body = (b"x" * 70 + b"\n") * max(1, args.size // 71)
        message = (b"From: Alice <alice@example.org>\nTo: bob@example.net\nSubject: bench\n"
                   b"Date: Fri, 4 Dec 2026 12:00:00 +0000\nMessage-ID: <b@example.org>\n\n" + body)
        print(f"message: {len(message)} bytes; in-process, ms/message over {args.n}:")
        print(f"  no flags (from the Internet):     {per_call(lambda: submit.prefix(0, message), args.n):7.3f}")
        print(f"  SIGN, no key configured:          {per_call(lambda: submit.prefix(submit.SIGN, message), args.n):7.3f}")
        unsigned = inject(home, message, max(1, args.n // 10))
        zone = {}
        for sel, algorithm in ((b"r", dkimkeys.RSA), (b"e", dkimkeys.ED25519)):
            pem = dkimkeys.generate(algorithm)
            key = dkimkeys.from_pem(b"example.org", sel, pem)
            dkimkeys.store(key, pem)
            line = key.zone_line()
            zone[f"{sel.decode()}._domainkey.example.org"] = [("TXT", line[line.index("(") + 1:-1])]
        for sels, what in (([b"r"], "RSA-2048"), ([b"e"], "Ed25519"), ([b"r", b"e"], "both")):
            dkimkeys.use(b"example.org", sels)
            ms = per_call(lambda: submit.prefix(submit.SIGN, message), args.n)
            print(f"  SIGN, {what + ':':27s} {ms:7.3f}")
        signed = submit.sign(message) + message
        dkimkeys.use(b"example.org", [b"r"])
        rsa_signed = submit.sign(message) + message
        zone["_dmarc.example.org"] = [("TXT", '"v=DMARC1; p=reject"')]
        with DNSServer(zone) as dns:
            os.environ["QPY_NAMESERVERS"] = dns.spec
            ms = per_call(lambda: submit.prefix(submit.FORWARD, signed), max(1, args.n // 10))
            print(f"  FORWARD (verify 2 + ARC seal):    {ms:7.3f}")
            checks(message, rsa_signed, signed, args.n)
        both = inject(home, message, max(1, args.n // 10))
        print(f"qmail-inject, whole process, ms/message over {max(1, args.n // 10)}: "
              f"no key {unsigned:.1f}, both keys {both:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
