"""Where ordinary users' submissions go in privileged mode: the queue service socket
and the drop directory, with the drop file format (SECURITY.md, "The qmail-queue decision", "The mechanism").

Paths are relative to QMAILHOME.  ``public/`` (qmailq, 0711) holds the socket of
qmail-queued (0666: every local user may connect) and the FIFO that pokes
qmail-pickup (0622).  ``maildrop/`` (qmailq:qmail, 03733: anyone may create a
file, nobody else may list it, only a file's owner may remove or rename it, and
new files get the group qmail) holds submissions made while the service is down.

A drop file is ``qpy-drop 1 <message length, 20 digits>\\n`` (32 bytes), then the
message, then the envelope exactly as qmail-queue reads it on fd 1
(``F<sender>\\0T<rcpt>\\0…\\0``) up to the end of the file.  A file is written
under a temporary name ``t<32 hex>`` and renamed to its final name ``d<32 hex>``
(random, unguessable) only when it is complete and fsync'd; qmail-pickup takes
final names only and removes other names once they are 36 h old.
"""
from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from qpy.errors import FormatError

if TYPE_CHECKING:
    import socket

PUBLIC = "public"
SOCKET = "public/qmail-queued"
TRIGGER = "public/qmail-pickup"
DIR = "maildrop"

MAGIC = b"qpy-drop "         # then one digit: 1 + the submission's flags (qpy.submit)
HEADER_LEN = len(MAGIC) + 23
FINAL = re.compile(r"d[0-9a-f]{32}\Z")
TEMP = re.compile(r"t[0-9a-f]{32}\Z")
STALE = 129600      # 36 h, as qmail-clean's pid/ cleanup
BUSY = 0xFF         # qmail-queued's answer "not now": it read nothing, use maildrop/


class Malformed(FormatError):
    """A drop file that our client cannot have written."""


def temp_name() -> str:
    """A fresh random name for a file being written."""
    return "t" + os.urandom(16).hex()


def final_name() -> str:
    """A fresh random name for a complete file."""
    return "d" + os.urandom(16).hex()


def header(msglen: int, flags: int = 0) -> bytes:
    """The 32-byte header of a drop file whose message has ``msglen`` bytes."""
    return MAGIC + b"%d %020d\n" % (1 + flags, msglen)


def parse_header(data: bytes, size: int) -> tuple[int, int]:
    """Check the header against the file size; return (message length, submission flags)."""
    if len(data) != HEADER_LEN or not data.startswith(MAGIC) or data[-1:] != b"\n":
        raise Malformed("bad header")
    version, digits = data[len(MAGIC):len(MAGIC) + 2], data[len(MAGIC) + 2:-1]
    if not digits.isdigit() or version[:1] not in b"1234" or version[1:] != b" ":
        raise Malformed("bad header")
    msglen = int(digits)
    if HEADER_LEN + msglen >= size:
        raise Malformed("no envelope")
    return msglen, int(version[:1]) - 1


def peer(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process that connected the other end (SO_PEERCRED, from the kernel)."""
    import socket  # noqa: F811 - imported here: qmail-queue's direct path needs no socket
    import struct
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", data)
    return pid, uid, gid
