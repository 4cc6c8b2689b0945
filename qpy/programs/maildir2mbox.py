"""maildir2mbox - move the messages of $MAILDIR to the end of the mbox $MAIL.

SYNOPSIS  maildir2mbox
RUNS AS   the owner of the maildir and the mbox.
READS     $MAILDIR/new and $MAILDIR/cur (names not starting with ``.``, modified before
          this second), oldest first; removes $MAILDIR/tmp files not accessed for 36 h.
WRITES    $MAILTMP = the old $MAIL + each message as ``From <return-path> <ctime UTC>``
          (``MAILER-DAEMON`` for ``<>``, ``XXX`` without a Return-Path line; blanks in the
          address become ``-``), its lines with ``>`` before ``^>*From ``, a final newline
          if missing, and one empty line; fsync; rename $MAILTMP to $MAIL, all under an
          exclusive flock on $MAIL.  Then the copied messages are unlinked.
EXIT      0 (also when there is nothing new); 111 on any failure (``maildir2mbox: fatal:
          …``), the maildir untouched.
"""
from __future__ import annotations

import fcntl
import os
import re
import sys
import time

import click

from qpy import fdio
from qpy.errors import Exit
from qpy.programs import options

OSSIFIED = 129600  # 36 h
FROM_ = re.compile(rb"^>*From ")
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def ctime(when: float) -> bytes:
    """``Www Mmm DD hh:mm:ss YYYY\\n`` in UTC (qmail's myctime)."""
    t = time.gmtime(when)
    return ("%s %s %02d %02d:%02d:%02d %d\n" % (DAYS[t.tm_wday], MONTHS[t.tm_mon - 1], t.tm_mday,
                                                t.tm_hour, t.tm_min, t.tm_sec, t.tm_year)).encode()


def from_line(first: bytes, when: float) -> bytes:
    """The mbox separator for a message whose first line is ``first``."""
    sender = b"XXX"
    if first.endswith(b"\n") and first.startswith(b"Return-Path: <"):
        if first[14:15] == b">":
            sender = b"MAILER-DAEMON"
        else:
            sender = first[14:-2].replace(b" ", b"-").replace(b"\t", b"-")
    return b"From " + sender + b" " + ctime(when)


def mbox_entry(data: bytes, when: float) -> bytes:
    """One message in mbox form, with its trailing empty line.

    A last line without a newline gets one (qmail 1.03's loop drops such a line).
    """
    parts = data.split(b"\n")
    lines = [p + b"\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1] + b"\n")
    first = parts[0] + b"\n" if len(parts) > 1 else b""
    out = [from_line(first, when)]
    out += [b">" + line if FROM_.match(line) else line for line in lines]
    out.append(b"\n")
    return b"".join(out)


def clean_tmp(now: float) -> None:
    """Remove tmp/ files not accessed for 36 hours."""
    try:
        names = os.listdir("tmp")
    except OSError:
        return
    for name in names:
        if name.startswith("."):
            continue
        path = os.path.join("tmp", name)
        try:
            if now > os.stat(path).st_atime + OSSIFIED:
                os.unlink(path)
        except OSError:
            pass


def scan(now: float) -> list[tuple[float, str]]:
    """(mtime, path) of the messages in new/ and cur/, oldest first."""
    found = []
    for sub in ("new", "cur"):
        try:
            names = os.listdir(sub)
        except OSError as e:
            raise Exit(111, f"unable to scan $MAILDIR/{sub}: {e.strerror}")
        for name in names:
            if name.startswith("."):
                continue
            path = f"{sub}/{name}"
            try:
                mtime = os.stat(path).st_mtime
            except OSError:
                continue
            if int(mtime) < int(now):       # don't mix up the order
                found.append((mtime, path))
    found.sort()
    return found


def write_all(fd: int, data: bytes, name: str) -> None:
    """Write everything to ``fd``; a failure is fatal, naming the file."""
    try:
        fdio.write_all(fd, data)
    except OSError as e:
        raise Exit(111, f"unable to write to {name}: {e.strerror}")


def convert(maildir: str, mbox: str, mboxtmp: str) -> None:
    """Append the maildir's messages to the mbox; raise Exit."""
    try:
        os.chdir(maildir)
    except OSError as e:
        raise Exit(111, f"unable to chdir to {maildir}: {e.strerror}")
    now = time.time()
    clean_tmp(now)
    messages = scan(now)
    if not messages:
        return
    try:
        lock = os.open(mbox, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX)
    except OSError as e:
        raise Exit(111, f"unable to lock {mbox}: {e.strerror}")
    try:
        try:
            old = os.open(mbox, os.O_RDONLY)
        except OSError as e:
            raise Exit(111, f"unable to read {mbox}: {e.strerror}")
        try:
            new = os.open(mboxtmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as e:
            raise Exit(111, f"unable to create {mboxtmp}: {e.strerror}")
        try:
            while True:
                try:
                    chunk = os.read(old, 65536)
                except OSError as e:
                    raise Exit(111, f"unable to read {mbox}: {e.strerror}")
                if not chunk:
                    break
                write_all(new, chunk, mboxtmp)
            for mtime, path in messages:
                try:
                    with open(path, "rb") as f:
                        data = f.read()
                except OSError as e:
                    raise Exit(111, f"unable to read $MAILDIR/{path}: {e.strerror}")
                write_all(new, mbox_entry(data, mtime), mboxtmp)
            try:
                os.fsync(new)
            except OSError as e:
                raise Exit(111, f"unable to write to {mboxtmp}: {e.strerror}")
        finally:
            os.close(old)
            try:
                os.close(new)
            except OSError as e:
                raise Exit(111, f"unable to write to {mboxtmp}: {e.strerror}")
        try:
            os.rename(mboxtmp, mbox)
        except OSError as e:
            raise Exit(111, f"unable to move {mboxtmp} to {mbox}: {e.strerror}")
    finally:
        os.close(lock)
    for _, path in messages:
        try:
            os.unlink(path)
        except OSError as e:
            sys.stderr.write(f"maildir2mbox: warning: $MAILDIR/{path} will be delivered twice;"
                             f" unable to unlink: {e.strerror}\n")


@click.command(context_settings=options.CONTEXT)
def cli() -> None:
    """Move $MAILDIR's messages to the end of $MAIL (through $MAILTMP)."""
    os.umask(0o077)
    mbox = os.environ.get("MAIL")
    if mbox is None:
        raise Exit(111, "MAIL not set")
    mboxtmp = os.environ.get("MAILTMP")
    if mboxtmp is None:
        raise Exit(111, "MAILTMP not set")
    maildir = os.environ.get("MAILDIR")
    if maildir is None:
        raise Exit(111, "MAILDIR not set")
    convert(maildir, mbox, mboxtmp)


def main(argv: list[str] | None = None) -> int:
    """Run the click command; return its exit code."""
    return options.run(cli, "maildir2mbox", argv)
