"""qmail-local run as a real process on a real message file, in a real home directory."""
from __future__ import annotations

import mailbox
import os
import re
import resource
import subprocess
from pathlib import Path

import pytest

from conftest import unsrs
from qpy import envelope, queuedir

MSG = b"Subject: test\nFrom: a@example.org\n\nFrom the start\n>From quoted\nbody\n"
DUMP = b"|env -0 > envdump\n"
VARS = (b"SENDER", b"NEWSENDER", b"RECIPIENT", b"USER", b"HOME", b"LOCAL", b"HOST", b"HOST2",
        b"HOST3", b"HOST4", b"EXT", b"EXT2", b"EXT3", b"EXT4", b"DEFAULT", b"DTLINE", b"RPLINE",
        b"UFLINE", b"PWD", b"QPYTEST")


@pytest.fixture
def user(tmp_path: Path) -> Path:
    """A home directory (0755) with an empty Maildir."""
    h = tmp_path / "user"
    h.mkdir()
    h.chmod(0o755)
    for sub in ("tmp", "new", "cur"):
        (h / "Maildir" / sub).mkdir(parents=True)
    return h


def dotqmail(home: Path, name: str, text: bytes | str, mode: int = 0o644) -> Path:
    p = home / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    p.chmod(mode)
    return p


def local(qhome: Path, user: Path, *, local_: str = "joe", dash: str = "", ext: str = "",
          domain: str = "example.com", sender: str = "s@example.org", default: str = "./Maildir/",
          message: bytes = MSG, flags: tuple[str, ...] = (), env: dict[str, str] | None = None,
          argv: list[str] | None = None, **kw) -> subprocess.CompletedProcess:
    """Run qmail-local with a seekable message file on fd 0."""
    msgfile = user.parent / "message"
    msgfile.write_bytes(message)
    args = argv if argv is not None else [*flags, "--", "joe", str(user), local_, dash, ext, domain,
                                          sender, default]
    with open(msgfile, "rb") as f:
        return subprocess.run([str(qhome / "bin" / "qmail-local"), *args], stdin=f,
                              capture_output=True, timeout=30,
                              env=dict(os.environ, **(env or {})), **kw)


def maildir_messages(path: Path) -> list[bytes]:
    md = mailbox.Maildir(str(path), factory=None, create=False)
    return [md.get_bytes(k) for k in sorted(md.keys())]


def env_of(path: Path) -> dict[bytes, bytes]:
    """The variables of VARS in an `env -0` dump."""
    pairs = [item.split(b"=", 1) for item in path.read_bytes().split(b"\0") if b"=" in item]
    return {k: v for k, v in pairs if k in VARS}


def queued(qhome: Path) -> list[tuple[envelope.Envelope, bytes]]:
    """Every message in the queue: (envelope from todo/, mess file)."""
    q = qhome / "queue"
    out = []
    for msgid in queuedir.scan_flat(str(q), "todo"):
        recs = envelope.records((q / queuedir.todo(msgid)).read_bytes())
        env = envelope.Envelope(recs[2][1:], [r[1:] for r in recs[3:]])
        out.append((env, (q / queuedir.mess(msgid)).read_bytes()))
    return out


# -- Maildir and mbox -----------------------------------------------------------------------

def test_default_delivery_to_maildir(home, user):
    r = local(home, user)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"did 1+0+0\n", b"")
    assert maildir_messages(user / "Maildir") == [
        b"Return-Path: <s@example.org>\nDelivered-To: joe@example.com\n" + MSG]
    assert os.listdir(user / "Maildir" / "tmp") == []
    (name,) = os.listdir(user / "Maildir" / "new")
    assert re.fullmatch(r"\d+\.\d+\..+", name)
    assert (user / "Maildir" / "new" / name).stat().st_mode & 0o777 == 0o600


def test_utf8_sender_is_not_quoted_in_return_path(home, user):
    r = local(home, user, sender="jörg@example.org")
    assert r.returncode == 0, r.stderr
    assert maildir_messages(user / "Maildir") == [
        "Return-Path: <jörg@example.org>\nDelivered-To: joe@example.com\n".encode() + MSG]


def test_two_maildir_lines_give_two_distinct_files(home, user):
    dotqmail(user, ".qmail", "./Maildir/\n./Maildir/\n")
    r = local(home, user)
    assert r.stdout == b"did 2+0+0\n"
    assert len(maildir_messages(user / "Maildir")) == 2


def test_mbox_quoting_from_line_and_separator(home, user):
    dotqmail(user, ".qmail", "./Mailbox\n")
    assert local(home, user, message=MSG).returncode == 0
    r = local(home, user, sender="", message=b"Subject: two\n\nno final newline")
    assert r.returncode == 0
    data = (user / "Mailbox").read_bytes()
    assert (user / "Mailbox").stat().st_mode & 0o777 == 0o600
    first, second = re.split(rb"(?m)^(?=From [^\n]* \w{3} \w{3} \d\d \d\d:\d\d:\d\d \d{4}$)", data)[1:]
    assert re.fullmatch(rb"From s@example.org \w{3} \w{3} \d\d \d\d:\d\d:\d\d \d{4}\n"
                        rb"Return-Path: <s@example.org>\nDelivered-To: joe@example.com\n"
                        rb"Subject: test\nFrom: a@example.org\n\n>From the start\n>>From quoted\n"
                        rb"body\n\n", first)
    assert second.startswith(b"From MAILER-DAEMON ")
    assert second.endswith(b"Return-Path: <>\nDelivered-To: joe@example.com\n"
                           b"Subject: two\n\nno final newline\n\n")
    box = mailbox.mbox(str(user / "Mailbox"), create=False)
    assert [m["Subject"] for m in box] == ["test", "two"]


def test_mbox_write_error_truncates_back(home, user):
    dotqmail(user, ".qmail", "./Mailbox\n")
    (user / "Mailbox").write_bytes(b"From x Thu Jan 01 00:00:00 1970\n\nold\n\n")
    before = (user / "Mailbox").read_bytes()

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))
    r = local(home, user, message=b"Subject: big\n\n" + b"y" * 5000 + b"\n", preexec_fn=limit)
    assert r.returncode == 111
    assert r.stderr.startswith(b"Unable to write ./Mailbox: ")
    assert (user / "Mailbox").read_bytes() == before


def test_maildir_write_error_leaves_nothing(home, user):
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))
    r = local(home, user, message=b"Subject: big\n\n" + b"y" * 5000 + b"\n", preexec_fn=limit)
    assert (r.returncode, r.stderr) == (111, b"Temporary error on maildir delivery. (#4.3.0)\n")
    assert os.listdir(user / "Maildir" / "tmp") == os.listdir(user / "Maildir" / "new") == []


def test_missing_maildir_is_temporary(home, user):
    r = local(home, user, default="./Nope/")
    assert (r.returncode, r.stderr) == (111, b"Unable to chdir to maildir. (#4.2.1)\n")


# -- programs and the environment ---------------------------------------------------------

def test_program_environment(home, user):
    dotqmail(user, ".qmail-list-default", DUMP)
    r = local(home, user, local_="joe-list-a.b-c", dash="-", ext="List-A.b-C",
              domain="mx.a.b.example", sender="we ird@example.org", env={"QPYTEST": "kept"})
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"did 0+0+1\n"
    env = env_of(user / "envdump")
    assert re.fullmatch(rb"From we-ird@example.org \w{3} \w{3} \d\d \d\d:\d\d:\d\d \d{4}\n",
                        env.pop(b"UFLINE"))
    assert env == {
        b"SENDER": b"we ird@example.org", b"NEWSENDER": b"we ird@example.org",
        b"RECIPIENT": b"joe-list-a.b-c@mx.a.b.example", b"USER": b"joe", b"HOME": str(user).encode(),
        b"PWD": str(user).encode(), b"LOCAL": b"joe-list-a.b-c", b"HOST": b"mx.a.b.example",
        b"HOST2": b"mx.a.b", b"HOST3": b"mx.a", b"HOST4": b"mx", b"EXT": b"List-A.b-C",
        b"EXT2": b"A.b-C", b"EXT3": b"C", b"EXT4": b"", b"DEFAULT": b"A.b-C",
        b"DTLINE": b"Delivered-To: joe-list-a.b-c@mx.a.b.example\n",
        b"RPLINE": b'Return-Path: <"we ird"@example.org>\n', b"QPYTEST": b"kept"}


def test_program_gets_the_message_from_the_start(home, user):
    dotqmail(user, ".qmail", "./Maildir/\n|cat > got; echo out; echo err >&2\n")
    r = local(home, user)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"out\ndid 1+0+1\n", b"err\n")
    assert (user / "got").read_bytes() == MSG


@pytest.mark.parametrize("code,expect", [(0, 0), (100, 100), (64, 100), (65, 100), (70, 100),
                                         (76, 100), (77, 100), (78, 100), (112, 100), (111, 111),
                                         (1, 111), (75, 111), (99, 0)])
def test_program_exit_codes(home, user, code, expect):
    dotqmail(user, ".qmail", f"|echo ran; exit {code}\n./Maildir/\n")
    r = local(home, user)
    assert r.returncode == expect
    delivered = len(maildir_messages(user / "Maildir"))
    if code == 0:
        assert (r.stdout, delivered) == (b"ran\ndid 1+0+1\n", 1)
    elif code == 99:                     # ok, but the remaining lines are skipped
        assert (r.stdout, delivered) == (b"ran\ndid 0+0+1\n", 0)
    else:
        assert (r.stdout, r.stderr, delivered) == (b"ran\n", b"", 0)


def test_program_killed_is_temporary(home, user):
    dotqmail(user, ".qmail", "|kill -9 $$\n")
    r = local(home, user)
    assert (r.returncode, r.stderr) == (111, b"Aack, child crashed. (#4.3.0)\n")


def test_program_sigpipe_is_default(home, user):
    dotqmail(user, ".qmail", "|sh -c 'kill -PIPE $$; exit 0'; echo status=$?\n")
    r = local(home, user)
    assert (r.returncode, r.stdout) == (0, b"status=141\ndid 0+0+1\n")


# -- forwards -------------------------------------------------------------------------------

def test_forwards_are_queued_once_with_delivered_to(home, user):
    dotqmail(user, ".qmail", "# comment\n&one@example.net\ntwo@example.net  \n+ignored\n")
    r = local(home, user)
    assert r.returncode == 0, r.stderr
    m = re.fullmatch(rb"did 0\+2\+0\nqp (\d+)\n", r.stdout)
    assert m
    ((env, mess),) = queued(home)
    assert (unsrs(env.sender), env.recipients) == (b"s@example.org",
                                                   [b"one@example.net", b"two@example.net"])
    assert re.match(rb"Received: \(qmail %s invoked by uid \d+\); .*\n" % m.group(1), mess)
    assert mess.split(b"\n", 1)[1] == b"Delivered-To: joe@example.com\n" + MSG


def test_newsender_owner_and_verp(home, user):
    dotqmail(user, ".qmail-list", "&member@example.net\n")
    dotqmail(user, ".qmail-list-owner", "&boss@example.net\n")
    r = local(home, user, local_="joe-list", dash="-", ext="list", domain="lists.example")
    assert r.returncode == 0
    assert unsrs(queued(home)[0][0].sender) == b"joe-list-owner@lists.example"
    dotqmail(user, ".qmail-list-owner-default", "&boss@example.net\n")
    for msgid in queuedir.scan_flat(str(home / "queue"), "todo"):
        os.unlink(home / "queue" / queuedir.todo(msgid))
    local(home, user, local_="joe-list", dash="-", ext="list", domain="lists.example")
    assert queued(home)[0][0].sender == b"joe-list-owner-@lists.example-@[]"
    for msgid in queuedir.scan_flat(str(home / "queue"), "todo"):
        os.unlink(home / "queue" / queuedir.todo(msgid))
    local(home, user, local_="joe-list", dash="-", ext="list", domain="lists.example", sender="")
    assert queued(home)[0][0].sender == b""


def test_forwards_before_exit_99_are_still_sent(home, user):
    dotqmail(user, ".qmail", "&one@example.net\n|exit 99\n&two@example.net\n")
    r = local(home, user)
    assert r.returncode == 0
    assert r.stdout.startswith(b"did 0+1+1\nqp ")
    assert queued(home)[0][0].recipients == [b"one@example.net"]


def test_forward_refused_by_the_queue(home, user, tmp_path):
    qq = tmp_path / "qq"
    qq.write_text("#!/bin/sh\ncat >/dev/null\nexit 31\n")
    qq.chmod(0o755)
    dotqmail(user, ".qmail", "&one@example.net\n")
    r = local(home, user, env={"QMAILQUEUE": str(qq)})
    assert (r.returncode, r.stderr) == (
        100, b"Unable to forward message: mail server permanently rejected message (#5.3.0).\n")


# -- which file -----------------------------------------------------------------------------

@pytest.mark.parametrize("ext,files,chosen,default", [
    ("a-b-c", [".qmail-a-b-c", ".qmail-a-b-default", ".qmail-default"], ".qmail-a-b-c", None),
    ("a-b-c", [".qmail-a-b-default", ".qmail-a-default", ".qmail-default"], ".qmail-a-b-default", b"c"),
    ("a-b-c", [".qmail-a-default", ".qmail-default"], ".qmail-a-default", b"b-c"),
    ("A.B-c", [".qmail-a:b-default"], ".qmail-a:b-default", b"c"),
    ("a-b-", [".qmail-a-b-default", ".qmail-default"], ".qmail-a-b-default", b""),
    ("x", [".qmail-default"], ".qmail-default", b"x"),
    ("def-Default", [".qmail-def-default"], ".qmail-def-default", b"Default"),
])
def test_dot_qmail_search(home, user, ext, files, chosen, default):
    for name in files:
        dotqmail(user, name, f"|echo {name}; echo \"D=${{DEFAULT-unset}}\"\n")
    r = local(home, user, local_="joe-" + ext, dash="-", ext=ext)
    assert r.returncode == 0, r.stderr
    shown = b"unset" if default is None else default
    assert r.stdout == chosen.encode() + b"\nD=" + shown + b"\ndid 0+0+1\n"


def test_no_file_with_dash_is_permanent(home, user):
    r = local(home, user, local_="joe-x", dash="-", ext="x")
    assert (r.returncode, r.stderr) == (100, b"Sorry, no mailbox here by that name. (#5.1.1)\n")


def test_empty_file_means_default_delivery(home, user):
    dotqmail(user, ".qmail-x", b"")
    r = local(home, user, local_="joe-x", dash="-", ext="x")
    assert r.stdout == b"did 1+0+0\n"


def test_non_regular_candidate_is_skipped(home, user):
    (user / ".qmail-x").mkdir()
    dotqmail(user, ".qmail-default", "|echo default\n")
    r = local(home, user, local_="joe-x", dash="-", ext="x")
    assert r.stdout == b"default\ndid 0+0+1\n"


@pytest.mark.parametrize("ext", ["x/../../outside", "../outside", "x/../../../etc/passwd"])
def test_extension_cannot_reach_outside_home(home, user, ext):
    (user / ".qmail-x").mkdir()
    (user / ".qmail-..").mkdir()
    outside = user.parent / "outside"
    outside.write_text("|echo escaped\n")
    outside.chmod(0o644)
    r = local(home, user, local_="joe-" + ext, dash="-", ext=ext)
    assert (r.returncode, r.stderr) == (100, b"Sorry, no mailbox here by that name. (#5.1.1)\n")
    dotqmail(user, ".qmail-default", "|echo default=$DEFAULT\n")
    r = local(home, user, local_="joe-" + ext, dash="-", ext=ext)
    assert r.stdout == b"default=" + ext.encode() + b"\ndid 0+0+1\n"


# -- safety ---------------------------------------------------------------------------------

def test_loop_detection(home, user):
    looping = b"Received: x\nDelivered-To: joe@example.com\nSubject: t\n\nbody\n"
    r = local(home, user, message=looping)
    assert (r.returncode, r.stderr) == (
        100, b"This message is looping: it already has my Delivered-To line. (#5.4.6)\n")
    in_body = b"Subject: t\n\nDelivered-To: joe@example.com\n"
    assert local(home, user, message=in_body).returncode == 0
    other_case = b"delivered-to: joe@example.com\n\nx\n"
    assert local(home, user, message=other_case).returncode == 0


@pytest.mark.parametrize("mode,text", [
    (0o757, b"Uh-oh: home directory is writable. (#4.7.0)\n"),
    (0o1755, b"Home directory is sticky: user is editing his .qmail file. (#4.2.1)\n")])
def test_unsafe_home(home, user, mode, text):
    user.chmod(mode)
    r = local(home, user)
    assert (r.returncode, r.stderr) == (111, text)
    assert maildir_messages(user / "Maildir") == []


def test_world_writable_dot_qmail(home, user):
    dotqmail(user, ".qmail", "./Maildir/\n", mode=0o646)
    r = local(home, user)
    assert (r.returncode, r.stderr) == (111, b"Uh-oh: .qmail file is writable. (#4.7.0)\n")


@pytest.mark.parametrize("text,err", [
    ("&fw@example.net\n./Maildir/\n", b"Uh-oh: .qmail has file delivery but has x bit set. (#4.7.0)\n"),
    ("|true\n", b"Uh-oh: .qmail has prog delivery but has x bit set. (#4.7.0)\n")])
def test_execute_bit_means_forward_only(home, user, text, err):
    dotqmail(user, ".qmail", text, mode=0o744)
    r = local(home, user)
    assert (r.returncode, r.stderr) == (111, err)
    assert queued(home) == []


def test_plus_list_makes_the_rest_forward_only(home, user):
    dotqmail(user, ".qmail", "./Maildir/\n+list\n|true\n")
    r = local(home, user)
    assert (r.returncode, r.stderr) == (
        111, b"Uh-oh: .qmail has prog delivery but has x bit set. (#4.7.0)\n")


def test_blank_first_line(home, user):
    dotqmail(user, ".qmail", "  \n./Maildir/\n")
    r = local(home, user)
    assert (r.returncode, r.stderr) == (111, b"Uh-oh: first line of .qmail file is blank. (#4.2.1)\n")
    dotqmail(user, ".qmail", "./Maildir/\n\n\n")
    assert local(home, user).stdout == b"did 1+0+0\n"


# -- -n and usage ---------------------------------------------------------------------------

def test_dash_n_prints_instead_of_delivering(home, user):
    dotqmail(user, ".qmail", "# c\n./Maildir/\n./Mailbox\n/abs/box\n|prog arg  \n&fw@x\nbare@y\n+list\n")
    looping = b"Delivered-To: joe@example.com\n\n"
    r = local(home, user, flags=("-n",), message=looping)
    assert (r.returncode, r.stderr) == (0, b"")
    assert r.stdout == (b"maildir ./Maildir/\nmbox ./Mailbox\nmbox /abs/box\nprogram prog arg\n"
                        b"forward fw@x\nforward bare@y\ndid 3+2+1\n")
    assert maildir_messages(user / "Maildir") == [] and queued(home) == []
    dotqmail(user, ".qmail", "./Maildir/\n")
    r = local(home, user, flags=("-nN",))               # -N turns delivery back on
    assert r.stdout == b"did 1+0+0\n"
    assert len(maildir_messages(user / "Maildir")) == 1


@pytest.mark.parametrize("argv", [[], ["-x", "a", "/h", "l", "", "", "d", "s", "./Maildir/"],
                                  ["a", "relative", "l", "", "", "d", "s", "./Maildir/"],
                                  ["a", "/h", "l", "", "", "d", "s"],
                                  ["a", "/h", "l", "", "", "d", "s", "x", "extra"]])
def test_usage(home, user, argv):
    r = local(home, user, argv=argv)
    assert r.returncode == 100
    assert r.stderr.startswith(b"qmail-local: usage: qmail-local [ -nN ]")


def test_missing_home_is_temporary(home, user):
    r = local(home, user, argv=["joe", str(user / "nope"), "joe", "", "", "d", "s", "./Maildir/"])
    assert r.returncode == 111
    assert r.stderr.startswith(b"Unable to switch to " + str(user / "nope").encode())
