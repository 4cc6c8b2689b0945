"""Named failures, and the one rule for failing.

THE LIBRARY raises ``QmailError`` subclasses and never calls sys.exit or raises
``Exit``: ``TempFail`` is qmail's 111 / ``Z``, ``PermFail`` is 100 / ``D``, and
``QueueFail`` is the queue writer's failure, whose ``exit_code`` is qmail-queue's
(qmail-queue.8).  The text of an instance carries the enhanced status code, e.g.
``"Unable to read control files. (#4.3.0)"``.

A PROGRAM leaves through ``Exit(code, text)``, raised anywhere inside it and
turned into the exit code and one stderr line by its main(); each main() renders
the library's failures into its own protocol (exit code, ``Z…\\0`` report, SMTP
reply, qmail-queue code).  Anything unexpected is a temporary failure.

A FORKED CHILD that dies of an exception nobody expected writes one line naming
it (``warm.report_crash``: type, message, file:line) to fd 2 before its exit code.
"""
from __future__ import annotations

import errno

from qpy.exitcodes import qq_text


class Exit(Exception):
    """Leave a program with exit code ``code`` and, if ``text``, that line on stderr.

    Raised inside a program (never by the library below it) and turned into the
    exit code by its main(), which also decides how the text is shown (its
    prefix, its stream, a log line or a protocol reply).  ``text`` is str or bytes.
    """

    def __init__(self, code: int, text: str | bytes = "") -> None:
        super().__init__(text or code)
        self.code = code
        self.text = text

    @property
    def data(self) -> bytes:
        """The text as bytes (UTF-8 if it was given as str)."""
        return self.text.encode() if isinstance(self.text, str) else self.text


class QmailError(Exception):
    """A failure with a message meant for a person and an exit code."""

    exit_code = 111
    letter = "Z"

    def __init__(self, text: str = "", code: int | None = None) -> None:
        super().__init__(text or (self.__doc__ or "").strip())
        if code is not None:
            self.exit_code = code

    @property
    def text(self) -> str:
        """The human text (the first argument)."""
        return str(self.args[0])


class TempFail(QmailError):
    """Temporary failure. (#4.3.0)"""

    exit_code = 111
    letter = "Z"


class PermFail(QmailError):
    """Permanent failure. (#5.3.0)"""

    exit_code = 100
    letter = "D"


class ControlError(TempFail):
    """Unable to read control files. (#4.3.0)"""


class CdbError(TempFail):
    """Unable to read a cdb file. (#4.3.0)"""


class FormatError(PermFail):
    """Input is not in the expected format."""


class QueueFail(QmailError):
    """The queue writer failed: ``exit_code`` is qmail-queue's exit code, the text qmail_close()'s."""

    def __init__(self, code: int) -> None:
        text = qq_text(code)
        super().__init__(text[1:], code)
        self.letter = text[:1]


# qmail's error_temp() (error_temp.c), in its order: errno values that mean "try again
# later".  The one list; names this system lacks (EPROCLIM on Linux) are skipped.
TEMP_ERRNOS = frozenset(getattr(errno, name) for name in (
    "EINTR", "ENOMEM", "ETXTBSY", "EIO", "ETIMEDOUT", "EWOULDBLOCK", "EAGAIN", "EDEADLK",
    "EBUSY", "ENFILE", "EMFILE", "EFBIG", "ENOSPC", "ENETDOWN", "ENETUNREACH", "ENETRESET",
    "ECONNABORTED", "ECONNRESET", "ENOBUFS", "ETOOMANYREFS", "ECONNREFUSED", "EHOSTDOWN",
    "EHOSTUNREACH", "EPROCLIM", "EUSERS", "EDQUOT", "ESTALE", "ENOLCK") if hasattr(errno, name))


def temporary_errno(err: int | None) -> bool:
    """True if an errno means a temporary condition (qmail's error_temp)."""
    return err in TEMP_ERRNOS
