"""qmail-showctl - explain the instance's compiled-in settings and control files.

SYNOPSIS  qmail-showctl [--readers]
RUNS AS   anyone who can read control/.
PRINTS    qmail-showctl's text: home, user-ext delimiter, paternalism, silent concurrency
          limit, split, the account uids and gids (in single-user mode all are the
          invoking user's), then for each control file its value or ``(Default.) …``, and
          ``I have no idea what this file does.`` for files qpy.controlfiles does not
          declare.  The paragraphs, their order, sentences and defaults come from
          qpy.controlfiles: qmail's list, then qpy's own (nameservers, rcptcheck,
          checkpassword, servercert.pem and srs_secrets: presence only).
          ``--readers`` adds a ``read by …`` line after each paragraph.
EXIT      0; 111 if QMAILHOME or control/ cannot be reached (an ``Oops!`` line on stdout).
"""
from __future__ import annotations

import os
import sys
from dataclasses import replace

import click

from qpy import auto, controlfiles, prot, scan
from qpy.controlfiles import ControlFile
from qpy.programs import options

OOPS = "Oops! Trouble reading this file.\n"
# morercpthosts without rcpthosts: qmail-showctl's own sentences
NO_RCPTHOSTS = "No rcpthosts; morercpthosts is irrelevant."
NO_RCPTHOSTS_LINE = "No rcpthosts; doesn't matter that morercpthosts has {}."


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
    """Writes qmail-showctl's paragraphs from qpy.controlfiles; cwd is control/."""

    def __init__(self, out, readers: bool) -> None:
        self.out = out
        self.readers = readers
        self.me = self.line("me")
        self.found: dict[str, int] = {}    # list → 1 present, 0 missing, -1 unreadable

    def line(self, name: str) -> bytes | None:
        data = _read(name)
        if data is None:
            return None
        lines = _lines(data)
        return lines[0] if lines else b""

    def head(self, name: str) -> None:
        self.out.write(f"\n{name}: ")

    def tail(self, f: ControlFile) -> None:
        if self.readers:
            self.out.write(f"  (read by {', '.join(f.readers)})\n")

    def do_int(self, f: ControlFile) -> None:
        self.head(f.name)
        try:
            value = self.line(f.name)
        except OSError:
            self.out.write(OOPS)
            return
        digits = scan.digits(value or b"")
        if not digits:
            self.out.write(f"(Default.) {f.shown(str(f.default))}\n")
        else:
            self.out.write(f"{f.shown(str(int(digits)))}\n")
        self.tail(f)

    def do_str(self, f: ControlFile) -> None:
        self.head(f.name)
        try:
            value = self.line(f.name)
        except OSError:
            self.out.write(OOPS)
            return
        if value is not None:
            self.out.write(f"{f.shown(safe(value))}\n")
        elif f.me and self.me is not None:
            self.out.write(f"(Default.) {f.shown(safe(self.me))}\n")
        elif f.absent is not None:
            self.out.write(f"(Default.) {f.absent}\n")
        else:   # with no me either, qmail-showctl shows a "default me" file's own name
            literal = f.default if isinstance(f.default, bytes) else b""
            self.out.write(f"(Default.) {f.shown(f.name if f.me else safe(literal))}\n")
        self.tail(f)

    def do_lst(self, f: ControlFile) -> None:
        self.head(f.name)
        try:
            data = _read(f.name)
        except OSError:
            self.out.write(OOPS)
            self.found[f.name] = -1
            return
        if data is None:
            self.out.write(f"(Default.) {f.absent}\n")
            self.found[f.name] = 0
        else:
            self.out.write("\n")
            for line in _lines(data):
                if line and not line.startswith(b"#"):
                    self.out.write(f"{f.shown(safe(line))}\n")
            self.found[f.name] = 1
        self.tail(f)

    def do_present(self, f: ControlFile) -> None:
        self.head(f.name)
        self.out.write(f"{f.show}\n" if os.path.exists(f.name) else f"(Default.) {f.absent}\n")
        self.tail(f)

    def do_morercpthosts(self, f: ControlFile) -> None:
        """A list, but its sentences depend on whether rcpthosts exists."""
        self.do_lst(f if self.found.get("rcpthosts") else
                    replace(f, show=NO_RCPTHOSTS_LINE, absent=NO_RCPTHOSTS))

    def do_morercpthosts_cdb(self, f: ControlFile) -> None:
        self.head(f.name)
        self.out.write(morercpthosts_cdb(f))
        self.tail(f)


# how a control is shown: by its name if listed here, else by its kind
SPECIAL = {"morercpthosts": Show.do_morercpthosts, "morercpthosts.cdb": Show.do_morercpthosts_cdb}
BY_KIND = {"int": Show.do_int, "line": Show.do_str, "list": Show.do_lst, "map": Show.do_lst,
           "cdb": Show.do_present, "pem": Show.do_present, "secret": Show.do_present,
           "dir": Show.do_present}


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
    for f in controlfiles.FILES:
        if f.show is not None:       # declared but not described: neither shown nor unknown
            SPECIAL.get(f.name, BY_KIND[f.kind])(s, f)
    for name in sorted(names):
        if name not in controlfiles.BY_NAME:
            out.write(f"\n{name}: I have no idea what this file does.\n")
    return 0


def morercpthosts_cdb(f: ControlFile) -> str:
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
            return f"(Default.) {f.absent}\n"
        return "Oops! morercpthosts.cdb exists but morercpthosts doesn't.\n"
    if cdb is None:
        return "Oops! morercpthosts exists but morercpthosts.cdb doesn't.\n"
    if src.st_mtime > cdb.st_mtime:
        return "Oops! morercpthosts.cdb is older than morercpthosts.\n"
    return f"{f.show}\n"


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
