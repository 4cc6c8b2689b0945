"""sendmail-style forwarding lists: /etc/aliases, :include: files and ~/.forward.

Parsing follows fastforward's newaliases and dot-forward: each line is read as RFC 822
tokens (``qpy.header``) from right to left; addresses are separated by commas (a space
between two words also separates them); ``<…>`` and comments are allowed; programs
(``|cmd``) and files (``/path``, ``/dir/`` for a maildir) are recognised when the
address has no ``@``; ``:include:/path`` names a list file.  Bare names get
``@defaulthost``, names ending in ``+`` get ``.plusdomain``, hosts without a dot get
``.defaultdomain`` unless they are in locals (control files of qmail-inject, default me).

The compiled cdb uses fastforward's records, so fastforward's tools can read it:
  ``:<target>`` → instructions, each ending in NUL: ``&addr`` forward, ``!cmd`` run cmd
  through preline, ``|cmd`` run cmd, ``/path`` or ``./path`` an include list; qpy adds
  ``>/path`` (file delivery: mbox, or maildir when it ends in ``/``).  A target is
  ``name@`` for a bare alias name (any local domain), else the address as written.
  ``?<list>`` → the owner address, from an ``owner-<list>`` alias.
Unlike fastforward (whose include instructions name ``setmaillist`` binaries), an
include instruction names the text file itself, read when mail arrives.
"""
from __future__ import annotations

from dataclasses import dataclass

from qpy import control, header
from qpy.errors import PermFail, TempFail
from qpy.header import AT, ATOM, COLON, COMMA, COMMENT, DOT, LEFT, LITERAL, QUOTE, RIGHT, SEMI

MAX_ADDRESS = 800      # newaliases refuses longer targets
MAX_FORWARD = 900      # fastforward ignores longer &addr instructions


class AliasError(TempFail):
    """The aliases file cannot be compiled (newaliases exits 111 on these, as fastforward's)."""


class AliasFormat(PermFail):
    """A permanent format problem (NUL bytes, over-long addresses: exit 100)."""


@dataclass(frozen=True)
class Qualifier:
    """Completes addresses without a full domain."""

    defaulthost: bytes
    defaultdomain: bytes
    plusdomain: bytes
    locals: frozenset[bytes] = frozenset()      # lowercase; a host here is not completed

    @classmethod
    def from_control(cls) -> "Qualifier":
        """defaulthost/defaultdomain/plusdomain, each defaulting to me (literal ``me``); locals.

        fastforward's fallbacks, not qmail-inject's declared ones: hence first_line.
        """
        me = control.me() or b"me"
        return cls(control.first_line("defaulthost") or me,
                   control.first_line("defaultdomain") or me, control.first_line("plusdomain") or me,
                   frozenset(d.lower() for d in control.read_list("locals") or ()))

    def full(self, address: bytes, has_at: bool) -> bytes:
        """The complete address (``user`` → ``user@defaulthost.defaultdomain``).

        As qmail-inject's completion: a host in locals stays as it is.
        """
        full = address if has_at else address + b"@"
        if full.endswith(b"@"):
            full += self.defaulthost
        if full.endswith(b"+"):
            full = full[:-1] + b"." + self.plusdomain
        host = full[full.rfind(b"@") + 1:]
        if b"." not in host and host.lower() not in self.locals:
            full += b"." + self.defaultdomain
        return full


@dataclass(frozen=True)
class Item:
    """One element of a line, left to right: kind is "address" or "include"."""

    kind: str
    text: bytes
    has_at: bool

    def is_program(self) -> bool:
        return self.kind == "address" and not self.has_at and self.text.startswith(b"|")

    def is_file(self) -> bool:
        return self.kind == "address" and not self.has_at and self.text.startswith(b"/")


def items(line: bytes) -> list[Item]:
    """Split one logical line into addresses and includes (left to right).

    Raises AliasError when the line does not parse.
    """
    try:
        toks = header.parse(line)
    except header.ParseError:
        raise AliasError(f"unable to parse this line: {_show(line)}")
    found: list[Item] = []
    cur: list[header.Token] = []

    def got(kind: str) -> None:
        toks_lr = list(reversed(cur))
        found.append(Item(kind, header.unquote(toks_lr), any(k == AT for k, _ in toks_lr)))
        cur.clear()

    wordok = True
    i = len(toks)
    while i > 0:
        i -= 1
        kind = toks[i][0]
        if kind in (SEMI, COMMENT):
            continue
        if kind == COLON:
            if i >= 2 and toks[i - 2][0] == COLON and toks[i - 1] == (ATOM, b"include"):
                got("include")
                i -= 2
            continue
        if kind == RIGHT:
            if cur:
                got("address")
            while i > 0 and toks[i - 1][0] != LEFT:
                i -= 1
                cur.append(toks[i])
            got("address")
            if i <= 0:
                raise AliasError(f"unable to parse this line: {_show(line)}")
            i -= 1
            while i > 0 and toks[i - 1][0] in (COMMENT, ATOM, QUOTE, AT, DOT):
                i -= 1
            wordok = False
            continue
        if kind in (ATOM, QUOTE, LITERAL):
            if not wordok and cur:
                got("address")
            wordok = False
            cur.append(toks[i])
            continue
        if kind == COMMA:
            if cur:
                got("address")
            wordok = True
            continue
        wordok = True
        cur.append(toks[i])
    if cur:
        got("address")
    found.reverse()
    return found


def _show(line: bytes) -> str:
    return line.rstrip(b"\n").decode("utf-8", "replace")


def include_instruction(path: bytes) -> bytes:
    """The instruction for ``:include:path`` (relative paths stay relative: ``./path``)."""
    if not path:
        raise AliasError("empty :include: filenames not permitted")
    if b"\0" in path:
        raise AliasError("NUL not permitted in :include: filenames")
    return path if path.startswith((b".", b"/")) else b"./" + path


def forward_instruction(q: Qualifier, item: Item) -> bytes:
    """``&full-address`` for an address item."""
    full = q.full(item.text, item.has_at)
    if len(full) > MAX_ADDRESS:
        raise AliasFormat("addresses over 800 bytes are not permitted")
    return b"&" + full


def alias_line(line: bytes, q: Qualifier) -> tuple[bytes, bytes, list[bytes]] | None:
    """One /etc/aliases entry → (target, full target, instructions), or None if it is empty."""
    target: bytes | None = None
    full = b""
    instr: list[bytes] = []
    for item in reversed(items(line)):        # right to left, as newaliases
        if item.kind == "include":
            instr.append(include_instruction(item.text))
            continue
        if not item.text:
            raise AliasError("empty recipient addresses not permitted")
        if item.is_file():
            instr.append(b">" + item.text)
        elif item.is_program():
            instr.append(b"!" + item.text[1:])
        else:
            if target is not None:
                instr.append(b"&" + full)
            target = item.text if item.has_at else item.text + b"@"
            full = q.full(item.text, item.has_at)
            if len(full) > MAX_ADDRESS:
                raise AliasFormat("addresses over 800 bytes are not permitted")
    if not instr:
        if target is not None:
            raise AliasError(f"unable to parse this line: {_show(line)}")
        return None
    if target is None:
        raise AliasError(f"unable to parse this line: {_show(line)}")
    return target, full, instr


def logical_lines(text: bytes) -> list[bytes]:
    """Join continuation lines (leading space or tab), drop empty and ``#`` entries."""
    if b"\0" in text:
        raise AliasFormat("NUL bytes are not permitted")
    out: list[bytes] = []
    current = b""
    for raw in text.split(b"\n"):
        if not raw:
            continue
        if raw[:1] in (b" ", b"\t"):
            current += b"\n" + raw
            continue
        if current and not current.startswith(b"#"):
            out.append(current)
        current = raw
    if current and not current.startswith(b"#"):
        out.append(current)
    return out


def compile_aliases(text: bytes, q: Qualifier) -> list[tuple[bytes, bytes]]:
    """cdb records for an aliases file, in file order (the first record for a key wins)."""
    records: list[tuple[bytes, bytes]] = []
    for line in logical_lines(text):
        entry = alias_line(line, q)
        if entry is None:
            continue
        target, full, instr = entry
        if target.lower().startswith(b"owner-"):
            records.append((b"?" + target[6:].lower(), full))
        records.append((b":" + target.lower(), b"".join(i + b"\0" for i in instr)))
    return records


def list_file(text: bytes, q: Qualifier) -> list[bytes]:
    """Instructions of an :include: file: addresses and further includes, one or more per line.

    Programs and files are refused: a list file is not trusted to run anything.
    """
    instr: list[bytes] = []
    for raw in text.split(b"\n"):
        if not raw.strip() or raw.lstrip().startswith(b"#"):
            continue
        for item in items(raw):
            if item.kind == "include":
                instr.append(include_instruction(item.text))
            elif item.is_program() or item.is_file():
                raise AliasError("program and file deliveries are not allowed in :include: files")
            elif item.text:
                instr.append(forward_instruction(q, item))
    return instr


def split_instructions(data: bytes) -> list[bytes]:
    """The NUL-terminated instructions of a cdb value."""
    return data.split(b"\0")[:-1]


def lookup_keys(prefix: bytes, address: bytes, wild: bool) -> list[bytes]:
    """Keys fastforward tries: the address, then ``@host`` and ``user@`` when ``wild``."""
    keys = [prefix + address.lower()]
    at = address.rfind(b"@")
    if wild and at != -1:
        keys.append(prefix + address[at:].lower())
        keys.append(prefix + address[:at + 1].lower())
    return keys
