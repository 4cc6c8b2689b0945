"""qmail-inject - fix up a message's header and queue it.

SYNOPSIS  qmail-inject [-nNaAhH] [-f sender] [recip ...]
RUNS AS   the user who sends; started per message (plain getopt, small imports).
READS     the message on fd 0; control/defaultdomain, defaulthost, plusdomain, idhost
          (each "default me", else the literal name), control/locals; $QMAILMFTFILE (a
          list of mailing-list addresses, read before the chdir to QMAILHOME).
WRITES    the message to qmail-queue (or to fd 1 with -n, preceded by Return-Path).
HEADER    qmail-header(5): address fields are parsed and completed (box → box@defaulthost,
          host → host.defaultdomain unless host is in locals (qpy: alice@localhost stays
          local), host+ → host.plusdomain, source routes dropped,
          missing commas inserted); Bcc, Resent-Bcc, Return-Path and Content-Length are
          removed; missing Date, Message-ID <YYYYMMDDhhmmss.PID.qmail@idhost>, From and
          "Cc: recipient list not shown: ;" are added, as Resent-* fields when any
          Resent- field is present; a leading "From " line becomes MBOX-Line:.
RECIPS    -a args only; -h header only (To Cc Bcc Apparently-To, or Resent-To/Cc/Bcc
          when resent); -A args, or the header when there are none (default); -H both.
SENDER    -f sender; else the first Return-Path address (unless QMAILINJECT has s);
          else $QMAILSUSER@$QMAILSHOST, defaulting to the From user and host.
ENV       QMAILUSER MAILUSER USER LOGNAME, QMAILHOST MAILHOST, QMAILNAME MAILNAME NAME,
          QMAILSUSER QMAILSHOST, QMAILINJECT letters c (comment-style From) s (ignore
          Return-Path) f (drop From) i (drop Message-ID) r (per-recipient VERP, sender
          …-@[]) m (per-message VERP, user-<time>.<pid>), QMAILDEFAULTDOMAIN,
          QMAILDEFAULTHOST, QMAILPLUSDOMAIN, QMAILIDHOST, QMAILQUEUE.
TRUSTS    nothing: every field is parsed; an unparsable sender field is fatal.
EXIT      0 queued (or printed); 100 usage, bad header, no recipients (nothing is
          queued) or permanent queue failure; 111 temporary failure.  One line ``qmail-inject: fatal: …`` on stderr.
"""
from __future__ import annotations

import getopt
import os
import signal
import sys
import time
from typing import BinaryIO

from qpy import addr, auto, control, header, qmailq, submit
from qpy.errors import ControlError, Exit
from qpy.header import ATOM, AT, COLON, COMMENT, LEFT, QUOTE, RIGHT, Token

NAME = "qmail-inject"
USAGE = "qmail-inject [ -nNaAhH ] [ -fsender ] [ recip ... ]"
CHUNK = 65536

# Recipient strategies.
ARGS, HEADER, BOTH, EITHER = "a", "h", "H", "A"


def _env(name: str) -> bytes | None:
    return os.environb.get(name.encode())


def _first_env(*names: str) -> bytes | None:
    for name in names:
        value = _env(name)
        if value is not None:
            return value
    return None


def _cant_parse(text: bytes) -> Exit:
    if not text.endswith(b"\n"):
        text += b"\n"
    return Exit(100, b"unable to parse this line:\n" + text)


def _parse(text: bytes) -> list[Token]:
    """Parse a line or die with qmail's "unable to parse this line"."""
    try:
        return header.parse(text)
    except header.ParseError:
        raise _cant_parse(text)


def read_mft(path: bytes | None) -> set[bytes] | None:
    """The QMAILMFTFILE addresses, lowercased; None when unset or missing."""
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        raise Exit(111, "read error")
    lines = [line.rstrip(b" \t\r") for line in data.split(b"\n")]
    return {line.lower() for line in lines if line and not line.startswith(b"#")}


class Settings:
    """Controls and environment, read once at start."""

    def __init__(self) -> None:
        flags = _env("QMAILINJECT") or b""
        self.namecomment = b"c" in flags
        self.deletesender = b"s" in flags
        self.deletefrom = b"f" in flags
        self.deletemessid = b"i" in flags
        self.hackrecip = b"r" in flags
        self.hackmess = b"m" in flags
        self.mailhost = _first_env("QMAILHOST", "MAILHOST")
        self.mailrhost = _env("QMAILSHOST") or self.mailhost
        self.mailuser = _first_env("QMAILUSER", "MAILUSER", "USER", "LOGNAME") or b"anonymous"
        self.mailruser = _env("QMAILSUSER") or self.mailuser
        self.fullname = _first_env("QMAILNAME", "MAILNAME", "NAME")
        self.mft = read_mft(_env("QMAILMFTFILE"))
        try:
            os.chdir(auto.home())
        except OSError:
            raise Exit(111, "internal bug")
        try:
            self.rewriter = header.Rewriter.from_control()
            self.idhost = _env("QMAILIDHOST") or control.read_line_me("idhost")
        except ControlError:
            raise Exit(111, "read error")
        except header.ParseError as e:
            raise _cant_parse(e.line)


class Injector:
    """One message's header state (qmail-inject.c's globals)."""

    def __init__(self, settings: Settings, start: float, pid: int) -> None:
        self.s = settings
        self.rw = settings.rewriter
        self.start = start
        self.pid = pid
        self.sender: bytes | None = None
        self.seen: set[int] = set()
        self.saved: list[bytes] = []
        self.recips: list[bytes] = []     # from the command line
        self.hr: list[bytes] = []         # To Cc Bcc Apparently-To
        self.hrr: list[bytes] = []        # Resent-To Resent-Cc Resent-Bcc
        self.tocc: list[bytes] = []       # To Cc (for Mail-Followup-To)
        self.resent = False

    # -- address callbacks (reversed tokens in, reversed tokens out)
    def _set_return(self, a: list[Token]) -> None:
        if self.sender is None:
            sender = header.address_of(a)
            self.sender = sender + b"-@[]" if self.s.hackrecip else sender

    def rw_return(self, a: list[Token]) -> list[Token]:
        a = self.rw.rewrite(a)
        self._set_return(a)
        return a

    def rw_sender(self, a: list[Token]) -> list[Token]:
        return self.rw.rewrite(a)

    def rw_hr(self, a: list[Token]) -> list[Token]:
        a = self.rw.rewrite(a)
        self.hr.append(header.address_of(a))
        return a

    def rw_hrr(self, a: list[Token]) -> list[Token]:
        a = self.rw.rewrite(a)
        self.hrr.append(header.address_of(a))
        return a

    def rw_tocc(self, a: list[Token]) -> list[Token]:
        a = self.rw.rewrite(a)
        self.hr.append(header.address_of(a))
        self.tocc.append(header.address_of(a))
        return a

    def set_sender(self, text: bytes) -> None:
        """-f: the envelope sender, completed like any address."""
        _parse(header.quote2(text))
        self.sender = self.rw.address(text)

    def add_recipient(self, text: bytes) -> None:
        """A command-line recipient."""
        try:
            self.recips.append(self.rw.address(text))
        except header.ParseError:
            raise Exit(100, b"unable to parse address: " + text + b"\n")

    def field(self, h: bytes) -> None:
        """Process one header field (doheaderfield)."""
        htype = header.known(h)
        if (self.s.deletefrom and htype == header.H_FROM
                or self.s.deletemessid and htype == header.H_MESSAGEID
                or self.s.deletesender and htype == header.H_RETURNPATH):
            return
        if htype:
            self.seen.add(htype)
        elif not header.valid(h):
            raise Exit(100, b"invalid header field: " + h)
        rw, mayfail = self._rewriter_for(htype)
        if rw is not None:
            toks = None
            try:
                toks = header.parse(h)
            except header.ParseError:
                if not mayfail:
                    raise _cant_parse(h)
            if toks is not None:
                new = header.addrlist(toks, rw)
                if new is None:
                    if not mayfail:
                        raise _cant_parse(h)
                else:
                    h = header.unparse(new)
        if htype in (header.H_BCC, header.H_R_BCC, header.H_RETURNPATH, header.H_CONTENTLENGTH):
            return
        self.saved.append(h)

    def _rewriter_for(self, htype: int):
        if htype in (header.H_TO, header.H_CC):
            return self.rw_tocc, True
        if htype in (header.H_BCC, header.H_APPARENTLYTO):
            return self.rw_hr, True
        if htype in (header.H_R_TO, header.H_R_CC, header.H_R_BCC):
            return self.rw_hrr, True
        if htype == header.H_RETURNPATH:
            return self.rw_return, False
        if htype in (header.H_SENDER, header.H_FROM, header.H_REPLYTO, header.H_RETURNRECEIPTTO,
                     header.H_ERRORSTO, header.H_R_SENDER, header.H_R_FROM, header.H_R_REPLYTO):
            return self.rw_sender, False
        return None, False

    # -- generated fields
    def _reformat(self, toks: list[Token], rw) -> bytes:
        """Print generated tokens, parse them again and rewrite them like an input field."""
        text = header.unparse(toks)
        new = header.addrlist(_parse(text), rw)
        if new is None:
            raise _cant_parse(text)
        return header.unparse(new)

    def default_from(self) -> bytes:
        """``From: "Name" <user@host>`` (or ``user@host (Name)`` with QMAILINJECT=c)."""
        s = self.s
        toks: list[Token] = [(ATOM, b"From"), (COLON, b"")]
        name = s.fullname
        if name is not None and not s.namecomment:
            toks += [(QUOTE, name), (LEFT, b"")]
        toks.append((QUOTE if addr.needs_quote(s.mailuser) else ATOM, s.mailuser))
        if s.mailhost is not None:
            toks += [(AT, b""), (ATOM, s.mailhost)]
        if name is not None and not s.namecomment:
            toks.append((RIGHT, b""))
        if name is not None and s.namecomment:
            toks.append((COMMENT, name))
        return self._reformat(toks, self.rw_sender)

    def default_return_path(self) -> None:
        """Set the sender from QMAILSUSER/QMAILSHOST (with the r and m VERP letters)."""
        user = self.s.mailruser
        if self.s.hackmess:
            user += b"-%d.%d" % (int(self.start), self.pid)
        if self.s.hackrecip:
            user += b"-"
        toks: list[Token] = [(ATOM, b"Return-Path"), (COLON, b""), (QUOTE, user)]
        if self.s.mailrhost is not None:
            toks += [(AT, b""), (ATOM, self.s.mailrhost)]
        self._reformat(toks, self.rw_return)

    def mail_followup_to(self) -> bytes:
        """Mail-Followup-To when a To/Cc address is a list in QMAILMFTFILE."""
        mft = self.s.mft
        if mft is None or header.H_MAILFOLLOWUPTO in self.seen:
            return b""
        if not any(a.lower() in mft for a in self.tocc):
            return b""
        return (b"Mail-Followup-To: " + b",\n  ".join(header.quote2(a) for a in reversed(self.tocc))
                + b"\n")

    def finish(self, printing: bool) -> bytes:
        """Everything before the saved fields (finishheader), then the saved fields."""
        seen = self.seen
        self.resent = bool(seen & {header.H_R_SENDER, header.H_R_FROM, header.H_R_REPLYTO,
                                   header.H_R_TO, header.H_R_CC, header.H_R_BCC, header.H_R_DATE,
                                   header.H_R_MESSAGEID})
        if self.sender is None:
            self.default_return_path()
        out = bytearray()
        if printing:
            out += b"Return-Path: <" + header.quote2(self.sender or b"") + b">\n"
        if self.resent:
            pre, (date, msgid, from_, to, cc) = b"Resent-", (
                header.H_R_DATE, header.H_R_MESSAGEID, header.H_R_FROM, header.H_R_TO, header.H_R_CC)
        else:
            pre, (date, msgid, from_, to, cc) = b"", (
                header.H_DATE, header.H_MESSAGEID, header.H_FROM, header.H_TO, header.H_CC)
        if date not in seen:
            out += pre + header.date_field(self.start)
        if msgid not in seen:
            out += pre + header.message_id_field(self.s.idhost, self.start, self.pid)
        if from_ not in seen:
            out += pre + self.default_from()
        if to not in seen and cc not in seen:
            out += pre + b"Cc: recipient list not shown: ;\n"
        if not self.resent:
            out += self.mail_followup_to()
        for h in self.saved:
            out += h
        return bytes(out)

    def recipients(self, strategy: str) -> list[bytes]:
        """The envelope recipients for the chosen strategy."""
        rcpts = list(self.recips)
        if strategy != ARGS:
            rcpts += self.hrr if self.resent else self.hr
        return rcpts


def parse_args(argv: list[str]) -> tuple[str, bool, str | None, list[str]]:
    """getopt "aAhHnNf:": (strategy, queue?, sender, recipients)."""
    try:
        opts, args = getopt.getopt(argv, "aAhHnNf:")
    except getopt.GetoptError:
        raise Exit(100, "usage: " + USAGE + "\n")
    strategy, queue, sender = EITHER, True, None
    for opt, value in opts:
        if opt in ("-a", "-A", "-h", "-H"):
            strategy = opt[1]
        elif opt == "-n":
            queue = False
        elif opt == "-N":
            queue = True
        else:
            sender = value
    if strategy == EITHER:
        strategy = ARGS if args else HEADER
    return strategy, queue, sender, args


def copy_body(stream: BinaryIO, start: bytes, put) -> None:
    """Pass the body through; a last line without ``\\n`` gets one."""
    last = start[-1:]
    if start:
        put(start)
    while True:
        chunk = stream.read(CHUNK)
        if not chunk:
            break
        put(chunk)
        last = chunk[-1:]
    if last not in (b"", b"\n"):
        put(b"\n")


def inject(argv: list[str], stdin: BinaryIO, stdout: BinaryIO) -> None:
    """Run qmail-inject; raise Exit on failure."""
    start = time.time()
    settings = Settings()
    strategy, queue, sender, args = parse_args(argv)
    inj = Injector(settings, start, os.getpid())
    if sender is not None:
        inj.set_sender(os.fsencode(sender))
    if strategy != HEADER:
        for a in args:
            inj.add_recipient(os.fsencode(a))
    try:
        fields, body = header.read_header(stdin)
    except OSError:
        raise Exit(111, "read error")
    for h in fields:
        inj.field(h)
    head = inj.finish(printing=not queue)
    if not queue:
        stdout.write(head)
        copy_body(stdin, body, stdout.write)
        stdout.flush()
        return
    rcpts = inj.recipients(strategy)
    if not rcpts:
        raise Exit(100, "no recipients")    # queued, it would vanish without a trace
    try:
        job = qmailq.start(submit.from_env() or submit.SIGN)   # a local user's new message
    except OSError:
        raise Exit(111, "unable to run qmail-queue")
    try:
        job.put(head)
        copy_body(stdin, body, job.put)
    except OSError:
        job.abort()
        raise Exit(111, "read error")
    result = job.close(inj.sender or b"", rcpts)
    if result:
        raise Exit(100 if result[0] == "D" else 111, result[1:] + "\n")


def main(argv: list[str] | None = None) -> int:
    """Fix the header of the message on stdin and queue it."""
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        inject(sys.argv[1:] if argv is None else argv, sys.stdin.buffer, sys.stdout.buffer)
    except Exit as e:
        text = e.data if e.data.endswith(b"\n") else e.data + b"\n"
        if not text.startswith(b"usage:"):
            text = b"fatal: " + text
        sys.stderr.buffer.write(NAME.encode() + b": " + text)
        sys.stderr.buffer.flush()
        return e.code
    except MemoryError:
        sys.stderr.buffer.write(b"qmail-inject: fatal: out of memory\n")
        return 111
    except OSError as e:
        sys.stderr.buffer.write(b"qmail-inject: fatal: " + os.fsencode(e.strerror or str(e)) + b"\n")
        try:   # stdout is gone (-n into a closed pipe): let the interpreter's last flush succeed
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        except OSError:
            pass
        return 111
    return 0
