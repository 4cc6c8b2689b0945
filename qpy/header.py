"""RFC 822 headers the way qmail-inject sees them (qmail-header(5)): tokens, address lists, fields.

Everything is bytes.  ``parse`` splits text into tokens (token822), ``addrlist``
walks an address-list field right to left and hands each address to a
callback, ``unparse`` prints tokens back with qmail's folding (lines of at most
``LINELEN`` characters, breaks only after commas).  ``read_header`` splits a
message into header fields and the start of its body as qmail's headerbody
does: a leading ``From `` line becomes ``MBOX-Line:``, the first line that is
not a field ends the header, and a last line without ``\\n`` gets one.

Address callbacks receive the address tokens in *reverse* order (the last
token first), exactly as qmail's rewriting functions do; ``Rewriter`` holds
those rewriting rules (default host, default domain, plus domain).
"""
from __future__ import annotations

import os
import time
from typing import BinaryIO, Callable

from qpy import addr, control
from qpy.errors import FormatError
from qpy.received import date822

LINELEN = 80

# Token kinds (0 means "nothing yet" in unparse's spacing rule).
ATOM, QUOTE, LITERAL, COMMENT, DOT, COMMA, AT, LEFT, RIGHT, SEMI, COLON = range(1, 12)
Token = tuple[int, bytes]

_PUNCT = {ord("."): DOT, ord(","): COMMA, ord("@"): AT, ord("<"): LEFT, ord(">"): RIGHT,
          ord(":"): COLON, ord(";"): SEMI}
_CHAR = {kind: bytes([ch]) for ch, kind in _PUNCT.items()}
_SPACE = frozenset(b" \t\r\n")
_ATOM_STOP = frozenset(b" \t\r\n([\"<>;:@,.")
_WORDS = frozenset((ATOM, LITERAL, QUOTE, COMMENT))
_ESCAPE = frozenset(b"\"[]()\\\r\n")


class ParseError(FormatError):
    """The text is not valid token822 input (unbalanced quote, comment or literal)."""

    line = b""      # the control value that did not parse, when it was one (Rewriter)


def parse(data: bytes) -> list[Token]:
    """Split ``data`` into tokens; raise ParseError on unbalanced or stray brackets."""
    toks: list[Token] = []
    n = len(data)
    i = 0
    while i < n:
        ch = data[i]
        kind = _PUNCT.get(ch)
        if kind is not None:
            toks.append((kind, b""))
            i += 1
        elif ch in _SPACE:
            i += 1
        elif ch in b")]":
            raise ParseError("unbalanced bracket")
        elif ch in b"(\"[":
            kind, text, i = _bracketed(data, i)
            toks.append((kind, text))
        else:
            text, i = _atom(data, i)
            toks.append((_atom_kind(text), text))
    return toks


def _bracketed(data: bytes, i: int) -> tuple[int, bytes, int]:
    """Read a comment (nesting), quoted string or domain literal starting at data[i]."""
    opener = data[i]
    kind, closer = {40: (COMMENT, 41), 34: (QUOTE, 34), 91: (LITERAL, 93)}[opener]
    out = bytearray()
    level = 1
    n = len(data)
    while True:
        i += 1
        if i >= n:
            raise ParseError("unterminated")
        ch = data[i]
        if kind == COMMENT and ch == 40:
            level += 1          # nested parentheses are dropped from the text
        elif ch == closer:
            level -= 1
            if not level:
                return kind, bytes(out), i + 1
        elif ch == 92:
            i += 1
            if i >= n:
                raise ParseError("unterminated")
            out.append(data[i])
        else:
            out.append(ch)


def _atom(data: bytes, i: int) -> tuple[bytes, int]:
    """Read an atom; a backslash takes the next byte literally."""
    out = bytearray()
    n = len(data)
    while True:
        if data[i] == 92:
            i += 1
            if i >= n:
                break
        out.append(data[i])
        i += 1
        if i >= n or data[i] in _ATOM_STOP:
            break
    return bytes(out), i


def _atom_kind(text: bytes) -> int:
    """An atom holding controls, 8-bit bytes, ``)``, ``]`` or ``\\`` prints as a quoted string."""
    for ch in text:
        if ch < 32 or ch > 126 or ch in b")]\\":
            return QUOTE
    return ATOM


def _needspace(last: int, new: int) -> bool:
    if not last:
        return False
    if last in (COLON, COMMA) or new == LEFT:
        return True
    return last in _WORDS and new in _WORDS


def unparse(toks: list[Token], linelen: int = LINELEN) -> bytes:
    """Print tokens as a header field ending in ``\\n``, folding after commas.

    A break after a comma is kept only when the line it ends would otherwise
    grow past ``linelen`` (qmail's token822_unparse, including its arithmetic).
    """
    out = bytearray()
    state = [0, -1]  # lineb, linee (-1: no pending break)

    def fold() -> None:
        s = len(out)
        out.extend(b"\n ")
        lineb, linee = state
        if linee >= 0 and (not linelen or s - lineb <= linelen):
            del out[linee:linee + 2]       # join: drop the previous break
            state[1] = s - 2
        else:
            if linee >= 0:
                state[0] = linee + 1
            state[1] = s

    last = 0
    for kind, text in toks:
        if _needspace(last, kind):
            out += b" "
        last = kind
        if kind == COMMA:
            out += b","
            fold()
        elif kind in _CHAR:
            out += _CHAR[kind]
        else:
            if kind == QUOTE:
                out += b'"'
            elif kind == LITERAL:
                out += b"["
            elif kind == COMMENT:
                out += b"("
            for ch in text:
                if ch in _ESCAPE:
                    out += b"\\"
                out.append(ch)
            if kind == QUOTE:
                out += b'"'
            elif kind == LITERAL:
                out += b"]"
            elif kind == COMMENT:
                out += b")"
    fold()
    del out[-1]
    return bytes(out)


def unquote(toks: list[Token]) -> bytes:
    """The address text of tokens: quotes removed, literals bracketed, comments dropped."""
    out = bytearray()
    for kind, text in toks:
        if kind in _CHAR:
            out += _CHAR[kind]
        elif kind == LITERAL:
            out += b"[" + text + b"]"
        elif kind in (ATOM, QUOTE):
            out += text
    return bytes(out)


Callback = Callable[[list[Token]], list[Token]]


def addrlist(toks: list[Token], callback: Callback) -> list[Token] | None:
    """Rewrite every address of a field (tokens after ``name:``) through ``callback``.

    Walks right to left as qmail does, inserting commas between addresses that
    lack them.  Returns the new token list, or None if the list does not parse
    (a stray group colon or semicolon, ``>`` without ``<``).
    """
    out: list[Token] = []      # built in reverse
    cur: list[Token] = []      # the current address, reversed
    ingroup = False
    wordok = True
    i = len(toks) - 1
    begin = 2

    def flush(comma: bool) -> None:
        if cur:
            out.extend(callback(list(cur)))
            cur.clear()
            if comma:
                out.append((COMMA, b""))

    while i >= begin:
        kind = toks[i][0]
        if kind == SEMI:
            flush(True)
            if ingroup:
                return None
            ingroup = True
            wordok = True
        elif kind == COLON:
            flush(False)
            if not ingroup:
                return None
            ingroup = False
            while i >= begin and toks[i][0] != COMMA:
                out.append(toks[i])
                i -= 1
            if i >= begin:
                out.append(toks[i])
                i -= 1
            wordok = True
            continue
        elif kind == RIGHT:
            flush(True)
            out.append(toks[i])
            i -= 1
            while i >= begin and toks[i][0] != LEFT:
                cur.append(toks[i])
                i -= 1
            out.extend(callback(list(cur)))   # even when empty: <>
            cur.clear()
            if i < begin:
                return None
            out.append(toks[i])
            i -= 1
            while i >= begin and toks[i][0] in (COMMENT, ATOM, QUOTE, AT, DOT):
                out.append(toks[i])
                i -= 1
            wordok = False
            continue
        elif kind in (ATOM, QUOTE, LITERAL):
            if not wordok:
                flush(True)
            wordok = False
            cur.append(toks[i])
            i -= 1
            continue
        elif kind == COMMENT:
            pass                        # lexically a space
        elif kind == COMMA:
            flush(False)
            wordok = True
        else:
            wordok = True
            cur.append(toks[i])
            i -= 1
            continue
        out.append(toks[i])
        i -= 1
    flush(False)
    out.extend(reversed(toks[:begin]))
    out.reverse()
    return out


def quote2(address: bytes) -> bytes:
    """Quote the part before the last ``@`` if RFC 822 needs it (qmail's quote2)."""
    if not address:
        return address
    return addr.quote(address)


def _reversed_tokens(text: bytes) -> list[Token]:
    """Tokens of a completion value, last first; a ParseError names the value."""
    try:
        return list(reversed(parse(text)))
    except ParseError as e:
        e.line = text
        raise


class Rewriter:
    """qmail-inject's address completion: default host, default domain, plus domain.

    A host listed in ``locals`` is complete as it is: ``alice@localhost`` stays so
    and never becomes ``alice@localhost.defaultdomain``.
    """

    def __init__(self, defaulthost: bytes, defaultdomain: bytes, plusdomain: bytes,
                 locals_: frozenset[bytes] = frozenset()) -> None:
        self.host = _reversed_tokens(b"@" + defaulthost)
        self.domain = _reversed_tokens(b"." + defaultdomain)
        self.plus = _reversed_tokens(b"." + plusdomain)
        self.locals = frozenset(d.lower() for d in locals_)

    @classmethod
    def from_control(cls) -> "Rewriter":
        """qmail-inject's settings: $QMAILDEFAULTHOST, $QMAILDEFAULTDOMAIN, $QMAILPLUSDOMAIN,
        else control/defaulthost, defaultdomain, plusdomain (each default me); control/locals.

        ControlError if a file is unreadable; ParseError (``line`` set) if a value does not parse.
        """
        env = os.environb
        dh = env.get(b"QMAILDEFAULTHOST") or control.read_line_me("defaulthost") or b""
        dd = env.get(b"QMAILDEFAULTDOMAIN") or control.read_line_me("defaultdomain") or b""
        pd = env.get(b"QMAILPLUSDOMAIN") or control.read_line_me("plusdomain") or b""
        return cls(dh, dd, pd, frozenset(control.read_list("locals") or ()))

    def rewrite(self, a: list[Token]) -> list[Token]:
        """Complete one reversed address in place (rwgeneric) and return it."""
        if not a:
            return a                                     # <>
        if len(a) >= 2 and a[1][0] == AT and a[0] == (LITERAL, b""):
            return a                                     # box@[]
        if a[-1][0] == AT:                               # strip a source route
            while a:
                if a.pop()[0] == COLON:
                    break
            if not a:
                return a
        if a[0][0] == DOT:                               # trailing dot
            del a[0]
            if not a:
                return a
        if a[0][0] == AT:                                # trailing @
            del a[0]
            if not a:
                return a
        if not any(kind == AT for kind, _ in a):
            a[0:0] = self.host
        if a[0][0] == ATOM and a[0][1].endswith(b"+"):
            a[0] = (ATOM, a[0][1][:-1])
            a[0:0] = self.plus
        for i, (kind, _) in enumerate(a):
            if kind in (DOT, LITERAL):
                return a
            if kind == AT:
                break
        if address_of(a[:i]).lower() in self.locals:
            return a                                     # a local host needs no domain
        a[0:0] = self.domain
        return a

    def address(self, text: bytes) -> bytes:
        """Complete a bare address given as text (a command-line recipient or -f sender)."""
        toks = parse(quote2(text))
        toks.reverse()
        self.rewrite(toks)
        toks.reverse()
        return unquote(toks)


def address_of(reversed_toks: list[Token]) -> bytes:
    """The unquoted text of a reversed address."""
    return unquote(list(reversed(reversed_toks)))


# Header fields qmail knows (hfield.c), index = H_* code.
NAMES = (b"", b"sender", b"from", b"reply-to", b"to", b"cc", b"bcc", b"date", b"message-id",
         b"subject", b"resent-sender", b"resent-from", b"resent-reply-to", b"resent-to",
         b"resent-cc", b"resent-bcc", b"resent-date", b"resent-message-id",
         b"return-receipt-to", b"errors-to", b"apparently-to", b"received", b"return-path",
         b"delivered-to", b"content-length", b"content-type", b"content-transfer-encoding",
         b"notice-requested-upon-delivery-to", b"mail-followup-to")
(H_SENDER, H_FROM, H_REPLYTO, H_TO, H_CC, H_BCC, H_DATE, H_MESSAGEID, H_SUBJECT,
 H_R_SENDER, H_R_FROM, H_R_REPLYTO, H_R_TO, H_R_CC, H_R_BCC, H_R_DATE, H_R_MESSAGEID,
 H_RETURNRECEIPTTO, H_ERRORSTO, H_APPARENTLYTO, H_RECEIVED, H_RETURNPATH, H_DELIVEREDTO,
 H_CONTENTLENGTH, H_CONTENTTYPE, H_CONTENTTRANSFERENCODING, H_NOTICEREQUESTED,
 H_MAILFOLLOWUPTO) = range(1, len(NAMES))


def known(field: bytes) -> int:
    """The H_* code of a field (name, optional blanks, colon; name case-insensitive), or 0."""
    for code in range(1, len(NAMES)):
        name = NAMES[code]
        n = len(name)
        if field[:n].lower() != name:
            continue
        rest = field[n:].lstrip(b" \t")
        if rest[:1] == b":":
            return code
    return 0


def valid(field: bytes) -> bool:
    """True if the text before the first colon (less trailing blanks) is a printable name."""
    j = field.find(b":")
    if j == -1:
        return False
    name = field[:j].rstrip(b" \t")
    return bool(name) and all(32 < ch < 127 for ch in name)


def read_header(stream: BinaryIO) -> tuple[list[bytes], bytes]:
    """Read header fields (continuations joined); return them and the start of the body.

    The body start is ``b""`` when the message ends inside the header, ``b"\\n"``
    after a blank line, or ``b"\\n"`` plus the first line that is not a field.
    The rest of the body stays unread in ``stream``.
    """
    fields: list[bytes] = []
    current: bytes | None = None
    while True:
        line = stream.readline()
        if not line:
            break
        if not line.endswith(b"\n"):
            line += b"\n"
        if current is not None:
            if line[:1] in (b" ", b"\t"):
                current += line
                continue
            fields.append(current)
            current = None
        if line == b"\n":
            return fields, b"\n"
        if line.startswith(b"From "):
            current = b"MBOX-Line: " + line
        elif valid(line):
            current = line
        else:
            return fields, b"\n" + line
    if current is not None:
        fields.append(current)
    return fields, b""


def date_field(when: float) -> bytes:
    """``Date: D Mon YYYY hh:mm:ss -0000\\n`` in UTC (newfield_datemake)."""
    return b"Date: " + date822(when) + b"\n"


def message_id_field(idhost: bytes, when: float, pid: int) -> bytes:
    """``Message-ID: <YYYYMMDDhhmmss.PID.qmail@idhost>\\n`` (newfield_msgidmake)."""
    t = time.gmtime(when)
    stamp = b"%d%02d%02d%02d%02d%02d" % (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min,
                                         t.tm_sec)
    return b"Message-ID: <" + stamp + b".%d.qmail@" % pid + idhost + b">\n"
