"""qmail-qread lists a queue built with the real qmail-queue and preprocessed as qmail-send does."""
from __future__ import annotations

import os
import subprocess

from conftest import run
from qpy import qmailq, queuedir

WHEN = 1700000000  # 14 Nov 2023 22:13:20 UTC


def preprocess(home, msgid: int, sender: bytes, local: list[bytes], remote: list[bytes]) -> None:
    """Do qmail-send's preprocessing by hand (docs/queue.md §4): info, local, remote; drop todo/intd."""
    q = home / "queue"
    (q / queuedir.info(msgid)).write_bytes(b"F" + sender + b"\0")
    if local:
        (q / queuedir.local(msgid)).write_bytes(b"".join(b"T" + a + b"\0" for a in local))
    if remote:
        (q / queuedir.remote(msgid)).write_bytes(b"".join(b"T" + a + b"\0" for a in remote))
    os.unlink(q / queuedir.intd(msgid))
    os.unlink(q / queuedir.todo(msgid))
    os.utime(q / queuedir.info(msgid), (WHEN, WHEN))


def mark_done(home, chan: str, msgid: int, index: int) -> None:
    """Overwrite the T of record ``index`` with D, as qmail-send marks a finished delivery."""
    path = home / "queue" / chan / str(msgid % 23) / str(msgid)
    data = path.read_bytes()
    offset = 0
    for _ in range(index):
        offset = data.index(b"\0", offset) + 1
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"D")


def queue_one(home, body: bytes) -> int:
    before = set(os.listdir(home / "queue" / "todo"))
    assert qmailq.queue_message(body, b"x@y", [b"z@w"]) == ""
    [name] = set(os.listdir(home / "queue" / "todo")) - before
    return int(name)


def test_lists_deferred_messages_in_qmail_format(home):
    a = queue_one(home, b"Subject: a\n\nfirst\n")
    b = queue_one(home, b"Subject: b\n\nsecond message\n")
    preprocess(home, a, b"alice@example.com", [b"joe@test.example", b"ann@test.example"],
               [b"bob@far.example"])
    preprocess(home, b, b"", [], [b"r1@far.example", b"r2\x01@far.example"])
    mark_done(home, "local", a, 1)
    mark_done(home, "remote", b, 0)
    (home / "queue" / queuedir.bounce(b)).write_bytes(b"<r1@far.example>:\nSorry.\n\n")
    size_a = (home / "queue" / queuedir.mess(a)).stat().st_size
    size_b = (home / "queue" / queuedir.mess(b)).stat().st_size
    r = run(home, "qmail-qread")
    assert r.returncode == 0
    blocks = {
        a: (b"14 Nov 2023 22:13:20 GMT  #%d  %d  <alice@example.com> \n" % (a, size_a)
            + b"\tlocal\tjoe@test.example\n  done\tlocal\tann@test.example\n"
            + b"\tremote\tbob@far.example\n"),
        b: (b"14 Nov 2023 22:13:20 GMT  #%d  %d  <>  bouncing\n" % (b, size_b)
            + b"  done\tremote\tr1@far.example\n\tremote\tr2_@far.example\n"),
    }
    order = sorted([a, b], key=lambda i: (i % 23, i))
    assert r.stdout == blocks[order[0]] + blocks[order[1]]


def test_unpreprocessed_messages_are_not_listed_and_trouble_is_reported(home):
    queue_one(home, b"Subject: only todo\n\n")
    assert run(home, "qmail-qread").stdout == b""
    c = queue_one(home, b"x\n")
    preprocess(home, c, b"s@x.y", [b"l@x.y"], [])
    os.unlink(home / "queue" / queuedir.mess(c))
    r = run(home, "qmail-qread")
    assert (r.returncode, r.stdout) == (0, b"warning: trouble with #%d: No such file or directory\n" % c)


def test_missing_queue_is_fatal(home):
    os.rename(home / "queue", home / "elsewhere")
    r = run(home, "qmail-qread")
    assert (r.returncode, r.stdout) == (111, b"fatal: unable to chdir: No such file or directory\n")


def test_mailq_and_sendmail_bp_run_qmail_qread(home, tmp_path):
    c = queue_one(home, b"x\n")
    preprocess(home, c, b"s@x.y", [], [b"r@far.example"])
    expected = run(home, "qmail-qread").stdout
    assert expected.endswith(b"\tremote\tr@far.example\n")
    assert run(home, "sendmail", ["-bp"]).stdout == expected
    mailq = tmp_path / "mailq"
    mailq.symlink_to(home / "bin" / "sendmail")
    r = subprocess.run([str(mailq)], capture_output=True, timeout=60,
                       env=dict(os.environ, QMAILHOME=str(home)))
    assert (r.returncode, r.stdout) == (0, expected)
