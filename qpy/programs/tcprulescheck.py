"""tcprulescheck - show which tcprules rule applies to a client (ucspi-tcp 0.88 compatible).

SYNOPSIS  tcprulescheck rules.cdb
RUNS AS   anyone (the admin, testing a rules file).
READS     rules.cdb; the client from $TCPREMOTEIP (default 0.0.0.0), $TCPREMOTEHOST and
          $TCPREMOTEINFO, looked up in tcpserver's order (qpy.tcprules).
WRITES    on fd 1: ``rule <key>:`` then ``set environment variable VAR=value`` lines and
          ``allow connection`` or ``deny connection``; or ``default:`` and ``allow connection``.
EXIT      0; 100 usage; 111 ``tcprulescheck: fatal: unable to read rules.cdb: …``.
"""
from __future__ import annotations

import errno
import os
import sys

from qpy import errstr, tcprules
from qpy.errors import CdbError

USAGE = "tcprulescheck: usage: tcprulescheck rules.cdb"


def report(key: bytes, value: bytes) -> bytes:
    """tcprulescheck's text for a found rule: it stops at a ``D`` record."""
    out = b"rule " + key + b":\n"
    for record in value.split(b"\0")[:-1]:
        if record[:1] == b"D":
            return out + b"deny connection\n"
        if record[:1] == b"+":
            out += b"set environment variable " + record[1:] + b"\n"
    return out + b"allow connection\n"


def main(argv: list[str] | None = None) -> int:
    """Print the rule that matches the client in the environment."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        os.write(2, (USAGE + "\n").encode())
        return 100
    env = os.environb
    try:
        found = tcprules.find(argv[0], env.get(b"TCPREMOTEIP", b"0.0.0.0"),
                              env.get(b"TCPREMOTEHOST"), env.get(b"TCPREMOTEINFO"))
    except CdbError as e:
        cause = e.__cause__
        reason = errstr.text(cause if isinstance(cause, OSError) else errno.EPROTO)
        os.write(2, os.fsencode(f"tcprulescheck: fatal: unable to read {argv[0]}: {reason}\n"))
        return 111
    os.write(1, report(*found) if found else b"default:\nallow connection\n")
    return 0
