"""Exit codes of the queue interface (qmail-queue.8) and of qmail-lspawn's helper (qlx.h).

``qq_text(code)`` is what qmail's qmail_close() makes of a qmail-queue exit
status: the caller puts it verbatim in an SMTP reply, a bounce or a report.
First character ``D`` = permanent, ``Z`` = temporary.
"""
from __future__ import annotations

import enum


class QQ(enum.IntEnum):
    """qmail-queue exit codes."""

    OK = 0
    ADDR_TOO_LONG = 11
    PERM_REJECT = 31
    NOMEM = 51
    TIMEOUT = 52
    WRITE_ERROR = 53
    READ_ERROR = 54
    CONFIG = 55
    NETWORK = 56
    HOME = 61
    QUEUE_DIR = 62
    PID_DIR = 63
    MESS_DIR = 64
    INTD_DIR = 65
    TODO_DIR = 66
    TEMP_REJECT = 71
    CONNECT_TIMEOUT = 72
    CONNECT_REFUSED = 73
    IO_FAILED = 74
    BUG = 81
    FD6_TEXT = 82
    ENVELOPE = 91
    CANT_EXEC = 120


class QLX(enum.IntEnum):
    """qmail-lspawn helper exit codes (qlx.h)."""

    USAGE = 112
    ROOT = 113
    NFS = 115
    NOALIAS = 116
    CDB = 117
    SYS = 118
    NOMEM = 119
    EXECSOFT = 120
    RUNGETPW = 121
    EXECHARD = 126


_QQ_TEXT = {
    11: "Denvelope address too long for qq (#5.1.3)",
    115: "Denvelope address too long for qq (#5.1.3)",
    31: "Dmail server permanently rejected message (#5.3.0)",
    51: "Zqq out of memory (#4.3.0)",
    52: "Zqq timeout (#4.3.0)",
    53: "Zqq write error or disk full (#4.3.0)",
    54: "Zqq read error (#4.3.0)",
    55: "Zqq unable to read configuration (#4.3.0)",
    56: "Zqq trouble making network connection (#4.3.0)",
    61: "Zqq trouble in home directory (#4.3.0)",
    62: "Zqq trouble creating files in queue (#4.3.0)",
    63: "Zqq trouble creating files in queue (#4.3.0)",
    64: "Zqq trouble creating files in queue (#4.3.0)",
    65: "Zqq trouble creating files in queue (#4.3.0)",
    66: "Zqq trouble creating files in queue (#4.3.0)",
    71: "Zmail server temporarily rejected message (#4.3.0)",
    72: "Zconnection to mail server timed out (#4.4.1)",
    73: "Zconnection to mail server rejected (#4.4.1)",
    74: "Zcommunication with mail server failed (#4.4.2)",
    81: "Zqq internal bug (#4.3.0)",
    91: "Zqq internal bug (#4.3.0)",
    120: "Zunable to exec qq (#4.3.0)",
}


def qq_text(code: int, fd6: bytes = b"") -> str:
    """Return qmail_close()'s text for a qmail-queue exit code ("" for success).

    ``code`` < 0 means the queue program died of a signal.  ``fd6`` is what the
    queue program wrote on fd 6 (notqmail's code 82 extension).
    """
    if code < 0:
        return "Zqq crashed (#4.3.0)"
    if code == 0:
        return ""
    if code == 82 and len(fd6) > 2 and fd6[:1] in (b"D", b"Z"):
        return fd6.decode("utf-8", "replace").rstrip("\n")
    if code in _QQ_TEXT:
        return _QQ_TEXT[code]
    if 11 <= code <= 40:
        return "Dqq permanent problem (#5.3.0)"
    return "Zqq temporary problem (#4.3.0)"


LOCAL_FIXED = {
    112: "ZInternal qmail-lspawn bug.\n",
    113: "ZNot allowed to perform deliveries as root.\n",
    115: "ZNFS failure in qmail-local.\n",
    116: "ZUnable to find alias user!\n",
    117: "ZTrouble reading users/cdb in qmail-lspawn.\n",
    118: "ZTemporary failure in qmail-lspawn.\n",
    119: "ZOut of memory in qmail-lspawn.\n",
    120: "ZUnable to run qmail-local.\n",
    121: "ZUnable to run qmail-getpw.\n",
    126: "DUnable to run qmail-local.\n",
}


def local_letter(code: int) -> str:
    """Map a qmail-local exit status to K, Z or D (docs/protocols.md §3)."""
    if code == 0:
        return "K"
    if code in (111, 71, 74, 75):
        return "Z"
    return "D"


# Exit codes of a .qmail ``|program`` that mean a permanent failure (qmail-local).
PERM_PROGRAM = frozenset({64, 65, 70, 76, 77, 78, 100, 112})
