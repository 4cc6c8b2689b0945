"""qmail-qmqpd on real pipes and under tcpserver: one QMQP request in, one netstring out, queue files."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from qpy.auto import SPLIT

MESSAGE = b"From: a@example.test\nSubject: qmqp\n\nbody line\n\x00\xff binary\r\n.\n"
DATE = rb"[1-9]\d? (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d -0000"
CLIENT = {"TCPREMOTEIP": "192.0.2.7", "TCPREMOTEHOST": "client.example", "TCPLOCALHOST": "qmqp.test",
          "TCPREMOTEINFO": "joe"}


def ns(data: bytes) -> bytes:
    return b"%d:%s," % (len(data), data)


def request(message: bytes, sender: bytes, *rcpts: bytes) -> bytes:
    return ns(ns(message) + ns(sender) + b"".join(ns(r) for r in rcpts))


def queued(home: Path) -> list[tuple[bytes, bytes]]:
    """(mess file, todo file) of every queued message."""
    out = []
    for todo in sorted((home / "queue" / "todo").iterdir()):
        mess = home / "queue" / "mess" / str(int(todo.name) % SPLIT) / todo.name
        out.append((mess.read_bytes(), todo.read_bytes()))
    return out


def qmqpd(home: Path, data: bytes, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("TCP")}
    full.update(QMAILHOME=str(home), **(env if env is not None else CLIENT))
    return subprocess.run([str(home / "bin" / "qmail-qmqpd")], input=data, capture_output=True,
                          env=full, timeout=60)


def test_queues_the_message_with_a_qmqp_received_line(home):
    r = qmqpd(home, request(MESSAGE, b"sender@example.test", b"a@x.test", b"b@y.test"))
    assert r.returncode == 0 and r.stderr == b""
    m = re.fullmatch(rb"(\d+):Kok (\d+) qp (\d+),", r.stdout)
    assert m and int(m.group(1)) == len(r.stdout) - len(m.group(1)) - 2
    [(mess, todo)] = queued(home)
    qp = int(m.group(3))
    head = re.match(rb"Received: \(qmail %d invoked by uid \d+\); " % qp + DATE + rb"\n"
                    rb"Received: from client\.example \(joe@192\.0\.2\.7\)\n"
                    rb"  by qmqp\.test with QMQP; " + DATE + rb"\n", mess)
    assert head, mess
    assert mess[head.end():] == MESSAGE
    assert todo == b"u%d\0p%d\0Fsender@example.test\0Ta@x.test\0Tb@y.test\0" % (os.getuid(), qp)


def test_unknown_client_and_empty_sender(home):
    r = qmqpd(home, request(b"x\n", b"", b"a@x.test"), env={})
    assert b":Kok " in r.stdout
    [(mess, todo)] = queued(home)
    assert b"Received: from unknown (unknown)\n  by unknown with QMQP; " in mess
    assert todo.endswith(b"\0F\0Ta@x.test\0")


@pytest.mark.parametrize("sender,rcpt", [(b"s@x", b"a\0b@x"), (b"s" * 1000, b"a@x"), (b"s\0", b"a@x"),
                                         (b"s@x", b"r" * 1000)])
def test_bad_addresses_are_refused_and_nothing_is_queued(home, sender, rcpt):
    r = qmqpd(home, request(MESSAGE, sender, b"ok@x.test", rcpt))
    assert (r.returncode, r.stdout) == (0, ns(b"Dsorry, I can't accept addresses like that (#5.1.3)"))
    assert queued(home) == []


@pytest.mark.parametrize("data,code", [
    (b"x:", 100),                                   # non-digit length
    (b"5:" + ns(b"abcdef"), 100),                   # reads past the outer netstring
    (ns(ns(b"m") + ns(b"s"))[:-1] + b";", 100),      # outer comma missing
    (b"10:1:m;0:,0:,,", 100),                       # inner comma missing
    (b"0" * 101 + b":", 100),                       # more than 100 bytes for the outer length
    (b"3000000000:", 111),                          # length over the limit
    (b"", 0),                                       # client hung up
    (b"20:5:hello,", 0),                            # hung up halfway
])
def test_protocol_errors_exit_silently(home, data, code):
    r = qmqpd(home, data)
    assert (r.returncode, r.stdout, r.stderr) == (code, b"", b"")
    assert queued(home) == []


def test_zero_recipients_is_a_legal_request(home):
    r = qmqpd(home, request(b"x\n", b"s@x"))
    assert b":Kok " in r.stdout
    assert queued(home)[0][1].endswith(b"\0Fs@x\0")


def test_queue_failure_is_reported_as_its_text(home, tmp_path):
    qq = tmp_path / "refuse"
    qq.write_text("#!/bin/sh\ncat >/dev/null\nexit 31\n")
    qq.chmod(0o755)
    r = qmqpd(home, request(MESSAGE, b"s@x", b"a@x"), env={**CLIENT, "QMAILQUEUE": str(qq)})
    assert r.stdout == ns(b"Dmail server permanently rejected message (#5.3.0)")
    assert queued(home) == []


def test_more_recipients_than_maxrcpt_is_a_permanent_refusal(home):
    """A new instance's control/maxrcpt, 1000: one more and nothing is queued (QMQP has one
    reply per message, RFC 3463's 5.5.3)."""
    rcpts = [b"r%d@x.test" % i for i in range(1001)]
    r = qmqpd(home, request(b"x\n", b"s@x.test", *rcpts[:1000]))
    assert b":Kok " in r.stdout and len(queued(home)) == 1
    r = qmqpd(home, request(b"x\n", b"s@x.test", *rcpts))
    assert (r.returncode, r.stdout) == (0, b"36:Dsorry, too many recipients (#5.5.3),")
    assert len(queued(home)) == 1


def test_maxrcpt_env_overrides_and_zero_is_no_limit(home):
    (home / "control" / "maxrcpt").write_text("0\n")
    r = qmqpd(home, request(b"x\n", b"s@x.test", *[b"r%d@x.test" % i for i in range(3000)]))
    assert b":Kok " in r.stdout
    r = qmqpd(home, request(b"x\n", b"s@x.test", b"a@x.test", b"b@x.test", b"c@x.test"),
              {**CLIENT, "MAXRCPT": "2"})
    assert r.stdout == b"36:Dsorry, too many recipients (#5.5.3),"
    assert len(queued(home)) == 1
