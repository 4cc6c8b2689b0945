"""qmail-rspawn - start remote deliveries for qmail-send.

SYNOPSIS  qmail-rspawn
RUNS AS   qmailr (started by qmail-start); the invoking user in single-user mode.
          cwd QMAILHOME/queue/mess.
PROTOCOL  qmail-send's spawner protocol (docs/protocols.md §2, qpy.spawn): one byte (120) at
          start, commands on fd 0, ``<slot><K|Z|D><text>\\0`` reports on fd 1.
AT START  zeroes queue/lock/tcpto (and tcpto6) under their locks, ignoring errors.
PER COMMAND  a forked child runs ``qmail-remote host sender recipient`` (host = the text
          after the recipient's last ``@``) with fd 0 = the message, fds 1+2 = the
          report pipe: ``$QMAILREMOTE`` (PATH search) when set, warm if it is one of our
          programs (qpy.shim) else exec'd; else QMAILHOME/bin/qmail-remote exec'd when
          QPY_EXEC is set, else qmail-remote warm.
REPORT    docs/protocols.md §4 "rspawn translation" (``translate``).
TRUSTS    qmail-send for the command stream; re-checks the message file.  qmail-remote's
          output is only cut into records.
EXIT      0 when fd 0 is at EOF and every delivery is reported; 111 cannot reach the queue.
"""
from __future__ import annotations

import os

from qpy import auto, shim, spawn, warm
from qpy.errors import QmailError, temporary_errno

_LETTER = {1: b"K", 0: b"Z", -1: b"D"}


def translate(status: int, output: bytes) -> bytes:
    """qmail-rspawn's report for qmail-remote's exit status and text0 output."""
    if status < 0:
        return b"Zqmail-remote crashed.\n"
    if status == 111:
        return b"ZUnable to run qmail-remote.\n"
    if status != 0:
        return b"DUnable to run qmail-remote.\n"
    if not output:
        return b"Zqmail-remote produced no output.\n"
    result = -1
    j = 0
    for k, ch in enumerate(output):
        if ch == 0:
            lead = output[j:j + 1]
            if lead == b"K":
                result = 1
                break
            if lead == b"Z":
                result = 0
                break
            if lead == b"D":
                break
            j = k + 1
    orr = {b"s": 0, b"h": -1}.get(output[:1], result)
    out = _LETTER[orr]
    first = output.find(b"\0", 1)
    if first == -1:
        return out
    out += output[1:first]
    k = first + 1
    if result <= orr and k < len(output) and output[k:k + 1] in (b"K", b"Z", b"D"):
        end = output.find(b"\0", k + 1)
        out += output[k + 1:] if end == -1 else output[k + 1:end]
    return out


class RemoteHooks(spawn.Hooks):
    """qmail-rspawn's part of the spawner: run qmail-remote, translate its records."""

    truncreport = 0
    crash_code = 111

    def __init__(self, external: str | None) -> None:
        self.external = external

    def report(self, status: int, output: bytes) -> bytes:
        """See ``translate``."""
        return translate(status, output)

    def child(self, sender: bytes, recipient: bytes, at: int) -> int:
        """Exec or warm-run qmail-remote (or $QMAILREMOTE, through $PATH) for one recipient."""
        argv = [os.fsdecode(a) for a in (recipient[at + 1:], sender, recipient)]
        try:
            return warm.run_or_exec("qmail-remote", argv, self.external, search=True)
        except OSError as e:
            return 111 if temporary_errno(e.errno) else 100


def clear_tcpto() -> None:
    """qmail-rspawn's tcpto_clean: forget every remembered connect timeout."""
    try:
        from qpy import tcpto
        tcpto.clear(auto.home())
    except (OSError, ImportError):
        pass


def main(argv: list[str] | None = None) -> int:
    """Enter the queue, clear tcpto, serve qmail-send."""
    try:
        spawn.enter_queue()
    except QmailError:
        return 111
    clear_tcpto()
    external = os.environ.get("QMAILREMOTE") or None
    found = shim.find(external, search=True) if external else None    # imports it if ours
    if not external or (found is not None and found[0] == "qmail-remote"):
        try:
            warm.preload("qmail-remote")
            from qpy import mx
            mx.warm_up()  # dnspython once here, not in every forked qmail-remote
        except ImportError:
            pass
    return spawn.run(RemoteHooks(external))
