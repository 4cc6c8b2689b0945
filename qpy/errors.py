"""Named failures.  Each program's main() renders them into its own protocol.

``TempFail`` is qmail's 111 / ``Z``; ``PermFail`` is 100 / ``D``.  The text of
an instance carries the enhanced status code, e.g. ``"Unable to read control
files. (#4.3.0)"``.  Library code raises these and never calls sys.exit.
"""
from __future__ import annotations

import errno


class Exit(Exception):
    """Leave a program with exit code ``code`` and, if ``text``, that line on stderr.

    Raised inside a program (never by the library below it) and turned into the
    exit code by its main().
    """

    def __init__(self, code: int, text: str = "") -> None:
        super().__init__(text or code)
        self.code = code
        self.text = text


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


class QueueFail(TempFail):
    """qmail-queue failed with one of its exit codes (exit_code holds it)."""


# qmail's error_temp(): errno values that mean "try again later".
TEMP_ERRNOS = frozenset(getattr(errno, name) for name in (
    "EINTR", "ENOMEM", "ETXTBSY", "EIO", "ETIMEDOUT", "EWOULDBLOCK", "EAGAIN", "EDEADLK",
    "EBUSY", "ENFILE", "EMFILE", "EFBIG", "ENOSPC", "ENETDOWN", "ENETUNREACH", "ENETRESET",
    "ECONNABORTED", "ECONNRESET", "ENOBUFS", "EHOSTDOWN", "EHOSTUNREACH", "EUSERS", "EDQUOT",
    "ESTALE", "EREMOTE", "ENOLCK") if hasattr(errno, name))


def temporary_errno(err: int | None) -> bool:
    """True if an errno means a temporary condition (qmail's error_temp)."""
    return err in TEMP_ERRNOS
