"""forward - forward the message to addresses (a .qmail program).

SYNOPSIS  | forward address [address ...]
RUNS AS   the recipient, under qmail-local.
READS     $NEWSENDER (envelope sender), $DTLINE (prepended), the message on fd 0.
WRITES    a new queued message: DTLINE + message, sender NEWSENDER, the arguments as
          recipients; ``forward: qp N`` on stderr.
EXIT      0 queued; 100 NEWSENDER or DTLINE unset, or qmail-queue refused permanently;
          111 temporary failure.
"""
from __future__ import annotations

import os
import signal
import sys

from qpy import qmailq, submit



def die(code: int, text: str) -> int:
    sys.stderr.write(f"forward: fatal: {text}\n")
    sys.stderr.flush()
    return code


def main(argv: list[str] | None = None) -> int:
    """Forward stdin to the argument addresses."""
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    sender = os.environb.get(b"NEWSENDER")
    if sender is None:
        return die(100, "NEWSENDER not set")
    dtline = os.environb.get(b"DTLINE")
    if dtline is None:
        return die(100, "DTLINE not set")
    try:
        result, qp = qmailq.queue_fd(0, sender, [os.fsencode(a) for a in argv], dtline,
                                     flags=submit.FORWARD)
    except OSError as e:
        return die(111, f"unable to read message: {e.strerror}")
    if result:
        return die(100 if result[0] == "D" else 111, result[1:])
    sys.stderr.write(f"forward: qp {qp}\n")
    sys.stderr.flush()
    return 0
