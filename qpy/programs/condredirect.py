"""condredirect - forward the message elsewhere if a program says so (a .qmail program).

SYNOPSIS  | condredirect newaddress program [arg ...]
RUNS AS   the recipient, under qmail-local.
DOES      runs program (execvp) on the message.  Exit 0: rewind the message and queue
          DTLINE + message to newaddress with sender $SENDER, then exit 99 so qmail-local
          skips the rest of the .qmail file.  Exit 111: temporary failure.  Anything
          else: exit 0 (deliver normally).
WRITES    ``condredirect: qp N`` on stderr after forwarding.
EXIT      99 forwarded; 0 not forwarded; 100 usage, SENDER/DTLINE unset or permanent
          queue failure; 111 temporary failure (child crashed, could not run, queue).
"""
from __future__ import annotations

import os
import signal
import sys

from qpy import child, qmailq, submit


def die(code: int, text: str) -> int:
    sys.stderr.write(f"condredirect: fatal: {text}\n")
    sys.stderr.flush()
    return code


def main(argv: list[str] | None = None) -> int:
    """Forward to argv[0] when the program argv[1:] exits 0."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        sys.stderr.write("condredirect: usage: condredirect newaddress program [ arg ... ]\n")
        return 100
    try:
        code = child.wait(child.start(argv[1:]))
    except child.Crashed:
        return die(111, "child crashed")
    except OSError as e:
        return die(111, f"unable to fork: {e.strerror}")
    if code == 111:
        return die(111, "temporary child error")
    if code != 0:
        return 0
    try:
        child.rewind(0)
    except OSError as e:
        return die(111, f"unable to rewind: {e.strerror}")
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    sender = os.environb.get(b"SENDER")
    if sender is None:
        return die(100, "SENDER not set")
    dtline = os.environb.get(b"DTLINE")
    if dtline is None:
        return die(100, "DTLINE not set")
    try:
        result, qp = qmailq.queue_fd(0, sender, [os.fsencode(argv[0])], dtline,
                                     flags=submit.FORWARD)
    except OSError as e:
        return die(111, f"unable to read message: {e.strerror}")
    if result:
        return die(100 if result[0] == "D" else 111, result[1:])
    sys.stderr.write(f"condredirect: qp {qp}\n")
    sys.stderr.flush()
    return 99
