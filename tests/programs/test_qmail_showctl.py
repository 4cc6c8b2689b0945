"""qmail-showctl prints qmail-showctl's explanation of an instance's controls."""
from __future__ import annotations

import os
from pathlib import Path

from conftest import control, run
from qpy import controlfiles


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


# Golden texts (tests/data/qmail-showctl/): everything after the header lines, which
# name the home and the ids.  The paragraphs come from qpy.controlfiles; these pin them.
DATA = Path(__file__).resolve().parent.parent / "data" / "qmail-showctl"
EVERY = {
    "badmailfrom": b"@bad.example\n#c\n\nx@y\n", "bouncefrom": b"bouncer\n",
    "bouncehost": b"bh.example \t\n", "concurrencylocal": b"5\n", "concurrencyremote": b"abc\n",
    "databytes": b"1000x\n", "defaultdomain": b"dd\n", "defaulthost": b"dh\x01\xff\n",
    "doublebouncehost": b"dbh\n", "doublebounceto": b"dbt\n", "envnoathost": b"en\n",
    "helohost": b"hh\n", "idhost": b"ih\n", "localiphost": b"lh\n", "locals": b"a\nb\n",
    "percenthack": b"p.example\n", "plusdomain": b"pd\n", "qmqpservers": b"1.2.3.4\n",
    "queuelifetime": b"99\n", "rcpthosts": b"r1\nr2\n", "morercpthosts": b"m1\n",
    "smtpgreeting": b"hi there\n", "smtproutes": b":relay\n", "timeoutconnect": b"7\n",
    "timeoutremote": b"8\n", "timeoutsmtpd": b"9\n", "virtualdomains": b"v:pre\n",
    "nameservers": b"9.9.9.9\n", "rcptcheck": b"1\n", "checkpassword": b"/bin/cp x\n",
    "servercert.pem": b"x\n", "frobnicate": b"1\n", "tcp.smtp.cdb": b"",
    "defaultdelivery": b"./Maildir/\n", "me": b"", "maxrcpt": b"100\n",
    "timeoutsmtpdsession": b"600\n", "mindatarate": b"0\n", "maxerrors": b"5\n",
    "maxjunk": b"50\n", "maxauthfail": b"4\n", "authfaildelay": b"1\n",
    "dkimdomains": b"a.example:s1,s2\n", "authservid": b"mx.example\n",
    "srs_domain": b"srs.example\n", "srs_secrets": b"do not print me\n", "srs_maxage": b"7\n",
    "bounceformat": b"qsbmf\n", "timeoutdns": b"3\n", "dnsbudget": b"12\n", "spfbehavior": b"3\n",
    "spfexp": b"go away %{i}\n", "dmarcenforce": b"1\n", "helocheck": b"3\n",
    "senderdomaincheck": b"1\n",
}


def body(out: bytes) -> bytes:
    return out.split(b"\n\n", 1)[1]


def test_golden_defaults(home):
    r = run(home, "qmail-showctl")
    assert r.returncode == 0 and body(r.stdout) == (DATA / "defaults.ref").read_bytes()


def test_golden_every_file_set(home):
    for name, data in EVERY.items():
        control(home, name, data)
    r = run(home, "qmail-showctl")
    assert r.returncode == 0 and body(r.stdout) == (DATA / "every.ref").read_bytes()


def test_golden_no_controls_at_all(home):
    for path in (home / "control").iterdir():
        path.unlink()
    control(home, "morercpthosts", "m1\nm2\n")
    r = run(home, "qmail-showctl")
    assert r.returncode == 0 and body(r.stdout) == (DATA / "empty.ref").read_bytes()


def test_golden_readers(home):
    r = run(home, "qmail-showctl", ["--readers"])
    assert r.returncode == 0 and body(r.stdout) == (DATA / "readers.ref").read_bytes()


def test_every_described_control_has_its_paragraph_and_readers(home):
    r = run(home, "qmail-showctl", ["--readers"])
    p = paragraphs(r.stdout)
    described = [f for f in controlfiles.FILES if f.show is not None]
    assert list(p) == [f.name.encode() for f in described]
    for f in described:
        assert p[f.name.encode()].endswith(f"\n  (read by {', '.join(f.readers)})".encode())


def test_unreadable_files_say_oops(home):
    for name in ("badmailfrom", "bouncehost", "concurrencylocal", "rcpthosts"):
        (home / "control" / name).unlink(missing_ok=True)
        (home / "control" / name).mkdir()
    p = paragraphs(run(home, "qmail-showctl").stdout)
    for name in (b"badmailfrom", b"bouncehost", b"concurrencylocal", b"rcpthosts"):
        assert p[name] == name + b": Oops! Trouble reading this file."
    # an unreadable rcpthosts counts as present, as in qmail-showctl.c
    assert p[b"morercpthosts"] == b"morercpthosts: (Default.) No effect."
