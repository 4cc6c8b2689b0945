"""qmail-qread - list the messages in the queue and their recipients.

SYNOPSIS  qmail-qread
RUNS AS   root or qmails (anyone who can read queue/info, local, remote); single-user mode:
          the instance's owner.
READS     queue/info/*/* (sender; its mtime is the queue time), mess (size), bounce (a
          bounce is pending), local/remote (T = to do, D = done).
PRINTS    per message ``D Mon YYYY hh:mm:ss GMT  #<id>  <bytes>  <<sender>> `` (plus
          `` bouncing``), then per recipient ``[  done]\\t{local,remote}\\t<rcpt>``;
          bytes outside 32..126 print as ``_``.  Problems with one message print
          ``warning: trouble with #<id>: <error>`` on stdout and the listing goes on.
EXIT      0; 111 (``fatal: unable to chdir: …`` on stdout) if the queue is unreachable.
"""
from __future__ import annotations

import os
import sys
import time

import click

from qpy import auto, queuedir
from qpy.errors import Exit
from qpy.programs import options

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def printable(data: bytes) -> bytes:
    """Bytes outside 32..126 become ``_``."""
    return bytes(ch if 32 <= ch <= 126 else 95 for ch in data)


def stats_line(when: float, msgid: int, size: int, sender: bytes, bouncing: bool) -> bytes:
    """The per-message line (qmail-qread's fmtstats, including its trailing space)."""
    t = time.gmtime(when)
    stamp = "%d %s %d %02d:%02d:%02d GMT" % (t.tm_mday, MONTHS[t.tm_mon - 1], t.tm_year,
                                              t.tm_hour, t.tm_min, t.tm_sec)
    line = b"%s  #%d  %d  <%s> " % (stamp.encode(), msgid, size, sender)
    if bouncing:
        line += b" bouncing"
    return printable(line) + b"\n"


def recipient_lines(data: bytes, channel: str) -> bytes:
    """One line per T/D record of a channel file."""
    out = bytearray()
    for record in data.split(b"\0")[:-1]:
        kind = record[:1]
        if kind == b"D":
            out += b"  done"
        if kind in (b"D", b"T"):
            out += b"\t" + channel.encode() + b"\t" + printable(record[1:]) + b"\n"
    return bytes(out)


def warning(msgid: int, err: OSError) -> bytes:
    return b"warning: trouble with #%d: %s\n" % (msgid, (err.strerror or str(err)).encode())


def message_ids(queue: str) -> list[int]:
    """Ids in info/, split directory by split directory, each sorted."""
    ids: list[int] = []
    for n in range(auto.SPLIT):
        try:
            names = os.listdir(os.path.join(queue, "info", str(n)))
        except OSError as e:
            raise Exit(111, f"fatal: unable to opendir info/{n}: {e.strerror}")
        ids += sorted(i for i in map(queuedir.parse_id, names) if i is not None)
    return ids


def describe(msgid: int) -> bytes:
    """Everything qmail-qread prints for one message (cwd = queue/)."""
    try:
        size = os.stat(queuedir.mess(msgid)).st_size
    except OSError as e:
        return warning(msgid, e)
    bouncing = os.path.exists(queuedir.bounce(msgid))
    try:
        with open(queuedir.info(msgid), "rb") as f:
            info = f.read()
            when = os.fstat(f.fileno()).st_mtime
    except OSError as e:
        return warning(msgid, e)
    sender = info.split(b"\0", 1)[0][1:]
    out = bytearray(stats_line(when, msgid, size, sender, bouncing))
    for chan, path in (("local", queuedir.local(msgid)), ("remote", queuedir.remote(msgid))):
        try:
            with open(path, "rb") as f:
                out += recipient_lines(f.read(), chan)
        except FileNotFoundError:
            continue
        except OSError as e:
            out += warning(msgid, e)
    return bytes(out)


@click.command(context_settings=options.CONTEXT)
def cli() -> int:
    """List queued messages with their senders and recipients."""
    out = sys.stdout.buffer
    try:
        try:
            os.chdir(auto.home())
            os.chdir("queue")
        except OSError as e:
            raise Exit(111, f"fatal: unable to chdir: {e.strerror}")
        ids = message_ids(".")
    except Exit as e:     # printed on stdout, as qmail-qread does
        out.write(e.data + b"\n")
        out.flush()
        return e.code
    for msgid in ids:
        out.write(describe(msgid))
    out.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the click command; return its exit code."""
    return options.run(cli, "qmail-qread", argv)
