"""qmail-send INFO: what qmail-send knows of each message, one record per message.

A ``Message`` record exists for a message this process preprocessed (it reached S5
here), from that moment until its completion, for at most INFO_CACHE messages at a
time.  For such a message the record is the truth about the files nothing else
writes while its id is in use: its sender and birth are what info/<id> holds (the
first F record and the file's mtime after writing), and bounce/<id> exists exactly
when ``bounced`` is set (bounce/<id> is only ever made by this process's reports,
after S5).  A message without a record (found at start-up, or preprocessed while the
table was full) is looked up on disk instead; the records only save reads and stats.
"""
from __future__ import annotations

from dataclasses import dataclass

from qpy import fdio, queuedir
from qpy.errors import FormatError

INFO_CACHE = 20000      # messages with a record, at most


class Corrupt(FormatError):
    """A queue file of the message is not in its format: the message goes to quarantine."""


@dataclass(eq=False, slots=True)
class Message:
    """A message preprocessed by this process and not yet completed."""

    msgid: int
    sender: bytes
    birth: int
    bounced: bool = False       # bounce/<id> exists (this process appended to it)
    local_waiting: bool = False  # its local channel's first pass has not begun (PREP_AHEAD)


class Messages:
    """The records, and how many messages wait for their first local pass."""

    def __init__(self, limit: int = INFO_CACHE) -> None:
        self.limit = limit
        self.records: dict[int, Message] = {}
        self.local_waiting = 0
        self.quarantined: set[int] = set()    # moved aside by this process: drop their jobs

    def add(self, msgid: int, sender: bytes, birth: int, local_waiting: bool) -> None:
        """Record a message that just reached S5 here (nothing if the table is full)."""
        if len(self.records) >= self.limit:
            return
        self.records[msgid] = Message(msgid, sender, birth, local_waiting=local_waiting)
        self.local_waiting += local_waiting

    def get(self, msgid: int) -> Message | None:
        """The record, or None: then look at the files."""
        return self.records.get(msgid)

    def first_local_pass(self, msgid: int) -> None:
        """The message's local channel file is being read for the first time."""
        m = self.records.get(msgid)
        if m is not None and m.local_waiting:
            m.local_waiting = False
            self.local_waiting -= 1

    def forget(self, msgid: int) -> None:
        """Drop the record (completion, or the files must be looked at again)."""
        m = self.records.pop(msgid, None)
        if m is not None and m.local_waiting:
            self.local_waiting -= 1

    def info(self, msgid: int) -> tuple[bytes, int] | None:
        """(sender, birth): from the record, else info/<id>; None if unreadable, Corrupt if
        it is not an F record."""
        m = self.records.get(msgid)
        if m is not None:
            return m.sender, m.birth
        try:
            data, mtime = fdio.read_file(queuedir.info(msgid), with_mtime=True)
        except OSError:
            return None
        end = data.find(b"\0")
        if end == -1 or data[:1] != b"F":
            raise Corrupt(f"{queuedir.info(msgid)} holds no sender record")
        return data[1:end], mtime
