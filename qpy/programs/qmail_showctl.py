"""qmail-showctl - explain the instance's compiled-in settings and control files.

SYNOPSIS  qmail-showctl [--readers]
RUNS AS   anyone who can read control/.
PRINTS    qmail-showctl's text: home, user-ext delimiter, paternalism, silent concurrency
          limit, split, the account uids and gids (in single-user mode all are the
          invoking user's), then for each control file its value or ``(Default.) …``, and
          ``I have no idea what this file does.`` for unknown files.  qpy's own controls
          (nameservers, rcptcheck, checkpassword, servercert.pem: presence only) follow
          qmail's list.
          ``--readers`` adds a ``read by …`` line after each known control.
EXIT      0; 111 if QMAILHOME or control/ cannot be reached (an ``Oops!`` line on stdout).
"""
from __future__ import annotations

import os
import sys

import click

from qpy import auto, prot
from qpy.programs import options

OOPS = "Oops! Trouble reading this file.\n"

# control → who reads it (control.md §1 and qpy's additions)
READERS = {
    "badmailfrom": "qmail-smtpd", "bouncefrom": "qmail-send", "bouncehost": "qmail-send",
    "concurrencylocal": "qmail-send", "concurrencyremote": "qmail-send",
    "databytes": "qmail-smtpd, qmail-qmtpd", "defaultdomain": "qmail-inject",
    "defaulthost": "qmail-inject", "doublebouncehost": "qmail-send",
    "doublebounceto": "qmail-send", "envnoathost": "qmail-send", "helohost": "qmail-remote",
    "idhost": "qmail-inject", "localiphost": "qmail-smtpd", "locals": "qmail-send",
    "me": "every program, as the default of the others", "morercpthosts": "qmail-newmrh",
    "morercpthosts.cdb": "qmail-smtpd, qmail-qmtpd", "percenthack": "qmail-send",
    "plusdomain": "qmail-inject", "qmqpservers": "qmail-qmqpc", "queuelifetime": "qmail-send",
    "rcpthosts": "qmail-smtpd, qmail-qmtpd", "smtpgreeting": "qmail-smtpd",
    "smtproutes": "qmail-remote", "timeoutconnect": "qmail-remote",
    "timeoutremote": "qmail-remote", "timeoutsmtpd": "qmail-smtpd",
    "virtualdomains": "qmail-send", "nameservers": "qmail-remote (qpy.resolver)",
    "rcptcheck": "qmail-smtpd", "checkpassword": "qmail-smtpd", "servercert.pem": "qmail-smtpd",
}


def safe(data: bytes) -> str:
    """Bytes outside 32..126 print as ``?``."""
    return bytes(ch if 32 <= ch <= 126 else 63 for ch in data).decode("ascii")


def _read(name: str) -> bytes | None:
    try:
        with open(name, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _lines(data: bytes) -> list[bytes]:
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line.rstrip(b" \t\r") for line in lines]


class Show:
    """Writes qmail-showctl's paragraphs; cwd is control/."""

    def __init__(self, out, readers: bool) -> None:
        self.out = out
        self.readers = readers
        self.me = self.line("me")

    def line(self, name: str) -> bytes | None:
        data = _read(name)
        if data is None:
            return None
        lines = _lines(data)
        return lines[0] if lines else b""

    def head(self, name: str) -> None:
        self.out.write(f"\n{name}: ")

    def tail(self, name: str) -> None:
        if self.readers and name in READERS:
            self.out.write(f"  (read by {READERS[name]})\n")

    def do_int(self, name: str, default: str, pre: str, post: str) -> None:
        self.head(name)
        try:
            value = self.line(name)
        except OSError:
            self.out.write(OOPS)
            return
        digits = b""
        for ch in value or b"":
            if not 48 <= ch <= 57:
                break
            digits += bytes([ch])
        if not digits:
            self.out.write(f"(Default.) {pre}{default}{post}.\n")
        else:
            self.out.write(f"{pre}{int(digits)}{post}.\n")
        self.tail(name)

    def do_str(self, name: str, flagme: bool, default: str, pre: str) -> None:
        self.head(name)
        try:
            value = self.line(name)
        except OSError:
            self.out.write(OOPS)
            return
        if value is None:
            self.out.write("(Default.) ")
            value = self.me if flagme and self.me is not None else default.encode()
        self.out.write(f"{pre}{safe(value)}.\n")
        self.tail(name)

    def do_lst(self, name: str, default: str, pre: str, post: str) -> int:
        self.head(name)
        try:
            data = _read(name)
        except OSError:
            self.out.write(OOPS)
            return -1
        if data is None:
            self.out.write(f"(Default.) {default}\n")
            self.tail(name)
            return 0
        self.out.write("\n")
        for line in _lines(data):
            if line and not line.startswith(b"#"):
                self.out.write(f"{pre}{safe(line)}{post}\n")
        self.tail(name)
        return 1


KNOWN = ("badmailfrom", "bouncefrom", "bouncehost", "concurrencylocal", "concurrencyremote",
         "databytes", "defaultdomain", "defaulthost", "doublebouncehost", "doublebounceto",
         "envnoathost", "helohost", "idhost", "localiphost", "locals", "me", "morercpthosts",
         "morercpthosts.cdb", "percenthack", "plusdomain", "qmqpservers", "queuelifetime",
         "rcpthosts", "smtpgreeting", "smtproutes", "timeoutconnect", "timeoutremote",
         "timeoutsmtpd", "virtualdomains", "nameservers", "rcptcheck", "checkpassword",
         "servercert.pem")


def ids() -> tuple[list[int], list[int]]:
    """uids of alias qmaild qmaill root qmailp qmailq qmailr qmails; gids of nofiles, qmail."""
    names = (auto.ALIAS, auto.QMAILD, auto.QMAILL, "root", auto.QMAILP, auto.QMAILQ, auto.QMAILR,
             auto.QMAILS)
    if not prot.privileged():
        return [os.getuid()] * len(names), [os.getgid()] * 2
    uids = []
    for name in names:
        acct = prot.lookup_user(name)
        uids.append(acct.uid if acct else -1)
    gids = [prot.lookup_group(g) for g in (auto.GROUP_NOFILES, auto.GROUP_QMAIL)]
    return uids, [g if g is not None else -1 for g in gids]


def show(out, readers: bool) -> int:
    """Print everything; return the exit code."""
    uids, gids = ids()
    out.write(f"qmail home directory: {auto.home()}.\n")
    out.write(f"user-ext delimiter: {auto.BREAK.decode()}.\n")
    out.write(f"paternalism (in decimal): {auto.PATTERN}.\n")
    out.write(f"silent concurrency limit: {auto.SPAWN_LIMIT}.\n")
    out.write(f"subdirectory split: {auto.SPLIT}.\n")
    out.write("user ids: " + ", ".join(map(str, uids)) + ".\n")
    out.write("group ids: " + ", ".join(map(str, gids)) + ".\n")
    try:
        os.chdir(auto.home())
    except OSError:
        out.write(f"Oops! Unable to chdir to {auto.home()}.\n")
        return 111
    try:
        os.chdir("control")
        names = os.listdir(".")
    except OSError:
        out.write("Oops! Unable to chdir to control.\n")
        return 111
    try:
        s = Show(out, readers)
    except OSError:
        out.write("Oops! Trouble reading control/me.")
        return 111
    s.do_lst("badmailfrom", "Any MAIL FROM is allowed.", "", " not accepted in MAIL FROM.")
    s.do_str("bouncefrom", False, "MAILER-DAEMON", "Bounce user name is ")
    s.do_str("bouncehost", True, "bouncehost", "Bounce host name is ")
    s.do_int("concurrencylocal", "10", "Local concurrency is ", "")
    s.do_int("concurrencyremote", "20", "Remote concurrency is ", "")
    s.do_int("databytes", "0", "SMTP DATA limit is ", " bytes")
    s.do_str("defaultdomain", True, "defaultdomain", "Default domain name is ")
    s.do_str("defaulthost", True, "defaulthost", "Default host name is ")
    s.do_str("doublebouncehost", True, "doublebouncehost", "2B recipient host: ")
    s.do_str("doublebounceto", False, "postmaster", "2B recipient user: ")
    s.do_str("envnoathost", True, "envnoathost", "Presumed domain name is ")
    s.do_str("helohost", True, "helohost", "SMTP client HELO host name is ")
    s.do_str("idhost", True, "idhost", "Message-ID host name is ")
    s.do_str("localiphost", True, "localiphost", "Local IP address becomes ")
    s.do_lst("locals", "Messages for me are delivered locally.", "Messages for ",
             " are delivered locally.")
    s.do_str("me", False, "undefined! Uh-oh", "My name is ")
    s.do_lst("percenthack", "The percent hack is not allowed.",
             "The percent hack is allowed for user%host@", ".")
    s.do_str("plusdomain", True, "plusdomain", "Plus domain name is ")
    s.do_lst("qmqpservers", "No QMQP servers.", "QMQP server: ", ".")
    s.do_int("queuelifetime", "604800", "Message lifetime in the queue is ", " seconds")
    if s.do_lst("rcpthosts", "SMTP clients may send messages to any recipient.",
                "SMTP clients may send messages to recipients at ", "."):
        s.do_lst("morercpthosts", "No effect.", "SMTP clients may send messages to recipients at ",
                 ".")
    else:
        s.do_lst("morercpthosts", "No rcpthosts; morercpthosts is irrelevant.",
                 "No rcpthosts; doesn't matter that morercpthosts has ", ".")
    out.write("\nmorercpthosts.cdb: ")
    out.write(morercpthosts_cdb())
    s.tail("morercpthosts.cdb")
    s.do_str("smtpgreeting", True, "smtpgreeting", "SMTP greeting: 220 ")
    s.do_lst("smtproutes", "No artificial SMTP routes.", "SMTP route: ", "")
    s.do_int("timeoutconnect", "60", "SMTP client connection timeout is ", " seconds")
    s.do_int("timeoutremote", "1200", "SMTP client data timeout is ", " seconds")
    s.do_int("timeoutsmtpd", "1200", "SMTP server data timeout is ", " seconds")
    s.do_lst("virtualdomains", "No virtual domains.", "Virtual domain: ", "")
    # qpy's own controls
    s.do_lst("nameservers", "Using the system resolver configuration.", "Name server: ", ".")
    s.do_int("rcptcheck", "0", "Unknown local recipients refused at RCPT time (1 = yes): ", "")
    s.do_str("checkpassword", False, "none", "SMTP AUTH checkpassword command: ")
    out.write("\nservercert.pem: ")
    out.write("STARTTLS certificate present.\n" if os.path.exists("servercert.pem")
              else "(Default.) No STARTTLS.\n")
    s.tail("servercert.pem")
    for name in sorted(names):
        if name not in KNOWN:
            out.write(f"\n{name}: I have no idea what this file does.\n")
    return 0


def morercpthosts_cdb() -> str:
    """The morercpthosts.cdb freshness paragraph."""
    try:
        src = os.stat("morercpthosts")
    except OSError:
        src = None
    try:
        cdb = os.stat("morercpthosts.cdb")
    except OSError:
        cdb = None
    if src is None:
        if cdb is None:
            return "(Default.) No effect.\n"
        return "Oops! morercpthosts.cdb exists but morercpthosts doesn't.\n"
    if cdb is None:
        return "Oops! morercpthosts exists but morercpthosts.cdb doesn't.\n"
    if src.st_mtime > cdb.st_mtime:
        return "Oops! morercpthosts.cdb is older than morercpthosts.\n"
    return "Modified recently enough; hopefully up to date.\n"


@click.command(context_settings=options.CONTEXT)
@click.option("--readers", "-r", is_flag=True, help="Also say which program reads each control.")
def cli(readers: bool) -> int:
    """Explain the compiled-in settings and every control file."""
    code = show(sys.stdout, readers)
    sys.stdout.flush()
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the click command; return its exit code."""
    return options.run(cli, "qmail-showctl", argv)
