"""sendmail - the sendmail command line, handed to qmail-inject, qmail-qread or qmail-smtpd.

SYNOPSIS  sendmail [-t] [-f sender] [-F name] [-bp | -bs | -bi | -bm] [ignored flags] [--] [recip ...]
          mailq (argv0) = sendmail -bp;  newaliases (argv0) = sendmail -bi
RUNS AS   the user who sends.  chdir QMAILHOME first.
DOES      -t: ``qmail-inject -H`` (header and argument recipients), else ``qmail-inject -a``;
          -f s: ``-f s`` plus QMAILUSER/QMAILHOST from s (and unsets QMAILNAME, MAILNAME,
          NAME, QMAILHOST, MAILHOST first); -F n: MAILNAME=n.
          -bp or argv0 mailq: run qmail-qread.  -bs: run qmail-smtpd on stdin/stdout; when
          PROTO is unset it sets RELAYCLIENT="", DATABYTES=0, PROTO=TCP, TCPLOCALIP and
          TCPREMOTEIP 127.0.0.1, TCPLOCALHOST and TCPREMOTEHOST localhost,
          TCPREMOTEINFO=sendmail-bs.  -bi or argv0 newaliases: run newaliases (qmail's
          sendmail refuses this with exit 100; qpy compiles /etc/aliases instead).
IGNORES   -v -i -x -m -e X -o X (-oi, -odb …) -B X -p X -E… -J… -bm.
EXIT      that of the program it runs; 100 usage; 111 if it cannot run it.
"""
from __future__ import annotations

import os
import sys

from qpy import auto, warm
from qpy.errors import Exit

NAME = "sendmail"
USAGE = "sendmail [ -t ] [ -fsender ] [ -Fname ] [ -bp ] [ -bs ] [ arg ... ]"
WITH_ARG = "efpoBFb"
WITHOUT_ARG = "vimtxEJ"
SMTPD_ENV = {"RELAYCLIENT": "", "DATABYTES": "0", "PROTO": "TCP", "TCPLOCALIP": "127.0.0.1",
             "TCPLOCALHOST": "localhost", "TCPREMOTEIP": "127.0.0.1",
             "TCPREMOTEHOST": "localhost", "TCPREMOTEINFO": "sendmail-bs"}


def getopt(argv: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """qmail's getopt for "vimte:f:p:o:B:F:EJxb:": -E and -J swallow the rest of their word.

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
            if ch not in WITHOUT_ARG:
                raise Exit(100, "usage: " + USAGE)         # unknown option
            opts.append((ch, ""))
            if ch in "EJ":
                break
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


def smtpd() -> int:
    """-bs: an SMTP session on stdin/stdout from a trusted local client."""
    if "PROTO" not in os.environ:
        os.environ.update(SMTPD_ENV)
    return run("qmail-smtpd", [])


def sendmail(argv: list[str], prog: str) -> int:
    """Translate the sendmail command line; return the exit code."""
    try:
        os.chdir(auto.home())
    except OSError:
        sys.stderr.write("sendmail: fatal: unable to switch to qmail home directory\n")
        return 111
    try:
        opts, args = getopt(argv)
    except Exit as e:
        sys.stderr.write(f"sendmail: {e.text}\n")
        return e.code
    header = False
    sender = None
    for opt, value in opts:
        if opt == "t":
            header = True
        elif opt == "f":
            sender = value
        elif opt == "F":
            os.environ["MAILNAME"] = value
        elif opt == "b":
            mode = value[:1]
            if mode == "p":
                return run("qmail-qread", [])
            if mode == "s":
                return smtpd()
            if mode == "i":
                return run("newaliases", [])
            if mode != "m":
                sys.stderr.write(f"sendmail: usage: {USAGE}\n")
                return 100
    if prog == "mailq":
        return run("qmail-qread", [])
    if prog == "newaliases":
        return run("newaliases", [])
    inject = ["-H" if header else "-a"]
    if sender is not None:
        inject += ["-f", sender]
        set_sender_env(sender)
    return run("qmail-inject", inject + ["--"] + args)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run sendmail; ``prog`` (default: the basename of sys.argv[0]) selects mailq/newaliases."""
    if prog is None:
        prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else NAME
    return sendmail(sys.argv[1:] if argv is None else argv, prog)
