"""qmail-send's activity log (protocols.md §8, qmail-log(5)): one line per event on a fd.

The line formats are qmail's, byte for byte, because qmailanalog and people's
scripts parse them.  Addresses and reports go through ``safe`` (qmail's
logsafe) so a line never holds a newline or a control byte.  Each line is one
write(2); a failing log (a dead logger) is ignored, as qmail ignores it: the
queue matters more than the log.
"""
from __future__ import annotations

import os

from qpy.addr import safe_log as safe

CHANNEL_NAMES = (b"local", b"remote")
RESULTS = {"K": b"success", "Z": b"deferral", "D": b"failure"}


class Log:
    """Writes log lines to one fd (qmail-send's fd 0)."""

    def __init__(self, fd: int = 0) -> None:
        self.fd = fd

    def line(self, text: bytes) -> None:
        """Write ``text`` plus a newline in one write; ignore every error."""
        view = memoryview(text + b"\n")
        while view:
            try:
                view = view[os.write(self.fd, view):]
            except InterruptedError:
                continue
            except OSError:
                return

    def warning(self, text: str | bytes) -> None:
        """``warning: <text>``."""
        self.line(b"warning: " + _b(text))

    def alert(self, text: str | bytes) -> None:
        """``alert: <text>``."""
        self.line(b"alert: " + _b(text))


def _b(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode("utf-8", "replace")


def status(used: tuple[int, int], limit: tuple[int, int], exitasap: bool = False) -> bytes:
    """``status: local 1/10 remote 0/20[ exitasap]``."""
    out = b"status: local %d/%d remote %d/%d" % (used[0], limit[0], used[1], limit[1])
    return out + b" exitasap" if exitasap else out


def exiting() -> bytes:
    """The last line of a clean exit."""
    return b"status: exiting"


def new_msg(msgid: int) -> bytes:
    """``new msg <id>``: preprocessing of todo/<id> has begun."""
    return b"new msg %d" % msgid


def info_msg(msgid: int, size: int, sender: bytes, qp: int, uid: int) -> bytes:
    """``info msg <id>: bytes <n> from <<sender>> qp <pid> uid <uid>``."""
    return b"info msg %d: bytes %d from <%s> qp %d uid %d" % (msgid, size, safe(sender), qp, uid)


def starting_delivery(delnum: int, msgid: int, channel: int, recip: bytes) -> bytes:
    """``starting delivery <d>: msg <id> to local|remote <recip>``."""
    return b"starting delivery %d: msg %d to %s %s" % (delnum, msgid, CHANNEL_NAMES[channel],
                                                       safe(recip))


def delivery(delnum: int, letter: str, report: bytes) -> bytes:
    """``delivery <d>: success|deferral|failure: <report>``, or the mangled-report line."""
    word = RESULTS.get(letter)
    if word is None:
        return b"delivery %d: report mangled, will defer" % delnum
    return b"delivery %d: %s: %s" % (delnum, word, safe(report))


def bounce_msg(msgid: int, qp: int) -> bytes:
    """``bounce msg <id> qp <pid>``: the bounce for <id> was queued by qmail-queue <pid>."""
    return b"bounce msg %d qp %d" % (msgid, qp)


def triple_bounce(msgid: int) -> bytes:
    """A failed double bounce is dropped."""
    return b"triple bounce: discarding bounce/%d" % msgid


def end_msg(msgid: int) -> bytes:
    """``end msg <id>``: the message leaves the queue."""
    return b"end msg %d" % msgid
