"""qmail-showctl prints qmail-showctl's explanation of an instance's controls."""
from __future__ import annotations

import os

from conftest import control, run


def paragraphs(out: bytes) -> dict[bytes, bytes]:
    parts = out.rstrip(b"\n").split(b"\n\n")
    return {p.split(b":", 1)[0]: p for p in parts[1:]}


def test_header_lines_and_defaults(home):
    r = run(home, "qmail-showctl")
    assert r.returncode == 0
    uid, gid = os.getuid(), os.getgid()
    head = (f"qmail home directory: {home}.\nuser-ext delimiter: -.\n"
            f"paternalism (in decimal): 2.\nsilent concurrency limit: 120.\n"
            f"subdirectory split: 23.\nuser ids: {', '.join([str(uid)] * 8)}.\n"
            f"group ids: {gid}, {gid}.\n").encode()
    assert r.stdout.startswith(head)
    p = paragraphs(r.stdout)
    assert p[b"badmailfrom"] == b"badmailfrom: (Default.) Any MAIL FROM is allowed."
    assert p[b"bouncehost"] == b"bouncehost: (Default.) Bounce host name is test.example."
    assert p[b"concurrencylocal"] == b"concurrencylocal: Local concurrency is 10."
    assert p[b"me"] == b"me: My name is test.example."
    assert p[b"locals"] == b"locals: \nMessages for test.example are delivered locally."
    assert p[b"morercpthosts"] == b"morercpthosts: (Default.) No effect."
    assert p[b"morercpthosts.cdb"] == b"morercpthosts.cdb: (Default.) No effect."
    assert p[b"virtualdomains"] == b"virtualdomains: (Default.) No virtual domains."
    assert r.stdout.endswith(b"\n")


def test_values_lists_and_unknown_files(home):
    control(home, "databytes", "junk\n")
    control(home, "timeoutsmtpd", "300 seconds\n")
    control(home, "smtproutes", "# comment\n\n:relay.example\nx.y:[1.2.3.4]:2525\n")
    control(home, "defaulthost", "dh\x01x\n")
    control(home, "morercpthosts", "more.example\n")
    control(home, "frobnicate", "1\n")
    r = run(home, "qmail-showctl")
    p = paragraphs(r.stdout)
    assert p[b"databytes"] == b"databytes: (Default.) SMTP DATA limit is 0 bytes."
    assert p[b"timeoutsmtpd"] == b"timeoutsmtpd: SMTP server data timeout is 300 seconds."
    assert p[b"smtproutes"] == (b"smtproutes: \nSMTP route: :relay.example\n"
                                b"SMTP route: x.y:[1.2.3.4]:2525")
    assert p[b"defaulthost"] == b"defaulthost: Default host name is dh?x."
    assert p[b"morercpthosts"] == (b"morercpthosts: \nSMTP clients may send messages to "
                                   b"recipients at more.example.")
    assert p[b"morercpthosts.cdb"] == (b"morercpthosts.cdb: Oops! morercpthosts exists but "
                                       b"morercpthosts.cdb doesn't.")
    assert p[b"frobnicate"] == b"frobnicate: I have no idea what this file does."


def test_readers_option_and_missing_home(home):
    r = run(home, "qmail-showctl", ["--readers"])
    assert (b"\nidhost: (Default.) Message-ID host name is test.example.\n"
            b"  (read by qmail-inject)\n") in r.stdout
    r = run(home, "qmail-showctl", env={"QMAILHOME": str(home / "nope")})
    assert r.returncode == 111 and r.stdout.endswith(f"Oops! Unable to chdir to {home}/nope.\n".encode())
