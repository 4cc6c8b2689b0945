"""qmail-local - deliver one message to one local address, following its dot-qmail file.

SYNOPSIS  qmail-local [-nN] [--] user homedir local dash ext domain sender defaultdelivery
RUNS AS   the recipient (qmail-lspawn's child: warm, or exec'd with QPY_EXEC); umask 077;
          cwd homedir.
READS     the message on fd 0 (seekable: re-read from offset 0 for every delivery);
          homedir/.qmail<dash><ext> or the -default files (docs/control.md §4; ext lowercased,
          ``.`` → ``:``; a name holding ``/`` is never tried, so nothing an address
          holds can reach outside homedir); defaultdelivery when there is no file (with
          an empty dash) or the file is empty; ``$USER`` in defaultdelivery becomes the
          user, so ``/var/spool/mail/$USER`` is a default choice (qpy extension).
WRITES    per line: ``./x/`` or ``/x/`` Maildir (tmp → fsync → link new/, fsync new/);
          ``./x`` or ``/x`` mbox (flock, ``>From `` quoting, truncate back on error);
          ``|cmd`` runs ``/bin/sh -c cmd`` in homedir with the message on fd 0 and SENDER,
          NEWSENDER, RECIPIENT, USER, HOME, LOCAL, HOST, HOST2-4, EXT, EXT2-4, DEFAULT,
          DTLINE, RPLINE, UFLINE added to the environment (a cmd of plain words naming
          one of our programs runs it warm instead, as /bin/sh would: qpy.shim; not
          under QPY_EXEC); ``&addr`` and ``addr`` are
          forwards, all queued at the end in one qmail-queue run (Delivered-To
          prepended, envelope sender NEWSENDER); ``+list`` = forward-only from there on.
          On fd 1: ``did <files>+<forwards>+<programs>\\n`` (+ ``qp <pid>\\n`` after a
          forward).  With -n: ``maildir X``/``mbox X``/``program X``/``forward X`` lines
          instead of deliveries.  Failure texts go to fd 2 (the same pipe under lspawn).
TRUSTS    nothing from the address or the message: the address only picks file names
          in homedir; the message is only scanned for Delivered-To loops.  Refuses a
          writable home or world-writable .qmail (111), file/program lines in a
          forward-only (user-execute bit) file (111).
EXIT      0 delivered; 100 permanent (no mailbox, loop, program 64 65 70 76 77 78 100
          112, forward D); 111 temporary (everything else).
"""
from __future__ import annotations

import os
import signal
import sys
import time

from qpy import addr, dotqmail, errstr, fdio, maildir, mbox, received
from qpy.errors import Exit, TempFail

USAGE = (b"qmail-local: usage: qmail-local [ -nN ] user homedir local dash ext domain "
         b"sender aliasempty")
PERM_PROGRAM = frozenset({100, 64, 65, 70, 76, 77, 78, 112})
MAILDIR_ALARM = 86400
CHUNK = 65536
_DAYS = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")
_MONTHS = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct",
           b"Nov", b"Dec")


def rewind() -> None:
    """Seek the message back to its start."""
    try:
        os.lseek(0, 0, os.SEEK_SET)
    except OSError:
        raise Exit(111, "Unable to rewind message. (#4.3.0)")


def myctime(when: float) -> bytes:
    """``Www Mmm DD hh:mm:ss YYYY\\n`` in UTC (qmail's myctime)."""
    t = time.gmtime(when)
    return b"%s %s %02d %02d:%02d:%02d %d\n" % (_DAYS[t.tm_wday], _MONTHS[t.tm_mon - 1],
                                               t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec,
                                               t.tm_year)


def rpline(sender: bytes) -> bytes:
    """``Return-Path: <sender>\\n`` with the local part quoted if needed, LF → ``_``."""
    quoted = addr.quote(sender) if sender else b""
    return b"Return-Path: <" + quoted.replace(b"\n", b"_") + b">\n"


def ufline(sender: bytes, when: float) -> bytes:
    """``From <sender> <ctime>\\n``: MAILER-DAEMON for <>, blanks and LF → ``-``."""
    who = sender.translate(_UF_TABLE) if sender else b"MAILER-DAEMON"
    return b"From " + who + b" " + myctime(when)


_UF_TABLE = bytes.maketrans(b" \t\n", b"---")


def host_parts(host: bytes) -> list[bytes]:
    """HOST2, HOST3, HOST4: the domain minus its last 1, 2, 3 dot-components."""
    parts = []
    i = len(host)
    for _ in range(3):
        j = host.rfind(b".", 0, i)
        i = i if j == -1 else j
        parts.append(host[:i])
    return parts


def ext_parts(ext: bytes) -> list[bytes]:
    """EXT2, EXT3, EXT4: ext after its 1st, 2nd, 3rd ``-`` (empty if none)."""
    parts = []
    x = ext
    for _ in range(3):
        i = x.find(b"-")
        x = b"" if i == -1 else x[i + 1:]
        parts.append(x)
    return parts


def check_home(doit: bool) -> None:
    """Refuse a writable home; a sticky one means the user is editing."""
    try:
        st = os.stat(".")
    except OSError as e:
        raise Exit(111, f"Unable to stat home directory: {errstr.text(e)}. (#4.3.0)")
    if st.st_mode & 0o002:
        raise Exit(111, "Uh-oh: home directory is writable. (#4.7.0)")
    if st.st_mode & 0o1000:
        if doit:
            raise Exit(111, "Home directory is sticky: user is editing his .qmail file. (#4.2.1)")
        fdio.write_quietly(2, b"Warning: home directory is sticky.\n")


def check_loop(dtline: bytes) -> None:
    """Refuse a message whose header already holds our Delivered-To line."""
    rewind()
    buf = b""
    pos = 0
    while True:
        nl = buf.find(b"\n", pos)
        if nl == -1:
            try:
                chunk = os.read(0, CHUNK)
            except OSError as e:
                raise Exit(111, f"Unable to read message: {errstr.text(e)}. (#4.3.0)")
            if not chunk:
                return
            buf = buf[pos:] + chunk
            pos = 0
            continue
        line = buf[pos:nl + 1]
        pos = nl + 1
        if len(line) <= 1:
            return
        if line == dtline:
            raise Exit(100, "This message is looping: it already has my Delivered-To line. (#5.4.6)")


class Local:
    """One qmail-local run: the arguments, the lines derived from them, the counters."""

    def __init__(self, args: list[bytes], doit: bool) -> None:
        (self.user, self.homedir, self.local, self.dash, self.ext, self.host, self.sender,
         self.aliasempty) = args
        self.doit = doit
        # The variables set for program lines, over the inherited environment; the
        # whole environment is copied only when a program runs (program()).
        self.env: dict[bytes, bytes] = {}
        self.files = self.forwards = self.programs = 0
        self.qp = 0
        self.stop = False
        self.recips: list[bytes] = []
        self.recipient = self.local + b"@" + self.host
        self.dtline = received.delivered_to(self.local, self.host)
        self.rpline = rpline(self.sender)
        self.ufline = ufline(self.sender, time.time())

    def set_env(self) -> None:
        """The variables a program line sees (DEFAULT and NEWSENDER come later)."""
        e = self.env
        e[b"HOST"], e[b"HOME"], e[b"USER"], e[b"LOCAL"] = (self.host, self.homedir, self.user,
                                                          self.local)
        e[b"RECIPIENT"], e[b"DTLINE"] = self.recipient, self.dtline
        e[b"SENDER"], e[b"RPLINE"], e[b"UFLINE"] = self.sender, self.rpline, self.ufline
        e[b"EXT"] = self.ext
        e[b"EXT2"], e[b"EXT3"], e[b"EXT4"] = ext_parts(self.ext)
        e[b"HOST2"], e[b"HOST3"], e[b"HOST4"] = host_parts(self.host)

    def new_sender(self) -> bytes:
        """NEWSENDER: <local>-owner@host (VERP form with -owner-default) or the sender."""
        if self.sender in (b"", b"#@[]"):
            return self.sender
        base = b".qmail" + self.dash + dotqmail.safe_ext(self.ext)
        if not dotqmail.exists(base + b"-owner"):
            return self.sender
        if dotqmail.exists(base + b"-owner-default"):
            return self.local + b"-owner-@" + self.host + b"-@[]"
        return self.local + b"-owner@" + self.host

    def commands(self) -> tuple[bytes, bool]:
        """The dot-qmail text to follow and whether it starts forward-only."""
        found = dotqmail.find(self.dash, self.ext)
        if found is None and self.dash:
            raise Exit(100, "Sorry, no mailbox here by that name. (#5.1.1)")
        if found is not None and found.default is not None:
            self.env[b"DEFAULT"] = found.default
        self.env[b"NEWSENDER"] = self.new_sender()
        text = found.read() if found is not None else b""
        if not text:
            return self.aliasempty, False
        return text, bool(found and found.forward_only)

    def run(self) -> None:
        """Follow every line, then forward."""
        text, forward_only = self.commands()
        for i, line in enumerate(dotqmail.lines(text)):
            kind, arg = dotqmail.classify(line)
            if kind == dotqmail.BLANK and i == 0:
                raise Exit(111, "Uh-oh: first line of .qmail file is blank. (#4.2.1)")
            if kind in (dotqmail.MAILDIR, dotqmail.MBOX):
                self.files += 1
                if forward_only:
                    raise Exit(111, "Uh-oh: .qmail has file delivery but has x bit set. (#4.7.0)")
                self.deliver_file(kind, arg)
            elif kind == dotqmail.PROGRAM:
                self.programs += 1
                if forward_only:
                    raise Exit(111, "Uh-oh: .qmail has prog delivery but has x bit set. (#4.7.0)")
                if self.doit:
                    self.program(arg)
                else:
                    fdio.write_quietly(1, b"program " + arg + b"\n")
            elif kind == dotqmail.LIST:
                forward_only = True
            elif kind == dotqmail.FORWARD:
                self.forwards += 1
                if self.doit:
                    self.recips.append(arg)
                else:
                    fdio.write_quietly(1, b"forward " + arg + b"\n")
            if self.stop:
                break
        if self.recips and self.doit:
            self.forward()

    def deliver_file(self, kind: str, path: bytes) -> None:
        """A maildir or mbox line."""
        if not self.doit:
            fdio.write_quietly(1, kind.encode() + b" " + path + b"\n")
            return
        rewind()
        try:
            if kind == dotqmail.MAILDIR:
                self.maildir(path)
            else:
                mbox.deliver(path, self.ufline + self.rpline + self.dtline, 0)
        except TempFail as e:
            raise Exit(111, e.text)

    def maildir(self, path: bytes) -> None:
        """Maildir delivery under a 24 h alarm."""
        def on_alarm(signum: int, frame: object) -> None:
            raise Exit(111, "Timeout on maildir delivery. (#4.3.0)")
        old = signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(MAILDIR_ALARM)
        try:
            maildir.deliver(path, self.rpline + self.dtline, 0)
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)

    def program(self, command: bytes) -> None:
        """Run ``/bin/sh -c command`` (one of our programs: warm) with the message on fd 0; map its exit code."""
        from qpy import shim   # only runs with a program line pay for it
        rewind()
        env = {**os.environb, **self.env}
        try:
            pid = shim.spawn_command(command, env)
            if pid is None:
                pid = os.posix_spawn("/bin/sh", [b"/bin/sh", b"-c", command], env,
                                     setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
        except OSError as e:
            raise Exit(111, f"Unable to run /bin/sh: {errstr.text(e)}. (#4.3.0)")
        wstat = fdio.wait_status(pid)
        if os.WIFSIGNALED(wstat):
            raise Exit(111, "Aack, child crashed. (#4.3.0)")
        code = os.WEXITSTATUS(wstat)
        if code in PERM_PROGRAM:
            raise Exit(100, b"")
        if code == 99:
            self.stop = True
        elif code != 0:
            raise Exit(111, b"")

    def forward(self) -> None:
        """Queue the message once for every forward, Delivered-To prepended."""
        from qpy import qmailq, submit   # only runs that forward pay for it
        rewind()
        try:
            job = qmailq.start(submit.FORWARD)      # SRS and ARC, never a DKIM signature
        except OSError as e:
            raise Exit(111, f"Unable to fork: {errstr.text(e)}. (#4.3.0)")
        self.qp = job.pid
        job.put(self.dtline)
        while True:
            try:
                chunk = os.read(0, CHUNK)
            except OSError:
                job.error = True
                break
            if not chunk:
                break
            job.put(chunk)
        result = job.close(self.env[b"NEWSENDER"], self.recips)
        if result:
            raise Exit(100 if result[0] == "D" else 111,
                       "Unable to forward message: " + result[1:] + ".")

    def counts(self) -> bytes:
        """``did f+w+p`` and, after a forward, ``qp <pid>``."""
        out = b"did %d+%d+%d\n" % (self.files, self.forwards, self.programs)
        if self.qp:
            out += b"qp %d\n" % self.qp
        return out


def parse_args(argv: list[bytes]) -> tuple[bool, list[bytes]]:
    """getopt "nN": (doit, the eight positional arguments); Exit(100) on misuse."""
    doit = True
    i = 0
    while i < len(argv) and argv[i].startswith(b"-") and argv[i] != b"-":
        arg = argv[i]
        i += 1
        if arg == b"--":
            break
        for ch in arg[1:]:
            if ch == 0x6E:
                doit = False
            elif ch == 0x4E:
                doit = True
            else:
                raise Exit(100, USAGE)
    args = argv[i:]
    if len(args) != 8 or not args[1].startswith(b"/"):
        raise Exit(100, USAGE)
    return doit, args


def expand_default(defaultdelivery: bytes, user: bytes) -> bytes:
    """``$USER`` in defaultdelivery → the user (qpy: ``/var/spool/mail/$USER`` works).

    Only a user name that cannot name another directory is substituted.
    """
    if b"$USER" not in defaultdelivery:
        return defaultdelivery
    if not user or b"/" in user or user in (b".", b"..") or b"\n" in user:
        raise Exit(111, b"Unable to expand $USER in the default delivery. (#4.3.0)")
    return defaultdelivery.replace(b"$USER", user)


def deliver(argv: list[bytes]) -> int:
    """The whole run; returns the exit code, writing reports to fds 1 and 2."""
    doit, args = parse_args(argv)
    args[7] = expand_default(args[7], args[0])
    try:
        os.chdir(args[1])
    except OSError as e:
        raise Exit(111, b"Unable to switch to " + args[1] + b": " + errstr.text(e).encode()
                   + b". (#4.3.0)")
    check_home(doit)
    job = Local(args, doit)
    job.set_env()
    if doit:
        check_loop(job.dtline)
    try:
        job.run()
    except TempFail as e:
        raise Exit(111, e.text)
    fdio.write_quietly(1, job.counts())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Deliver; render failures as one line on fd 2 and the exit code."""
    os.umask(0o077)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    # The message being delivered came from somewhere: a program here that queues it
    # again gets no DKIM signature by inheritance (qpy.submit; qmail-inject asks anew).
    os.environb.pop(b"DKIMSIGN", None)
    args = [os.fsencode(a) for a in (sys.argv[1:] if argv is None else argv)]
    try:
        return deliver(args)
    except Exit as e:
        if e.text:
            fdio.write_quietly(2, e.data + b"\n")
        return e.code
    except MemoryError:
        fdio.write_quietly(2, b"Out of memory. (#4.3.0)\n")
        return 111
    except Exception as e:   # anything unexpected is temporary: the message stays queued
        fdio.write_quietly(2, f"Temporary failure in qmail-local: {type(e).__name__}. (#4.3.0)\n"
                           .encode())
        return 111
