"""sendmail - the sendmail command line, handed to qmail-inject, qmail-qread or qmail-smtpd.

SYNOPSIS  sendmail [-t] [-f|-r sender] [-F name] [-b mode] [-q[x]] [-I] [other flags] [--] [recip ...]
          mailq (argv0) = sendmail -bp;  newaliases (argv0) = sendmail -bi
FLAGS     every flag Postfix's sendmail(1) documents, plus qmail's -E… and -J…:
          with an argument (attached or the next word): -A -B -C -F -L -N -O -R -V -X -b -e
          -f -h -o -p -r; without: -G -I -U -c -i -m -n -t -v -x; -q, -E and -J take the
          rest of their word.
RUNS AS   the user who sends.  chdir QMAILHOME first.
DOES      -t: ``qmail-inject -H`` (header and argument recipients), else ``qmail-inject -a``;
          -f s or -r s: ``-f s`` plus QMAILUSER/QMAILHOST from s (and unsets QMAILNAME,
          MAILNAME, NAME, QMAILHOST, MAILHOST first); -F n: MAILNAME=n.  No recipients:
          qmail-inject refuses (exit 100) and nothing is queued.
          -bm (the default): queue the message on stdin.
          -bp or argv0 mailq: run qmail-qread.  -bs: run qmail-smtpd on stdin/stdout; when
          PROTO is unset it sets RELAYCLIENT="", DATABYTES=0, PROTO=TCP, TCPLOCALIP and
          TCPREMOTEIP 127.0.0.1, TCPLOCALHOST and TCPREMOTEHOST localhost,
          TCPREMOTEINFO=sendmail-bs.  -bi, -I or argv0 newaliases: run newaliases (qmail's
          sendmail refuses this with exit 100; qpy compiles /etc/aliases instead).
          -bt: for each argument, ``addr: local|remote <address>`` on stdout: where it goes
          after qmail-inject's completion and qmail-send's rewriting (locals,
          percenthack, virtualdomains).  -bv: ``addr: deliverable``, ``addr: deliverable
          (remote)`` or ``addr: undeliverable: no mailbox here by that name`` (qpy.rcptcheck's
          answer for the completed address).  -bd -bl -bh -bH: nothing (the daemons run
          under a supervisor or ``qpy run``).
          -q, -qf, -qR…, -qI… (and any -q<x> but an interval): send ALRM to the running
          qmail-send (the holder of queue/lock/sendmutex): every queued message is retried
          now; the message on stdin is not read.  -q<digits…> (an interval) is ignored.
IGNORES   -A -B -C -G -L -O -U -X -c -e -h -i -m -n -o (-oi, -oem, -oA…, -o7, -o8 …) -p -v
          -x -E… -J…; -N dsn, -R ret, -V envid (DSN requests: ignored until bounces are
          RFC 3464 reports).
EXIT      that of the program it runs; -bt and -bv 1 if an address does not parse, -bv 1
          if one is undeliverable, else 0; -q 111 if qmail-send is not running; 100 usage (a missing argument, an unknown flag or
          -b mode); 111 if it cannot run the program or read the control files.
"""
from __future__ import annotations

import os
import signal
import sys

from qpy import auto, header, instance, rcptcheck, rewrite, warm
from qpy.errors import ControlError, Exit

NAME = "sendmail"
USAGE = "sendmail [ -t ] [ -fsender ] [ -Fname ] [ -bp ] [ -bs ] [ arg ... ]"
WITH_ARG = "ABCFLNORVXbefhopr"
WITHOUT_ARG = "GIUcimntvx"
REST_OF_WORD = "EJq"            # their argument is the rest of the word, maybe empty
SMTPD_ENV = {"RELAYCLIENT": "", "DATABYTES": "0", "PROTO": "TCP", "TCPLOCALIP": "127.0.0.1",
             "TCPLOCALHOST": "localhost", "TCPREMOTEIP": "127.0.0.1",
             "TCPREMOTEHOST": "localhost", "TCPREMOTEINFO": "sendmail-bs"}
UNDELIVERABLE = b"undeliverable: no mailbox here by that name"


def getopt(argv: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """getopt for "A:B:C:F:GIL:N:O:R:UV:X:b:ce:f:h:imno:p:r:tvx" plus -q, -E and -J,
    which swallow the rest of their word.

    Raises Exit(100) with the usage line.
    """
    opts: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            i += 1
            break
        if not word.startswith("-") or word == "-":
            break
        pos = 1
        while pos < len(word):
            ch = word[pos]
            pos += 1
            if ch in WITH_ARG:
                if pos < len(word):
                    value = word[pos:]
                else:
                    i += 1
                    if i >= len(argv):
                        raise Exit(100, "usage: " + USAGE)     # its argument is missing
                    value = argv[i]
                opts.append((ch, value))
                break
            if ch in REST_OF_WORD:
                opts.append((ch, word[pos:]))
                break
            if ch not in WITHOUT_ARG:
                raise Exit(100, "usage: " + USAGE)         # unknown option
            opts.append((ch, ""))
        i += 1
    return opts, argv[i:]


def set_sender_env(sender: str) -> None:
    """-f: the From user and host become the sender's (do_sender)."""
    for name in ("QMAILNAME", "MAILNAME", "NAME", "QMAILHOST", "MAILHOST"):
        os.environ.pop(name, None)
    user, at, host = sender.rpartition("@")
    if not at:
        os.environ["QMAILUSER"] = sender
        return
    os.environ["QMAILHOST"] = host
    os.environ["QMAILUSER"] = user


def run(program: str, argv: list[str]) -> int:
    """Run one of our programs in this process (exec when QPY_EXEC is set)."""
    try:
        return warm.run_or_exec(program, argv)
    except (OSError, ImportError):
        sys.stderr.write(f"sendmail: fatal: unable to run {program}\n")
        return 111


def smtpd(_args: list[str]) -> int:
    """-bs: an SMTP session on stdin/stdout from a trusted local client."""
    if "PROTO" not in os.environ:
        os.environ.update(SMTPD_ENV)
    return run("qmail-smtpd", [])


def qread(_args: list[str]) -> int:
    """-bp, mailq: list the queue."""
    return run("qmail-qread", [])


def newaliases(_args: list[str]) -> int:
    """-bi, -I, newaliases: compile the aliases file."""
    return run("newaliases", [])


def nothing(_args: list[str]) -> int:
    """-bd -bl -bh -bH: the daemons are a supervisor's business; no host status database."""
    return 0


def retry_queue(_args: list[str]) -> int:
    """-q: ALRM to the running qmail-send, which retries every queued message now."""
    pid = instance.send_pid(".")
    if pid is None:
        raise Exit(111, "qmail-send is not running")
    try:
        os.kill(pid, signal.SIGALRM)
    except ProcessLookupError:
        raise Exit(111, "qmail-send is not running")
    except PermissionError:
        raise Exit(111, "unable to signal qmail-send: permission denied")
    return 0


def routing() -> tuple[header.Rewriter, rewrite.Rewriter]:
    """qmail-inject's completion and qmail-send's rewriting, from the control files."""
    try:
        return header.Rewriter.from_control(), rewrite.Rewriter.from_control()
    except ControlError as e:
        raise Exit(111, e.text)
    except header.ParseError as e:
        raise Exit(111, b"unable to parse this control value: " + e.line)


def report(lines: list[bytes]) -> None:
    """Write the -bt/-bv answers."""
    sys.stdout.buffer.write(b"".join(lines))
    sys.stdout.buffer.flush()


def address_test(args: list[str]) -> int:
    """-bt: ``addr: local|remote <address>`` for each argument; 1 if one does not parse."""
    complete, route = routing()
    lines, failed = [], False
    for arg in map(os.fsencode, args):
        try:
            channel, address = route.rewrite(complete.address(arg))
        except header.ParseError:
            lines.append(arg + b": unable to parse address\n")
            failed = True
            continue
        where = b"local" if channel == rewrite.LOCAL else b"remote"
        lines.append(arg + b": " + where + b" " + address + b"\n")
    report(lines)
    return 1 if failed else 0


def verify(args: list[str]) -> int:
    """-bv: would each argument be delivered?  1 if one would not (or does not parse)."""
    complete, route = routing()
    check = rcptcheck.RecipientCheck.from_control()
    lines, failed = [], False
    for arg in map(os.fsencode, args):
        try:
            address = complete.address(arg)
        except header.ParseError:
            lines.append(arg + b": unable to parse address\n")
            failed = True
            continue
        if route.rewrite(address)[0] == rewrite.REMOTE:
            answer = b"deliverable (remote)"
        elif check.check(address):
            answer = b"deliverable"
        else:
            answer, failed = UNDELIVERABLE, True
        lines.append(arg + b": " + answer + b"\n")
    report(lines)
    return 1 if failed else 0


MODES = {"p": qread, "s": smtpd, "i": newaliases, "t": address_test, "v": verify,
         "d": nothing, "l": nothing, "h": nothing, "H": nothing, "q": retry_queue}
PROG_MODES = {"mailq": "p", "newaliases": "i"}


def enqueue(args: list[str], from_header: bool, sender: str | None) -> int:
    """-bm: hand the message on stdin to qmail-inject."""
    inject = ["-H" if from_header else "-a"]
    if sender is not None:
        inject += ["-f", sender]
        set_sender_env(sender)
    return run("qmail-inject", inject + ["--"] + args)


def sendmail(argv: list[str], prog: str) -> int:
    """Translate the sendmail command line; return the exit code (Exit on failure)."""
    try:
        os.chdir(auto.home())
    except OSError:
        raise Exit(111, "unable to switch to qmail home directory")
    opts, args = getopt(argv)
    from_header, sender, mode = False, None, PROG_MODES.get(prog, "m")
    for opt, value in opts:
        if opt == "t":
            from_header = True
        elif opt in "fr":
            sender = value
        elif opt == "F":
            os.environ["MAILNAME"] = value
        elif opt == "I":
            mode = "i"
        elif opt == "b":
            if value[:1] != "m" and value[:1] not in MODES:
                raise Exit(100, "usage: " + USAGE)       # an unknown mode
            mode = value[:1]
        elif opt == "q" and not value[:1].isdigit():     # -q<digits>: an interval, ignored
            mode = "q"
    if mode != "m":
        return MODES[mode](args)
    return enqueue(args, from_header, sender)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run sendmail; ``prog`` (default: the basename of sys.argv[0]) selects mailq/newaliases."""
    if prog is None:
        prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else NAME
    try:
        return sendmail(sys.argv[1:] if argv is None else argv, prog)
    except Exit as e:
        text = e.data if e.data.startswith(b"usage:") else b"fatal: " + e.data
        sys.stderr.buffer.write(NAME.encode() + b": " + text + b"\n")
        sys.stderr.buffer.flush()
        return e.code
