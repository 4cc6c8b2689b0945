"""fastforward - forward mail as an aliases cdb says (a .qmail program, usually ~alias/.qmail-default).

SYNOPSIS  | fastforward [-nNpPdD] aliases.cdb
RUNS AS   the owner of the .qmail file (the alias user), under qmail-local.
READS     the recipient: $RECIPIENT, or with -d $DEFAULT@$HOST ($EXT@$HOST without DEFAULT);
          $SENDER, $DTLINE (and $UFLINE $RPLINE for file deliveries); the cdb written by
          newaliases (qpy.aliases); :include: list files (must be world-readable).
DOES      looks the recipient up as ``:addr``, ``:@host``, ``:user@``.  Not found: -P
          (default) bounces "Sorry, no mailbox here by that name. (#5.1.1)"; -p exits 0 so
          the next line of the .qmail file runs.  Found: follows the instructions, aliases
          of aliases included (each address expanded once; an address that has an owner
          is forwarded as is): ``!prog`` runs ``preline sh -c prog`` and ``|prog`` runs
          ``sh -c prog`` at once on the message, ``>/path`` appends to an mbox (maildir if
          it ends in /), lists are read; then one qmail-queue run sends DTLINE + message to
          all forward addresses, with the sender replaced by the ``owner-`` address of the
          original recipient if one exists (unless the sender is empty or #@[]).
          -n prints what it would do on stderr instead.
WRITES    ``fastforward: qp N`` on stderr after forwarding.
EXIT      0 done (-P), 99 done (-p: skip the rest of the .qmail file); 0 not found (-p);
          100 not found (-P), usage, a program's permanent failure, permanent qq
          failure; 111 temporary trouble (cdb, lists, programs, files, qq).
"""
from __future__ import annotations

import getopt
import os
import signal
import stat
import sys

from qpy import aliases, cdb, child, qmailq, submit
from qpy.errors import Exit, QmailError
from qpy.exitcodes import PERM_PROGRAM

USAGE = "fastforward: usage: fastforward [ -nNpPdD ] data.cdb"


def fatal(code: int, text: str) -> Exit:
    return Exit(code, f"fastforward: fatal: {text}")


def printsafe(data: bytes) -> str:
    return bytes(ch if ch >= 32 else 95 for ch in data).decode("utf-8", "replace")


class Forwarder:
    """One run: the cdb, the work list and the collected forward addresses."""

    def __init__(self, table: cdb.Table, deliver: bool, sender: bytes, dtline: bytes) -> None:
        self.table = table
        self.deliver = deliver
        self.sender = sender
        self.dtline = dtline
        self.done: set[bytes] = set()
        self.todo: list[bytes] = []
        self.forward: list[bytes] = []
        self.qualifier: aliases.Qualifier | None = None

    def find(self, prefix: bytes, address: bytes, wild: bool) -> bytes | None:
        for key in aliases.lookup_keys(prefix, address, wild):
            value = self.table.get(key)
            if value is not None:
                return value
        return None

    def data(self, value: bytes) -> None:
        """Act on one target's instructions (dodata)."""
        for instr in aliases.split_instructions(value):
            first = instr[:1]
            if first in (b"|", b"!"):
                self.program(instr)
            elif first == b">":
                self.file(instr[1:])
            elif first in (b".", b"/"):
                self.todo.append(instr)
            elif first == b"&" and len(instr) < aliases.MAX_FORWARD:
                self.todo.append(instr)

    def program(self, instr: bytes) -> None:
        """Run a program on the message now; a failure ends the delivery."""
        cmd = instr[1:]
        if not self.deliver:
            sys.stderr.write(f"run {printsafe(instr)}\n")
            return
        argv = ["sh", "-c", os.fsdecode(cmd)]
        try:
            if instr[:1] == b"!":
                pid = child.start(argv, program="preline")
            else:
                pid = child.start(argv)
            code = child.wait(pid)
        except child.Crashed:
            raise fatal(111, f"child crashed in {printsafe(instr)}")
        except OSError as e:
            raise fatal(111, f"unable to run {printsafe(instr)}: {e.strerror}")
        if code in PERM_PROGRAM:
            raise Exit(100)
        if code:
            raise Exit(111)
        rewind()

    def file(self, path: bytes) -> None:
        """Append the message to an mbox or deliver it into a maildir now."""
        if not self.deliver:
            sys.stderr.write(f"file {printsafe(path)}\n")
            return
        from qpy import maildir, mbox
        env = os.environb
        try:
            if path.endswith(b"/"):
                maildir.deliver(path, env.get(b"RPLINE", b"") + self.dtline, 0)
            else:
                head = env.get(b"UFLINE", b"") + env.get(b"RPLINE", b"") + self.dtline
                mbox.deliver(path, head, 0)
        except QmailError as e:
            raise fatal(111, f"unable to deliver to {printsafe(path)}: {e.text}")
        except OSError as e:
            raise fatal(111, f"unable to deliver to {printsafe(path)}: {e.strerror}")
        rewind()

    def list_file(self, path: bytes) -> None:
        """Queue the instructions of an :include: list (dofile)."""
        shown = printsafe(path)
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                if st.st_mode & 0o444 != 0o444 or not stat.S_ISREG(st.st_mode):
                    raise fatal(111, f"{shown} is not world-readable")
                text = f.read()
        except OSError as e:
            raise fatal(111, f"unable to read {shown}: {e.strerror}")
        if self.qualifier is None:
            self.qualifier = aliases.Qualifier.from_control()
        try:
            self.todo.extend(aliases.list_file(text, self.qualifier))
        except QmailError as e:
            raise fatal(111, f"{shown}: {e.text}")

    def recipient(self, address: bytes) -> None:
        """An address reached through an alias (dorecip)."""
        if self.find(b"?", address, False) is None:
            value = self.find(b":", address, False)
            if value is not None:
                self.data(value)
                return
        self.forward.append(address)

    def run(self, recipient: bytes, passthrough: bool) -> None:
        """Expand the original recipient and everything it leads to."""
        self.done.add(b"&" + recipient)
        if self.sender and self.sender != b"#@[]":
            owner = self.find(b"?", recipient, True)
            if owner is not None:
                self.sender = owner
        value = self.find(b":", recipient, True)
        if value is None:
            if passthrough:
                raise Exit(0)
            raise Exit(100, "Sorry, no mailbox here by that name. (#5.1.1)")
        self.data(value)
        while self.todo:
            instr = self.todo.pop()
            if instr in self.done:
                continue
            self.done.add(instr)
            if instr[:1] in (b".", b"/"):
                self.list_file(instr)
            elif len(instr) > 1:
                self.recipient(instr[1:])


def rewind() -> None:
    """Back to the start of the message after a program or file read it."""
    try:
        child.rewind(0)
    except OSError as e:
        raise fatal(111, f"unable to rewind input: {e.strerror}")


def requeue(dtline: bytes, sender: bytes, recipients: list[bytes]) -> tuple[str, int]:
    """Queue DTLINE + the rest of the message (fd 0 is at its start) to the recipients."""
    return qmailq.queue_fd(0, sender, recipients, dtline, flags=submit.FORWARD)


def recipient_from_env(use_default: bool) -> bytes:
    env = os.environb
    if use_default:
        local = env.get(b"DEFAULT")
        if local is None:
            local = env.get(b"EXT")
        if local is None:
            raise fatal(100, "$DEFAULT or $EXT must be set")
        host = env.get(b"HOST")
        if host is None:
            raise fatal(100, "$HOST must be set")
        return local + b"@" + host
    rcpt = env.get(b"RECIPIENT")
    if rcpt is None:
        raise fatal(100, "$RECIPIENT must be set")
    return rcpt


def fastforward(argv: list[str]) -> int:
    """Run; raise Exit."""
    try:
        opts, args = getopt.getopt(argv, "nNpPdD")
    except getopt.GetoptError:
        raise Exit(100, USAGE)
    deliver, passthrough, use_default = True, False, False
    for opt, _ in opts:
        letter = opt[1]
        if letter in "nN":
            deliver = letter == "N"
        elif letter in "pP":
            passthrough = letter == "p"
        else:
            use_default = letter == "d"
    if not args:
        raise Exit(100, USAGE)
    dtline = os.environb.get(b"DTLINE", b"")
    sender = os.environb.get(b"SENDER", b"original envelope sender")
    try:
        table = cdb.Table(args[0])
    except QmailError as e:
        raise fatal(111, f"unable to read {args[0]}: {e.text}")
    with table:
        ff = Forwarder(table, deliver, sender, dtline)
        ff.run(recipient_from_env(use_default), passthrough)
    done = 99 if passthrough else 0
    recipients = list(reversed(ff.forward))
    if not recipients:
        if not deliver:
            sys.stderr.write("no forwarding\n")
        return done
    if not deliver:
        sys.stderr.write(f"from <{printsafe(ff.sender)}>\n")
        for r in recipients:
            sys.stderr.write(f"to <{printsafe(r)}>\n")
        return done
    try:
        result, qp = requeue(dtline, ff.sender, recipients)
    except OSError as e:
        raise fatal(111, f"unable to read message: {e.strerror}")
    if result:
        raise fatal(100 if result[0] == "D" else 111, result[1:])
    sys.stderr.write(f"fastforward: qp {qp}\n")
    return done


def main(argv: list[str] | None = None) -> int:
    """Forward the message on fd 0 according to the cdb."""
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        code = fastforward(sys.argv[1:] if argv is None else argv)
    except Exit as e:
        if e.text:
            sys.stderr.write(e.text + "\n")
        code = e.code
    sys.stderr.flush()
    return code
