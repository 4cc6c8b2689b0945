#!/usr/bin/env python3
"""bench/fuzz.py - coverage-guided fuzzing of qpy's parsers (atheris), for a fixed time.

    pip install atheris            # (in the test extras; tests/integration/test_faults.py skips without it)
    python3 bench/fuzz.py [--seconds 60] [--target smtp,data,...] [--corpus DIR] [--keep DIR]
    python3 bench/fuzz.py --replay TARGET FILE...      # run inputs through a harness once
    python3 bench/fuzz.py --replay-all                 # every seed and recorded finding once
    python3 bench/fuzz.py --list

Targets (each a plain function of bytes in TARGETS that raises only on a bug):

  smtp      qmail-smtpd's command parser and dialogue: a whole client byte stream through
            ``Session.run`` on in-memory fds (read size, rcptcheck, databytes, RELAYCLIENT
            and AUTH chosen by the first byte; the queue and checkpassword are stand-ins).
            Checks: no exception escapes, every reply is ``ddd[ -]…\\r\\n``, one ``250 ok
            <time> qp`` per queued message, no queued message holds a CR or an address a
            control byte.
  data      the DATA state machine (``smtpio.read_data``) against a transcription of
            qmail-smtpd.c's blast(), at random read and block sizes: same end of data,
            same stray-LF and EOF verdicts, same stored bytes (or ``bare_cr`` exactly when
            qmail would store a CR), same hop count, same bytes left after the end.
  envelope  qmail-queue's envelope reader (``queuewrite._copy_envelope``, chunked) against
            ``envelope.decode``, qmail-send's ``send_todo.records_of``/``complete`` against
            ``envelope.records``, and the maildrop header parser.
  dotqmail  .qmail files: a fuzzed file (name and text) in a scratch home and a fuzzed
            extension through ``qmail-local -n`` (``Local.run``), ``dotqmail.candidates``
            (no name with ``/``), ``lines`` and ``classify``.
  rewrite   address rewriting: qmail-send's ``rewrite.Rewriter`` with fuzzed locals,
            percenthack and virtualdomains; qmail-inject's ``header.Rewriter.address``;
            ``addr.quote`` read back by qmail-smtpd's ``parse_address`` (what qmail-remote
            sends is what we read).
  header    qmail-inject's header handling: ``read_header``, ``known``/``valid``,
            ``parse``, ``addrlist`` with the rewriter, ``unparse``; a rewritten field
            may not start a new header field a mail reader would honour.

Each target runs in its own process (``atheris.Fuzz()`` does not return) with libFuzzer's
``-max_total_time``, starting from seeds built here, the files of tests/data/fuzz/<target>/
(earlier findings, replayed by tests/integration/test_faults.py) and --corpus DIR/<target>
if given (kept and grown).  Prints per target: runs, runs/s, coverage (libFuzzer's
``cov``), corpus size, crashes, then a PASS/FAIL line; a crash input is copied to
--keep DIR (default: a temporary directory, printed).  Exit status 1 if any target
found a crash.  ``--jobs N`` runs N targets at once.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REGRESSIONS = ROOT / "tests" / "data" / "fuzz"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Filled by load(): the qpy modules the harnesses use (imported under atheris's
# instrumentation when fuzzing, plainly when replaying).
M: dict[str, object] = {}


def load(instrument: bool = False) -> None:
    """Import the modules under test (instrumented for coverage when fuzzing)."""
    if M:
        return
    import contextlib
    ctx = contextlib.nullcontext()
    if instrument:
        import atheris
        ctx = atheris.instrument_imports(include=["qpy"])
    with ctx:
        import qpy.addr
        import qpy.checkpassword
        import qpy.dotqmail
        import qpy.envelope
        import qpy.errors
        import qpy.fdio
        import qpy.header
        import qpy.maildrop
        import qpy.qmailq
        import qpy.queuewrite
        import qpy.rewrite
        import qpy.send_todo
        import qpy.smtpio
        import qpy.programs.qmail_local
        import qpy.programs.qmail_smtpd
    for name, mod in list(sys.modules.items()):
        if name.startswith("qpy."):
            M[name[4:]] = mod


# -- input decoding ------------------------------------------------------------------
SEP = b"\xff\xfe"        # separates the string fields of an input


class Take:
    """Read small choices from the front of an input, the rest as fields."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def choice(self, options):
        return options[self.byte() % len(options)]

    def rest(self) -> bytes:
        out, self.pos = self.data[self.pos:], len(self.data)
        return out

    def fields(self, n: int) -> list[bytes]:
        parts = self.rest().split(SEP, n - 1)
        return parts + [b""] * (n - len(parts))


READ_SIZES = (1, 2, 3, 5, 7, 16, 64, 512, 4096, 65536)


# -- in-memory fds (regular files never block: poll() says ready, EOF is EOF) ----------
class MemFds:
    """Two memfds: the client's bytes on one, the server's replies on the other."""

    def __init__(self) -> None:
        self.rfd = os.memfd_create("fuzz-in")
        self.wfd = os.memfd_create("fuzz-out")

    def load(self, data: bytes) -> None:
        os.ftruncate(self.rfd, 0)
        os.pwrite(self.rfd, data, 0)
        os.lseek(self.rfd, 0, os.SEEK_SET)
        os.ftruncate(self.wfd, 0)
        os.lseek(self.wfd, 0, os.SEEK_SET)

    def output(self) -> bytes:
        size = os.fstat(self.wfd).st_size
        return os.pread(self.wfd, size, 0) if size else b""


_FDS: MemFds | None = None


def fds() -> MemFds:
    global _FDS
    if _FDS is None:
        _FDS = MemFds()
    return _FDS


# -- target: smtp ----------------------------------------------------------------------
class FakeJob:
    """Stands in for the queue writer: keeps what would be queued."""

    pid = 4242
    closed: list[tuple[bytes, list[bytes], bytes]] = []

    def __init__(self) -> None:
        self.data = bytearray()
        self.failed = False
        self.error = False

    def put(self, data: bytes) -> None:
        self.data += data

    def fail(self) -> None:
        self.failed = True

    def abort(self) -> None:
        self.failed = True

    def close(self, sender: bytes, recipients: list[bytes]) -> str:
        if self.failed or self.error:
            return "Zqq fake failure (#4.3.0)"
        FakeJob.closed.append((sender, list(recipients), bytes(self.data)))
        return ""


_SMTP: dict[str, object] = {}


def smtp_setup() -> dict:
    """A scratch instance to read controls from; the queue and checkpassword replaced."""
    if _SMTP:
        return _SMTP
    load()
    from qpy import hier
    home = tempfile.mkdtemp(prefix="qpy-fuzz-smtp-")
    hier.install(os.path.join(home, "qmail"), b"fuzz.example", False)
    os.environ["QMAILHOME"] = os.path.join(home, "qmail")      # controls are read from here
    qmailq = M["qmailq"]
    qmailq.start = lambda *a, **k: FakeJob()                          # type: ignore[attr-defined]
    M["checkpassword"].check = (lambda argv, user, password, *a, **k:   # type: ignore[attr-defined]
                                0 if password == b"right" else 1)
    time.sleep = lambda seconds: None      # AUTH failure delays: the dialogue, not the clock
    smtpd = M["programs.qmail_smtpd"]
    env = {"TCPREMOTEIP": "127.0.0.1", "TCPREMOTEHOST": "client.example",
           "TCPLOCALIP": "127.0.0.1", "TCPLOCALHOST": "fuzz.example"}
    _SMTP.update(smtpd=smtpd, env=env, home=home)
    return _SMTP


REPLY = re.compile(rb"[2-5]\d\d[ -][^\r\n]*\r\n")


def fuzz_smtp(data: bytes) -> None:
    """One SMTP session on a fuzzed client stream."""
    s = smtp_setup()
    smtpd, smtpio = s["smtpd"], M["smtpio"]
    t = Take(data)
    read_size = t.choice(READ_SIZES)
    flags = t.byte()
    env = dict(s["env"])
    if flags & 1:
        env["RELAYCLIENT"] = ""
    if flags & 2:
        env["DATABYTES"] = "64"
    if flags & 4:
        env["CHECKPASSWORD"] = "/bin/false"
    stream = t.rest()
    f = fds()
    f.load(stream)
    FakeJob.closed = []
    conn = smtpio.Connection(f.rfd, f.wfd, timeout=5, read_size=read_size)
    cfg = smtpd.Config(env)
    cfg.rcptcheck = bool(flags & 8)
    code = smtpd.Session(conn, cfg).run()
    assert code in (0, 1), code
    out = f.output()
    pos = 0
    while pos < len(out):
        m = REPLY.match(out, pos)
        assert m, ("malformed reply", out[pos:pos + 200])
        pos = m.end()
    assert out.startswith(b"220 "), out[:100]
    queued = len(re.findall(rb"^250 (?:2\.0\.0 )?ok \d+ qp ", out, re.M))
    assert queued == len(FakeJob.closed), (queued, len(FakeJob.closed))
    control = bytes(range(32)) + b"\x7f"
    for sender, rcpts, message in FakeJob.closed:
        assert b"\r" not in message.split(b"\n", 1)[1], "CR stored in a message"
        for a in [sender, *rcpts]:
            assert a == a.translate(None, control), ("control byte in an address", a)
        assert rcpts


# -- target: data ------------------------------------------------------------------------
def blast_reference(stream: bytes) -> tuple[str, bytes, int, int]:
    """qmail-smtpd.c's blast() on ``stream``: (verdict, stored bytes, hops, bytes consumed).

    verdict: "end" (the data ended), "stray" (a bare LF: straynewline()), "eof".
    """
    state = 1
    out = bytearray()
    hops = 0
    inheader, pos, mx, my, mz = True, 0, True, True, True
    for i, ch in enumerate(stream):
        if inheader:
            if pos < 9:
                if ch != b"delivered"[pos] and ch != b"DELIVERED"[pos]:
                    mz = False
                if mz and pos == 8:
                    hops += 1
                if pos < 8 and ch != b"received"[pos] and ch != b"RECEIVED"[pos]:
                    mx = False
                if mx and pos == 7:
                    hops += 1
                if pos < 2 and ch != b"\r\n"[pos]:
                    my = False
                if my and pos == 1:
                    inheader = False
                pos += 1
            if ch == 10:
                pos, mx, my, mz = 0, True, True, True
        if state == 0:
            if ch == 10:
                return "stray", bytes(out), hops, i + 1
            if ch == 13:
                state = 4
                continue
        elif state == 1:
            if ch == 10:
                return "stray", bytes(out), hops, i + 1
            if ch == 46:
                state = 2
                continue
            if ch == 13:
                state = 4
                continue
            state = 0
        elif state == 2:
            if ch == 10:
                return "stray", bytes(out), hops, i + 1
            if ch == 13:
                state = 3
                continue
            state = 0
        elif state == 3:
            if ch == 10:
                return "end", bytes(out), hops, i + 1
            out += b".\r"
            if ch == 13:
                state = 4
                continue
            state = 0
        elif state == 4:
            if ch == 10:
                state = 1
            elif ch != 13:
                out += b"\r"
                state = 0
        out.append(ch)
    return "eof", bytes(out), hops, len(stream)


def fuzz_data(data: bytes) -> None:
    """read_data against qmail's blast()."""
    load()
    smtpio = M["smtpio"]
    t = Take(data)
    read_size = t.choice(READ_SIZES)
    block = t.choice((9, 10, 11, 16, 64, 1024, smtpio.BLOCK))
    limit = t.choice((0, 0, 1, 20, 200))
    stream = t.rest()
    f = fds()
    f.load(stream)
    conn = smtpio.Connection(f.rfd, f.wfd, timeout=5, read_size=read_size)
    sink = bytearray()
    try:
        res = smtpio.read_data(conn, sink.extend, limit, block)
        verdict = "end"
    except smtpio.StrayNewline:
        verdict = "stray"
    except smtpio.Dropped:
        verdict = "eof"
    want, out, hops, used = blast_reference(stream)
    assert verdict == want, (verdict, want)
    if verdict != "end":
        return
    assert res.bare_cr == (b"\r" in out), ("bare_cr", res.bare_cr)
    assert res.hops == hops, ("hops", res.hops, hops)
    if not res.bare_cr:
        assert res.size == len(out), ("size", res.size, len(out))
        assert res.overflow == bool(limit and len(out) > limit), "overflow"
        if not res.overflow:
            assert bytes(sink) == out, "stored bytes differ"
    rest = bytearray()          # the bytes after the end, as the command reader sees them
    while True:
        try:
            rest += conn.line() + b"\n"
        except smtpio.Dropped:
            break
        except smtpio.LineTooLong:
            return
    tail = stream[used:]
    assert bytes(rest) == tail[:tail.rfind(b"\n") + 1], "bytes after the end differ"


# -- target: envelope --------------------------------------------------------------------
def fuzz_envelope(data: bytes) -> None:
    """qmail-queue's streaming reader, envelope.decode, qmail-send's records, drop headers."""
    load()
    envelope, queuewrite, errors = M["envelope"], M["queuewrite"], M["errors"]
    from qpy.exitcodes import QQ
    t = Take(data)
    chunk = t.choice(READ_SIZES)
    body = t.rest()
    try:
        env = envelope.decode(body)
        decoded = "ok"
    except envelope.AddressTooLong:
        decoded = "long"
    except envelope.EnvelopeTruncated:
        decoded = "truncated"
    except envelope.EnvelopeError:
        decoded = "bad"
    pieces = [body[i:i + chunk] for i in range(0, len(body), chunk)]
    pieces.reverse()
    out = bytearray()
    try:
        queuewrite._copy_envelope(-1, out, read=lambda: pieces.pop() if pieces else b"")
        copied = "ok"
    except errors.QueueFail as e:
        copied = {QQ.ADDR_TOO_LONG: "long", QQ.READ_ERROR: "truncated",
                  QQ.ENVELOPE: "bad"}.get(e.exit_code, str(e.exit_code))
    assert copied == decoded, (copied, decoded)
    if decoded == "ok":
        assert bytes(out) + b"\0" == env.encode(), "copied envelope differs"
        assert envelope.encode(env.sender, env.recipients) == body[:len(out) + 1]
    # qmail-send reads todo/ files record by record
    f = fds()
    f.load(body)
    send_todo = M["send_todo"]
    assert list(send_todo.records_of(f.rfd)) == envelope.records(body), "records_of"
    assert send_todo.complete(f.rfd) == (not body or body.endswith(b"\0")), "complete"
    maildrop = M["maildrop"]
    head = body[:maildrop.HEADER_LEN]
    try:
        n, flags = maildrop.parse_header(head, len(body))
        assert 0 <= n and maildrop.HEADER_LEN + n < len(body) and 0 <= flags <= 3
        assert maildrop.header(n, flags) == head, "drop header does not round-trip"
    except maildrop.Malformed:
        pass


# -- target: dotqmail --------------------------------------------------------------------
_DOT: dict[str, object] = {}


def dot_setup() -> dict:
    if _DOT:
        return _DOT
    load()
    home = tempfile.mkdtemp(prefix="qpy-fuzz-dot-")
    os.chmod(home, 0o755)
    out: list[bytes] = []
    fdio = M["fdio"]
    real = fdio.write_quietly

    def capture(fd, data):
        if fd == 1:
            out.append(bytes(data))
        else:
            real(fd, data) if fd != 2 else None
    fdio.write_quietly = capture
    _DOT.update(home=home, out=out)
    return _DOT


def fuzz_dotqmail(data: bytes) -> None:
    """A fuzzed .qmail file and address extension through qmail-local -n."""
    s = dot_setup()
    dotqmail, local, errors = M["dotqmail"], M["programs.qmail_local"], M["errors"]
    home = s["home"]
    t = Take(data)
    flags = t.byte()
    name, ext, text = t.fields(3)
    name, ext = name.replace(b"\0", b""), ext.replace(b"\0", b"")
    dash = b"-" if flags & 1 else b""
    for old in os.listdir(home):
        os.unlink(os.path.join(home, old))
    fname = b".qmail" + (b"-" + name if name else b"")
    if b"/" not in fname and len(fname) < 255:
        path = os.path.join(os.fsencode(home), fname)
        with open(path, "wb") as f:
            f.write(text)
        os.chmod(path, 0o744 if flags & 2 else 0o644)
    for cname, default in dotqmail.candidates(dash, ext):
        assert b"/" not in cname and cname.startswith(b".qmail" + dash), cname
        assert default is None or ext.lower().endswith(default.lower()), (cname, default)
    for line in dotqmail.lines(text):
        assert b"\n" not in line and not line.endswith((b" ", b"\t"))
        kind, arg = dotqmail.classify(line)
        assert kind in (dotqmail.BLANK, dotqmail.COMMENT, dotqmail.MAILDIR, dotqmail.MBOX,
                        dotqmail.PROGRAM, dotqmail.LIST, dotqmail.IGNORED, dotqmail.FORWARD)
        assert arg in line
    s["out"].clear()
    cwd = os.getcwd()
    try:
        code = local.deliver([b"-n", b"user", os.fsencode(home), b"user" + dash + ext, dash, ext,
                              b"example.test", b"sender@example.test", b"./Maildir/"])
        assert code == 0
    except errors.Exit as e:
        assert e.code in (100, 111), e.code
    except errors.TempFail:
        pass
    finally:
        os.chdir(cwd)
    for line in b"".join(s["out"]).split(b"\n")[:-1]:
        assert line.split(b" ", 1)[0] in (b"maildir", b"mbox", b"program", b"forward", b"did"), line


# -- target: rewrite ---------------------------------------------------------------------
def fuzz_rewrite(data: bytes) -> None:
    """qmail-send's rewriting, qmail-inject's completion, quoting read back by qmail-smtpd."""
    load()
    rewrite, header, addr = M["rewrite"], M["header"], M["addr"]
    smtpd = M["programs.qmail_smtpd"]
    t = Take(data)
    locals_, percent, virtual, noathost, address = t.fields(5)
    vd: dict[bytes, bytes] = {}
    for line in virtual.split(b"\n"):
        key, sep, value = line.rstrip(b" \t\r").partition(b":")
        if sep:
            vd[key.lower()] = value
    rw = rewrite.Rewriter(locals={d.lower() for d in locals_.split(b"\n") if d},
                          percenthack={d.lower() for d in percent.split(b"\n") if d},
                          virtualdomains=vd, envnoathost=noathost or b"envnoathost.example")
    channel, out = rw.rewrite(address)
    assert channel in (rewrite.LOCAL, rewrite.REMOTE)
    assert isinstance(out, bytes) and b"@" in out
    full = address if b"@" in address else address + b"@" + (noathost or b"envnoathost.example")
    if channel == rewrite.REMOTE:
        assert out.count(b"%") <= full.count(b"%") and out.endswith(addr.domain_of(out))
    # qmail-inject
    hr = header.Rewriter(b"host.example", b"example", b"plus.example")
    try:
        done = hr.address(address)
        assert isinstance(done, bytes)
    except header.ParseError:
        pass
    # what qmail-remote sends (addr.quote) is what qmail-smtpd reads back
    local, domain = addr.split(address)
    if domain is not None and re.fullmatch(rb"[A-Za-z0-9.\-\[\]:]*", domain):
        got = smtpd.parse_address(b"<" + addr.quote(address) + b">")
        control = bytes(range(32)) + b"\x7f"
        if address.translate(None, control) == address and len(address) <= smtpd.MAX_ADDR:
            assert got == (address, b""), (address, got)


# -- target: header ----------------------------------------------------------------------
ADDRESS_FIELDS = (b"from", b"to", b"cc", b"bcc", b"sender", b"reply-to", b"resent-to",
                  b"resent-from", b"return-path")


def fuzz_header(data: bytes) -> None:
    """qmail-inject's header reading, tokenizing, address-list rewriting and folding."""
    load()
    header = M["header"]
    fields, body = header.read_header(io.BytesIO(data))
    assert body in (b"", b"\n") or body.startswith(b"\n")
    rw = header.Rewriter(b"host.example", b"example", b"plus.example")
    for field in fields:
        assert field.endswith(b"\n")
        code = header.known(field)
        if code:
            assert header.valid(field) or field.startswith(b"MBOX-Line:")
        try:
            toks = header.parse(field)
        except header.ParseError:
            continue
        new = header.addrlist(toks, rw.rewrite)
        if new is None:
            continue
        text = header.unparse(new)
        assert text.endswith(b"\n")
        lines = text[:-1].split(b"\n")
        for line in lines[1:]:
            if line[:1] in (b" ", b"\t"):
                continue
            # a break not followed by a blank starts a new line of the header: it must
            # not read as a field a mail reader would act on
            assert not header.known(line + b"\n"), ("header field injected", text)
            assert not line[:1].isalnum(), ("header line injected", text)
        header.parse(text)          # what we print parses again


TARGETS = {"smtp": fuzz_smtp, "data": fuzz_data, "envelope": fuzz_envelope,
           "dotqmail": fuzz_dotqmail, "rewrite": fuzz_rewrite, "header": fuzz_header}


# -- seeds -------------------------------------------------------------------------------
def seeds(target: str) -> list[bytes]:
    """A few well-formed inputs to start from."""
    if target == "smtp":
        dialog = (b"EHLO client.example\r\nMAIL FROM:<a@example.test> SIZE=100\r\n"
                  b"RCPT TO:<b@fuzz.example>\r\nRCPT TO:<\"x y\"@[127.0.0.1]>\r\nDATA\r\n"
                  b"Received: x\r\nSubject: hi\r\n\r\n..dot\r\nbody\r\n.\r\nRSET\r\n"
                  b"AUTH PLAIN AHVzZXIAcmlnaHQ=\r\nAUTH LOGIN\r\ndXNlcg==\r\ncmlnaHQ=\r\n"
                  b"VRFY x\r\nNOOP\r\nHELP\r\nSTARTTLS\r\nQUIT\r\n")
        return [bytes([9, 0]) + dialog, bytes([0, 7]) + dialog.replace(b"EHLO", b"HELO"),
                bytes([3, 1]) + b"HELO x\r\nMAIL FROM:<>\r\nRCPT TO:<@r:b@c>\r\nDATA\r\n.\r\n"]
    if target == "data":
        return [bytes([6, 6, 0]) + b"Received: a\r\nDelivered-To: b\r\n\r\n.x\r\n.\r\nNEXT\r\n",
                bytes([0, 0, 2]) + b"a\rb\r\n.\r\n", bytes([1, 1, 0]) + b"a\nb\r\n.\r\n"]
    if target == "envelope":
        return [bytes([3]) + b"Fa@b\0Tc@d\0Te@f\0\0", bytes([0]) + b"F\0\0",
                bytes([9]) + b"qpy-drop 1 00000000000000000005\nhelloFa\0Tb\0\0"]
    if target == "dotqmail":
        return [bytes([1]) + b"foo-default" + SEP + b"foo-bar" + SEP +
                b"# c\n./Maildir/\n./mbox\n|prog x\n&a@b\nc@d\n+list\n\n",
                bytes([0]) + b"" + SEP + b"" + SEP + b"\n|x"]
    if target == "rewrite":
        return [b"example.test\nlocalhost" + SEP + b"example.test" + SEP +
                b"virt.example:pre\n.sub.example:sub\nx@y.example:\n" + SEP + b"" + SEP +
                b"a%b%c@example.test", b"" + SEP + b"" + SEP + b":catch" + SEP + b"" + SEP
                + b"\"q u\"@[1.2.3.4]"]
    if target == "header":
        return [b"From user Mon Jan  1\nTo: a, b <c@d>, \"q\" <e>, g: h@i, j;\nCc: (c) x@y\n"
                b"Subject: s\n continued\nBcc: z\nReturn-Path: <r>\n\nbody\n"]
    return []


# -- the fuzzing process -----------------------------------------------------------------
def run_target(target: str, libfuzzer_args: list[str]) -> None:
    """In a child: fuzz one target until libFuzzer stops (never returns)."""
    import atheris
    load(instrument=True)
    fn = TARGETS[target]
    atheris.Setup([sys.argv[0], *libfuzzer_args], fn)
    atheris.Fuzz()


STAT = re.compile(rb"#(\d+)\s+\w+\s+cov: (\d+) .*?corp: (\d+)")
DONE = re.compile(rb"Done (\d+) runs in (\d+) second")


def fuzz(target: str, seconds: int, corpus: Path, keep: Path, max_len: int) -> dict:
    """Run one target for ``seconds``; return its figures."""
    corpus.mkdir(parents=True, exist_ok=True)
    for data in seeds(target):
        (corpus / ("seed-" + hashlib.sha1(data).hexdigest()[:12])).write_bytes(data)
    for path in glob.glob(str(REGRESSIONS / target / "*")):
        shutil.copy(path, corpus)
    artifacts = keep / target
    artifacts.mkdir(parents=True, exist_ok=True)
    args = [f"-max_total_time={seconds}", f"-artifact_prefix={artifacts}/", f"-max_len={max_len}",
            "-print_final_stats=1", "-timeout=20", "-rss_limit_mb=2048", str(corpus)]
    start = time.monotonic()
    r = subprocess.run([sys.executable, __file__, "--run", target, "--", *args],
                       capture_output=True, timeout=seconds + 300)
    wall = time.monotonic() - start
    err = r.stderr
    stats = STAT.findall(err)
    done = DONE.search(err)
    runs = int(done.group(1)) if done else (int(stats[-1][0]) if stats else 0)
    crashes = sorted(p.name for p in artifacts.iterdir())
    return {"target": target, "seconds": round(wall, 1), "runs": runs,
            "runs_per_s": round(runs / max(wall, 1e-9)),
            "cov": int(stats[-1][1]) if stats else 0, "corpus": len(os.listdir(corpus)),
            "exit": r.returncode, "crashes": crashes,
            "tail": err.decode("utf-8", "replace")[-3000:] if r.returncode else ""}


def replay(target: str, files: list[str]) -> int:
    """Run inputs through a harness once, without atheris; 1 if any raised."""
    fn = TARGETS[target]
    bad = 0
    for path in files:
        try:
            fn(Path(path).read_bytes())
            print(f"{path}: ok")
        except Exception as e:           # a finding: show it
            import traceback
            traceback.print_exc()
            print(f"{path}: {type(e).__name__}: {e}")
            bad = 1
    return bad


def replay_all() -> int:
    """Every target's seeds and recorded findings, once each, without atheris."""
    bad = 0
    for target, fn in TARGETS.items():
        inputs = [(f"seed {k}", data) for k, data in enumerate(seeds(target))]
        inputs += [(path, Path(path).read_bytes())
                   for path in sorted(glob.glob(str(REGRESSIONS / target / "*")))]
        for name, data in inputs:
            try:
                fn(data)
            except Exception as e:           # a finding: show it
                import traceback
                traceback.print_exc()
                print(f"{target} {name}: {type(e).__name__}: {e}")
                bad = 1
        print(f"{target}: {len(inputs)} inputs replayed")
    return bad


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--run":
        run_target(sys.argv[2], sys.argv[4:] if sys.argv[3:4] == ["--"] else sys.argv[3:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=60, help="fuzzing time per target")
    ap.add_argument("--target", default=",".join(TARGETS), help="comma-separated targets")
    ap.add_argument("--corpus", help="keep and grow each target's corpus in DIR/<target>")
    ap.add_argument("--keep", help="write crash inputs below DIR/<target>/ (default: a temp dir)")
    ap.add_argument("--max-len", type=int, default=4096)
    ap.add_argument("--jobs", type=int, default=1, help="targets fuzzed at once")
    ap.add_argument("--replay", nargs="+", metavar=("TARGET", "FILE"))
    ap.add_argument("--replay-all", action="store_true",
                    help="run every target's seeds and tests/data/fuzz/<target>/* once")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    if args.list:
        print("\n".join(TARGETS))
        return 0
    if args.replay:
        return replay(args.replay[0], args.replay[1:])
    if args.replay_all:
        return replay_all()
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("atheris is not installed: pip install atheris", file=sys.stderr)
        return 2
    targets = [t for t in args.target.split(",") if t]
    for t in targets:
        if t not in TARGETS:
            ap.error(f"unknown target {t}")
    scratch = Path(tempfile.mkdtemp(prefix="qpy-fuzz-"))
    keep = Path(args.keep) if args.keep else scratch / "crashes"
    corpus_root = Path(args.corpus) if args.corpus else scratch / "corpus"
    from concurrent.futures import ThreadPoolExecutor
    failed = False
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = pool.map(lambda t: fuzz(t, args.seconds, corpus_root / t, keep, args.max_len),
                           targets)
        for r in results:
            print(f"{r['target']:<9} {r['seconds']:>6.1f} s  runs {r['runs']:>9}  "
                  f"{r['runs_per_s']:>6}/s  cov {r['cov']:>5}  corpus {r['corpus']:>5}  "
                  f"crashes {len(r['crashes'])}", flush=True)
            ok = r["exit"] == 0 and not r["crashes"]
            if not ok:
                failed = True
                print(r["tail"])
                for c in r["crashes"]:
                    print(f"  crash input: {keep / r['target'] / c}")
            print(f"{'PASS' if ok else 'FAIL'}: fuzz {r['target']}: "
                  f"{'no crash' if ok else 'crash found'} in {r['runs']} runs", flush=True)
    if not args.keep:
        shutil.rmtree(scratch / "corpus", ignore_errors=True) if not args.corpus else None
        print(f"(scratch: {scratch})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
