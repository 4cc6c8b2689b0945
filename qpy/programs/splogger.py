"""splogger - send log lines (qmail-send's log on stdin) to syslog.

SYNOPSIS  splogger [tag [facility]]
RUNS AS   qmaill (qmail-start's logger child).
DOES      openlog(tag, default ``splogger``; numeric facility, default 2 = mail) and for
          each input line one syslog record ``<sec>.<usec> <line>`` (stamped when its first
          part is logged), priority alert for ``alert:`` lines, warning for ``warning:``, else
          info.  Bytes outside 32..126 become ``?``; blank lines are dropped; a line is
          cut every 799 bytes, continuations carry ``<stamp>+<rest>``.  A last line
          without a newline is logged at EOF (qmail's splogger drops it).
NOTES     syslog goes through Python's syslog module (libc, /dev/log).  For daemontools
          style logging, run ``multilog t ./main`` as the logger instead: qmail-send's log
          is plain lines on a pipe, which multilog stamps (tai64nlocal reads them back).
EXIT      0 at EOF.
"""
from __future__ import annotations

import os
import sys
import time

from qpy import scan

CHUNK = 800                 # syslog truncates long lines; keep qmail's 799 + NUL
INFO, WARNING, ALERT = 6, 4, 1  # LOG_INFO, LOG_WARNING, LOG_ALERT
LOG_MAIL = 2


def stamp(now: float | None = None) -> str:
    """``<seconds>.<microseconds, 6 digits>``."""
    ns = time.time_ns() if now is None else int(now * 1e9)
    return "%d.%06d" % (ns // 1_000_000_000, ns // 1000 % 1_000_000)


class Splitter:
    """Turns input bytes into (priority, text) syslog records, as splogger does."""

    def __init__(self, clock=stamp) -> None:
        self.clock = clock
        self.buf = bytearray()
        self.cont = False
        self.priority = INFO
        self.stamp = ""

    def _flush(self, out: list[tuple[int, str]]) -> None:
        if self.buf:
            text = self.buf.decode("ascii")
            if self.cont:
                out.append((self.priority, f"{self.stamp}+{text}"))
            else:
                self.stamp = self.clock()
                self.priority = (ALERT if text.startswith("alert:") else
                                 WARNING if text.startswith("warning:") else INFO)
                out.append((self.priority, f"{self.stamp} {text}"))
                self.cont = True
        self.buf.clear()

    def feed(self, data: bytes) -> list[tuple[int, str]]:
        """Records completed by ``data``."""
        out: list[tuple[int, str]] = []
        for ch in data:
            if ch == 10:
                self._flush(out)
                self.cont = False
                continue
            if len(self.buf) == CHUNK - 1:
                self._flush(out)
            self.buf.append(ch if 32 <= ch <= 126 else 63)
        return out

    def end(self) -> list[tuple[int, str]]:
        """Records for a last line without a newline."""
        out: list[tuple[int, str]] = []
        self._flush(out)
        return out


def main(argv: list[str] | None = None) -> int:
    """Log stdin's lines to syslog."""
    import syslog
    argv = sys.argv[1:] if argv is None else argv
    tag = argv[0] if argv else "splogger"
    facility = scan.ulong(argv[1]) if len(argv) > 1 else LOG_MAIL
    syslog.openlog(tag, 0, facility << 3)
    splitter = Splitter()
    while True:
        try:
            data = os.read(0, 65536)
        except OSError:
            data = b""
        records = splitter.feed(data) if data else splitter.end()
        for priority, text in records:
            syslog.syslog(priority, text)
        if not data:
            return 0
