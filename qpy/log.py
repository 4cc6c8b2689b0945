"""qmail-send's activity log (docs/protocols.md §8, qmail-log(5)): one line per event on a fd.

The line formats are qmail's, byte for byte, because qmailanalog and people's
scripts parse them.  Addresses and reports go through ``safe`` (qmail's
logsafe) so a line never holds a newline or a control byte.  Each line is one
write(2); a failing log (a dead logger) is ignored, as qmail ignores it: the
queue matters more than the log.
"""
from __future__ import annotations

from qpy import fdio
from qpy.addr import safe_log as safe

CHANNEL_NAMES = (b"local", b"remote")
RESULTS = {"K": b"success", "Z": b"deferral", "D": b"failure"}


BUFFER_MAX = 4000       # a buffered write stays below PIPE_BUF (4096): whole lines, atomic


class Log:
    """Writes log lines to one fd (qmail-send's fd 0).

    ``buffered``: lines are collected and written by ``flush()`` (qmail-send calls it
    before every select(), so a line is at most one loop turn late), several whole
    lines per write(2), each write below PIPE_BUF so lines never interleave with
    another writer's.  This saves a pipe write and a logger wake-up per line.
    """

    def __init__(self, fd: int = 0, buffered: bool = False) -> None:
        self.fd = fd
        self.buffered = buffered
        self.buf = bytearray()

    def line(self, text: bytes) -> None:
        """Write ``text`` plus a newline in one write (or buffer it); ignore every error."""
        if self.buffered:
            if self.buf and len(self.buf) + len(text) + 1 > BUFFER_MAX:
                self.flush()
            self.buf += text + b"\n"
            if len(self.buf) > BUFFER_MAX:
                self.flush()
            return
        self._write(text + b"\n")

    def flush(self) -> None:
        """Write the buffered lines."""
        if self.buf:
            data, self.buf = bytes(self.buf), bytearray()
            self._write(data)

    def _write(self, data: bytes) -> None:
        fdio.write_quietly(self.fd, data)

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
