"""Queue paths (docs/queue.md §1): split directories, ids, and which files exist for an id.

All paths are relative to QMAILHOME/queue, the directory queue programs chdir
into.  A message id is the inode number of its mess file, in decimal.
"""
from __future__ import annotations

import errno
import os

from qpy.auto import SPLIT

SPLIT_DIRS = ("mess", "info", "local", "remote")
FLAT_DIRS = ("pid", "intd", "todo", "bounce")


def split_of(msgid: int) -> int:
    """Return the split subdirectory number for an id."""
    return msgid % SPLIT


def mess(msgid: int) -> str:
    """mess/<id % SPLIT>/<id>."""
    return f"mess/{msgid % SPLIT}/{msgid}"


def info(msgid: int) -> str:
    """info/<id % SPLIT>/<id>."""
    return f"info/{msgid % SPLIT}/{msgid}"


def local(msgid: int) -> str:
    """local/<id % SPLIT>/<id>."""
    return f"local/{msgid % SPLIT}/{msgid}"


def remote(msgid: int) -> str:
    """remote/<id % SPLIT>/<id>."""
    return f"remote/{msgid % SPLIT}/{msgid}"


def channel(chan: int, msgid: int) -> str:
    """Channel file of channel 0 (local) or 1 (remote)."""
    return local(msgid) if chan == 0 else remote(msgid)


def intd(msgid: int) -> str:
    """intd/<id>."""
    return f"intd/{msgid}"


def todo(msgid: int) -> str:
    """todo/<id>."""
    return f"todo/{msgid}"


def bounce(msgid: int) -> str:
    """bounce/<id>."""
    return f"bounce/{msgid}"


def quarantine(msgid: int) -> str:
    """quarantine/<id>: why a message with corrupt queue files was moved aside; its files
    are beside it as quarantine/<id>.todo, .info, .local, .remote, .bounce (qpy)."""
    return f"quarantine/{msgid}"


def mess_rel(msgid: int) -> str:
    """The path relative to queue/mess that qmail-send hands the spawners: <split>/<id>."""
    return f"{msgid % SPLIT}/{msgid}"


def exists(path: str) -> bool:
    """True if ``path`` exists, False on ENOENT; OSError for any other trouble."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def parse_id(name: str) -> int | None:
    """Return the id a directory entry names, or None if it is not all digits."""
    if not name or not name.isdigit() or not name.isascii():
        return None
    return int(name)


def scan_flat(queue: str, dirname: str) -> list[int]:
    """Return the ids in a flat directory (todo, intd, bounce), ignoring other names."""
    ids = []
    for name in os.listdir(os.path.join(queue, dirname)):
        msgid = parse_id(name)
        if msgid is not None:
            ids.append(msgid)
    return ids


def scan_split(queue: str, dirname: str) -> list[int]:
    """Return the ids in every split subdirectory of ``dirname``."""
    ids = []
    for n in range(SPLIT):
        try:
            names = os.listdir(os.path.join(queue, dirname, str(n)))
        except FileNotFoundError:
            continue
        for name in names:
            msgid = parse_id(name)
            if msgid is not None:
                ids.append(msgid)
    return ids
