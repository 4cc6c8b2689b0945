"""dot-forward - obey a sendmail-style ~/.forward (a .qmail program, bin name ``dot-forward``).

SYNOPSIS  | dot-forward [-nN] file [file ...]
          e.g. qmail-start's default delivery ``|dot-forward .forward`` + ``./Maildir/``
RUNS AS   the recipient, under qmail-local (cwd = the home directory).
READS     each file until one acts: lines of addresses (``#`` lines are comments;
          commas or spaces separate addresses; ``<…>`` and comments allowed); $USER,
          $HOST (the user's own address), $NEWSENDER, $DTLINE, $RPLINE, $UFLINE; control
          defaulthost/defaultdomain/plusdomain (default me) to complete addresses.
DOES      an address equal to the user (``joe``, ``\\joe`` or ``joe@HOST``) means "deliver
          here as well"; ``|cmd`` runs ``/bin/sh -c cmd`` at once with UFLINE, RPLINE,
          DTLINE and the message on its stdin; ``/path`` appends to an mbox and ``/dir/``
          delivers into a maildir at once (dot-forward refuses files; qpy supports them
          like sendmail); other addresses are forwarded in one qmail-queue run (DTLINE +
          message, sender NEWSENDER).  A missing file is skipped; an empty one too.
          -n prints what it would do on stderr instead.
EXIT      99 the file acted and the user is not among the addresses (qmail-local skips the
          rest of the .qmail file, e.g. ./Maildir/); 0 no file acted, or the user's own
          address was listed (the next line delivers); 100 usage, a program's permanent
          failure or a permanent qq failure; 111 temporary trouble (unreadable file,
          unparsable line, program, mbox, qq).
"""
from __future__ import annotations

import getopt
import os
import signal
import sys

from qpy import aliases, child, fdio, qmailq, submit
from qpy.errors import Exit, QmailError
from qpy.exitcodes import PERM_PROGRAM

USAGE = "dot-forward: usage: dot-forward [ -nN ] file ..."


def fatal(code: int, text: str) -> Exit:
    return Exit(code, f"dot-forward: fatal: {text}")


def _env(name: bytes) -> bytes:
    return os.environb.get(name, b"")


class DotForward:
    """State for one run."""

    def __init__(self, deliver: bool) -> None:
        self.deliver = deliver
        self.user = _env(b"USER")
        self.host = _env(b"HOST")
        self.lines = {name: _env(name) for name in (b"UFLINE", b"RPLINE", b"DTLINE")}
        self.sender = _env(b"NEWSENDER")
        self.q: aliases.Qualifier | None = None

    def qualifier(self) -> aliases.Qualifier:
        if self.q is None:
            try:
                self.q = aliases.Qualifier.from_control()
            except QmailError as e:
                raise fatal(111, f"unable to read controls: {e.text}")
        return self.q

    def is_me(self, item: aliases.Item) -> bool:
        text = item.text.lower()
        if not item.has_at:
            return text == self.user.lower()
        return text == self.user.lower() + b"@" + self.host.lower()

    def run_program(self, cmd: bytes) -> None:
        """``|cmd``: run it now on UFLINE RPLINE DTLINE + the message."""
        if not self.deliver:
            sys.stderr.write(f"pipe through {os.fsdecode(cmd)}\n")
            return
        try:
            r, w = os.pipe()
            pid = child.start(["/bin/sh", "-c", os.fsdecode(cmd)], stdin=r, close=(w,),
                              exec_fail=lambda e: 111)
        except OSError as e:
            raise fatal(111, f"unable to fork: {e.strerror}")
        os.close(r)
        try:
            if fdio.feed(w, b"".join(self.lines[n] for n in (b"UFLINE", b"RPLINE", b"DTLINE"))):
                fdio.copy(0, w)
        except OSError as e:
            os.close(w)
            raise fatal(111, f"unable to read message: {e.strerror}")
        os.close(w)
        try:
            code = child.wait(pid)
        except child.Crashed:
            raise fatal(111, "child crashed")
        if code in PERM_PROGRAM:
            raise Exit(100)
        if code:
            raise Exit(111)
        self.rewind()

    def deliver_file(self, path: bytes) -> None:
        """``/path`` (mbox) or ``/dir/`` (maildir): deliver now."""
        if not self.deliver:
            sys.stderr.write(f"file {os.fsdecode(path)}\n")
            return
        from qpy import maildir, mbox
        try:
            if path.endswith(b"/"):
                maildir.deliver(path, self.lines[b"RPLINE"] + self.lines[b"DTLINE"], 0)
            else:
                mbox.deliver(path, b"".join(self.lines[n] for n in (b"UFLINE", b"RPLINE", b"DTLINE")), 0)
        except QmailError as e:
            raise fatal(111, f"unable to deliver to {os.fsdecode(path)}: {e.text}")
        except OSError as e:
            raise fatal(111, f"unable to deliver to {os.fsdecode(path)}: {e.strerror}")
        self.rewind()

    def rewind(self) -> None:
        try:
            child.rewind(0)
        except OSError as e:
            raise fatal(111, f"unable to rewind input: {e.strerror}")

    def try_file(self, name: str) -> int | None:
        """Obey one file; return the exit code if it acted, None to try the next file."""
        try:
            with open(name, "rb") as f:
                text = f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise fatal(111, f"unable to open {name}: {e.strerror}")
        targets: list[bytes] = []
        acted = direct = False
        for line in text.split(b"\n"):
            if line.startswith(b"#"):
                continue
            try:
                found = aliases.items(line)
            except QmailError as e:
                raise fatal(111, e.text)
            for item in reversed(found):
                if item.kind == "include":
                    raise fatal(111, f":include: is not supported in {name}")
                if not item.text:
                    continue
                if self.is_me(item):
                    acted = direct = True
                elif item.is_file():
                    acted = True
                    self.deliver_file(item.text)
                elif item.is_program():
                    acted = True
                    self.run_program(item.text[1:])
                else:
                    full = self.qualifier().full(item.text, item.has_at)
                    targets.append(full)
                    if not self.deliver:
                        sys.stderr.write(f"forward {os.fsdecode(full)}\n")
        if targets:
            acted = True
            if self.deliver:
                self.forward(targets)
        if direct:
            if not self.deliver:
                sys.stderr.write("direct delivery\n")
            return 0
        if not acted:
            if not self.deliver:
                sys.stderr.write(f"skipping empty file {name}\n")
            return None
        return 99

    def forward(self, targets: list[bytes]) -> None:
        """Queue DTLINE + the message to the targets with sender NEWSENDER."""
        try:
            result, qp = qmailq.queue_fd(0, self.sender, targets, self.lines[b"DTLINE"],
                                         flags=submit.FORWARD)
        except OSError as e:
            raise fatal(111, f"unable to read message: {e.strerror}")
        if result:
            raise fatal(100 if result[0] == "D" else 111, f"unable to forward message: {result[1:]}")
        sys.stderr.write(f"dot-forward: info: qp {qp}\n")
        self.rewind()


def dot_forward(argv: list[str]) -> int:
    """Run; raise Exit."""
    try:
        opts, files = getopt.getopt(argv, "nN")
    except getopt.GetoptError:
        raise Exit(100, USAGE)
    deliver = True
    for opt, _ in opts:
        deliver = opt == "-N"
    df = DotForward(deliver)
    for name in files:
        code = df.try_file(name)
        if code is not None:
            return code
    if not deliver:
        sys.stderr.write("direct delivery\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Obey the .forward files named on the command line."""
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        code = dot_forward(sys.argv[1:] if argv is None else argv)
    except Exit as e:
        if e.text:
            sys.stderr.write(e.text + "\n")
        code = e.code
    sys.stderr.flush()
    return code
