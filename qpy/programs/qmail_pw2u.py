"""qmail-pw2u - turn a passwd file into users/assign lines.

SYNOPSIS  qmail-pw2u [-/ohHuUC] [-c char] < passwd > assign
RUNS AS   the admin (root).  Reads QMAILHOME/users/include, exclude, mailnames, subusers,
          append when they exist.
DOES      for each ``user:pw:uid:gid:gecos:home:shell`` line with uid ≠ 0, no uppercase
          (unless -u), allowed by include/exclude, and (-o, default) a home that exists and
          belongs to uid (-h: a missing home is fatal; -H: no home checks), prints
          ``=name:user:uid:gid:home:::`` and ``+name-:user:uid:gid:home:-::`` for each of its
          mail names (users/mailnames ``user:name1:name2…``, else the user name); the alias
          user gives ``+:alias:uid:gid:home:-::``.  Then users/subusers lines
          ``sub:user:pre:`` as ``=sub:…:-:pre:`` and ``+sub-:…:-:pre-:``, users/append
          verbatim, and ``.``.  -c X uses X as the extension delimiter, -C none; -/ uses
          ``-/`` instead of ``-`` as the dash.  Options use qmail's getopt letters (not
          click: ``-h`` is an option here, not help).
EXIT      0; 100 usage; 111 (``qmail-pw2u: fatal: …``) for a missing alias user, an
          unknown subuser owner, unreadable files or (-h) a missing home.
"""
from __future__ import annotations

import getopt
import os
import sys
from typing import BinaryIO

from qpy import auto, scan
from qpy.errors import Exit

USAGE = "qmail-pw2u [ -/ohHuUC ] [ -cchar ]"


def read_list(path: str) -> list[bytes] | None:
    """A control-style list (trailing blanks stripped, empty and # lines skipped), None if missing."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        raise Exit(111, "unable to read controls")
    lines = [line.rstrip(b" \t\r") for line in data.split(b"\n")]
    return [line for line in lines if line and not line.startswith(b"#")]


class Options:
    """Parsed command line."""

    def __init__(self, argv: list[str]) -> None:
        self.dash = b"-:"
        self.home = 2          # 2 skip missing/foreign home, 1 die on missing, 0 no checks
        self.noupper = True
        self.brk = auto.BREAK
        opts, _ = getopt.getopt(argv, "/ohHuUc:C")
        for opt, value in opts:
            letter = opt[1]
            if letter == "/":
                self.dash = b"-/:"
            elif letter in "ohH":
                self.home = {"o": 2, "h": 1, "H": 0}[letter]
            elif letter in "uU":
                self.noupper = letter == "U"
            elif letter == "c":
                self.brk = os.fsencode(value)[:1]
            else:
                self.brk = b""


class Pw2u:
    """State across the passwd lines."""

    def __init__(self, opts: Options, out: BinaryIO) -> None:
        self.o = opts
        self.out = out
        self.include = _set(read_list("users/include"))
        self.exclude = _set(read_list("users/exclude"))
        mailnames = read_list("users/mailnames")
        self.mailnames: dict[bytes, bytes] | None = None
        if mailnames is not None:
            self.mailnames = {}
            for line in mailnames:
                key, _, rest = line.partition(b":")
                self.mailnames[key.lower()] = rest
        self.users: dict[bytes, bytes] = {}   # user → ":user:uid:gid:home:"
        self.alias = False

    def account(self, line: bytes) -> None:
        """One passwd line (doaccount)."""
        if b"\0" in line:
            return
        fields = line.split(b":")
        if len(fields) < 7:
            return
        user, uidstr, gidstr, home = fields[0], fields[2], fields[3], fields[5]
        uid = scan.ulong(uidstr)
        if not uid:
            return
        if self.o.noupper and user != user.lower():
            return
        if self.include is not None and user.lower() not in self.include:
            return
        if self.exclude is not None and user.lower() in self.exclude:
            return
        if self.o.home:
            try:
                st = os.stat(home)
            except FileNotFoundError:
                if self.o.home == 1:
                    raise Exit(111, "unable to stat " + os.fsdecode(home))
                return
            except OSError:
                raise Exit(111, "unable to stat " + os.fsdecode(home))
            if st.st_uid != uid:
                return
        uugh = b":" + user + b":" + uidstr + b":" + gidstr + b":" + home + b":"
        self.users[user.lower()] = uugh
        if user == auto.ALIAS.encode():
            self.out.write(b"+" + uugh + self.o.dash + b":\n")
            self.alias = True
        names = None
        if self.mailnames is not None:
            names = self.mailnames.get(user.lower())
        if names is None:
            names = user
        for name in names.split(b":"):
            if not name:
                continue
            self.out.write(b"=" + name + uugh + b"::\n")
            if self.o.brk:
                self.out.write(b"+" + name + self.o.brk + uugh + self.o.dash + b":\n")

    def subuser(self, line: bytes) -> None:
        """One users/subusers line ``sub:user:pre:``."""
        fields = line.split(b":")
        if len(fields) < 4:
            return
        sub, user, pre = fields[0], fields[1], fields[2]
        uugh = self.users.get(user.lower())
        if uugh is None:
            raise Exit(111, "unable to find " + os.fsdecode(user) + " user for subuser")
        self.out.write(b"=" + sub + uugh + self.o.dash + pre + b":\n")
        if self.o.brk:
            self.out.write(b"+" + sub + self.o.brk + uugh + self.o.dash + pre + b"-:\n")


def _set(lines: list[bytes] | None) -> set[bytes] | None:
    return None if lines is None else {line.lower() for line in lines}


def _read_lines(path: str) -> list[bytes] | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        raise Exit(111, "unable to read controls")
    return data.splitlines(keepends=True)


def pw2u(opts: Options, stdin: BinaryIO, out: BinaryIO) -> None:
    """Convert; raise Exit."""
    try:
        os.chdir(auto.home())
    except OSError:
        raise Exit(111, "unable to chdir")
    p = Pw2u(opts, out)
    try:
        data = stdin.read()
    except OSError:
        raise Exit(111, "unable to read input")
    for line in data.split(b"\n"):
        p.account(line)
    if not p.alias:
        raise Exit(111, f"unable to find {auto.ALIAS} user")
    for line in _read_lines("users/subusers") or []:
        p.subuser(line.rstrip(b"\n"))
    for line in _read_lines("users/append") or []:
        out.write(line)
    out.write(b".\n")


def main(argv: list[str] | None = None) -> int:
    """Read passwd on stdin, print users/assign on stdout."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        opts = Options(argv)
    except getopt.GetoptError:
        sys.stderr.write(f"qmail-pw2u: usage: {USAGE}\n")
        return 100
    out = sys.stdout.buffer
    try:
        pw2u(opts, sys.stdin.buffer, out)
        out.flush()
    except Exit as e:
        out.flush()
        sys.stderr.write(f"qmail-pw2u: fatal: {e.text}\n")
        return e.code
    except OSError:
        sys.stderr.write("qmail-pw2u: fatal: unable to write output\n")
        return 111
    return 0
