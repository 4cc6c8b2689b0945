"""Helpers shared by the qmail-smtpd tests: the queue read back, a checkpassword program.

    from smtpdkit import CHECKPASSWORD, CLEARED, leftovers, qmail_behaviour, queued
"""
from __future__ import annotations

import os
from pathlib import Path

from qpy.auto import SPLIT

# qmail's own behaviour, which a new instance no longer has (no size limit, no recipient
# check): tests of qmail's dialogue write these control files first (qmail_behaviour).
QMAIL_BEHAVIOUR = {"databytes": b"0\n", "rcptcheck": b"0\n"}

# Variables a session must not inherit from the developer's environment.
CLEARED = ("RELAYCLIENT", "DATABYTES", "TCPREMOTEINFO", "QMAILQUEUE", "CHECKPASSWORD", "QPY_EXEC")

# A checkpassword program (run as ``python3 <file> /bin/true``): alice/secret is right,
# user "tempfail" exits 111, anything else exits 1.
CHECKPASSWORD = """\
import os, sys
data = b""
while True:
    chunk = os.read(3, 512)
    if not chunk:
        break
    data += chunk
user, password, stamp = data.split(b"\\0")[:3]
if user == b"tempfail":
    sys.exit(111)
if (user, password) != (b"alice", b"secret"):
    sys.exit(1)
os.execvp(sys.argv[1], sys.argv[1:])
"""


def queued(home: Path) -> dict[bytes, tuple[bytes, bytes]]:
    """pid of the qmail-queue that wrote it → (mess file, todo file), for every queued message."""
    out = {}
    todo = home / "queue" / "todo"
    for name in os.listdir(todo):
        envelope = (todo / name).read_bytes()
        mess = (home / "queue" / "mess" / str(int(name) % SPLIT) / name).read_bytes()
        pid = envelope.split(b"\0")[1][1:]
        out[pid] = (mess, envelope)
    return out


def leftovers(home: Path) -> list[str]:
    """Files a broken transaction must not leave: pid/, intd/, mess/ without todo/."""
    q = home / "queue"
    todo = set(os.listdir(q / "todo"))
    found = [f"pid/{n}" for n in os.listdir(q / "pid")]
    found += [f"intd/{n}" for n in os.listdir(q / "intd") if n not in todo]
    for split in range(SPLIT):
        found += [f"mess/{split}/{n}" for n in os.listdir(q / "mess" / str(split)) if n not in todo]
    return found


def qmail_behaviour(home: Path) -> Path:
    """Give an instance qmail's databytes 0 and rcptcheck 0 (QMAIL_BEHAVIOUR); return it."""
    for name, data in QMAIL_BEHAVIOUR.items():
        (home / "control" / name).write_bytes(data)
    return home
