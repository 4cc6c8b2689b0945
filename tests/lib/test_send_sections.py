"""qmail-send's sections driven directly, in-process, on a real queue with a real
qmail-clean on real pipes: preprocessing (send_todo), completion and bounces
(send_done), the per-message record (send_info) and the report path (send_jobs)."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from qpy import log, qmailq, queuedir
from qpy.send_comm import Comm
from qpy.send_core import Core, Flags, read_controls
from qpy.send_done import Completion
from qpy.send_info import Messages
from qpy.send_jobs import Deliveries
from qpy.send_queues import Queues
from qpy.send_todo import Todo


class Sections:
    """Every section of one scheduler, with qmail-clean on a pipe and the log in a file."""

    def __init__(self, home: Path, tmp: Path) -> None:
        self.home = home
        to_c, from_c = os.pipe(), os.pipe()
        self.clean = subprocess.Popen([str(home / "bin" / "qmail-clean")], stdin=to_c[0],
                                      stdout=from_c[1], env=dict(os.environ, QMAILHOME=str(home)))
        os.close(to_c[0])
        os.close(from_c[1])
        self.logpath = tmp / "log"
        self.logfd = os.open(self.logpath, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.cwd = os.getcwd()
        os.chdir(home / "queue")
        core = Core(read_controls(), log.Log(self.logfd), Flags(), int(time.time()))
        self.core = core
        self.comm = Comm(core, [2, 2])
        self.comm.cleaner.fd_out, self.comm.cleaner.fd_in = to_c[1], from_c[0]
        self.queues = Queues(core)
        self.messages = Messages()
        self.done = Completion(core, self.comm, self.queues, self.messages)
        self.jobs = Deliveries(core, self.comm, self.queues, self.messages, self.done)
        self.todo = Todo(core, self.comm, self.queues, self.messages)

    def log(self) -> list[str]:
        return self.logpath.read_bytes().decode("latin-1").splitlines()

    def close(self) -> None:
        os.chdir(self.cwd)
        os.close(self.comm.cleaner.fd_out)
        self.clean.wait(timeout=30)
        os.close(self.comm.cleaner.fd_in)
        os.close(self.logfd)


@pytest.fixture
def sections(home, tmp_path):
    s = Sections(home, tmp_path)
    yield s
    s.close()


def queue(home: Path, sender: bytes, rcpts: list[bytes]) -> int:
    """Queue with the real queue writer; the new id."""
    q = str(home / "queue")
    before = set(queuedir.scan_flat(q, "todo"))
    assert qmailq.queue_message(b"Subject: t\n\nhello\n", sender, rcpts) == ""
    (msgid,) = set(queuedir.scan_flat(q, "todo")) - before
    return msgid


def q(home: Path, rel: str) -> Path:
    return home / "queue" / rel


def test_preprocessing_writes_info_and_channel_files_then_leaves_todo(home, sections):
    msgid = queue(home, b"a@x.example", [b"u@test.example", b"r@remote.example"])
    sections.todo.do(readable=set())
    assert q(home, queuedir.info(msgid)).read_bytes() == b"Fa@x.example\0"
    assert q(home, queuedir.local(msgid)).read_bytes() == b"Tu@test.example\0"
    assert q(home, queuedir.remote(msgid)).read_bytes() == b"Tr@remote.example\0"
    assert not q(home, queuedir.todo(msgid)).exists()
    assert not q(home, queuedir.intd(msgid)).exists()
    assert [m for _, m in sections.queues.chan[0]] == [msgid]
    assert [m for _, m in sections.queues.chan[1]] == [msgid]
    record = sections.messages.get(msgid)
    assert (record.sender, record.local_waiting, record.bounced) == (b"a@x.example", True, False)
    assert record.birth == int(os.stat(q(home, queuedir.info(msgid))).st_mtime)
    assert sections.messages.local_waiting == 1
    log = sections.log()
    assert f"new msg {msgid}" in log
    assert any(line.startswith(f"info msg {msgid}: bytes ") and "from <a@x.example>" in line
               for line in log)


def test_preprocessing_unlinks_leftovers_of_an_earlier_attempt(home, sections):
    msgid = queue(home, b"a@x.example", [b"r@remote.example"])
    q(home, queuedir.info(msgid)).write_bytes(b"Fstale\0")
    q(home, queuedir.local(msgid)).write_bytes(b"Tstale\0")
    sections.todo.do(readable=set())
    assert q(home, queuedir.info(msgid)).read_bytes() == b"Fa@x.example\0"
    assert not q(home, queuedir.local(msgid)).exists()
    assert q(home, queuedir.remote(msgid)).read_bytes() == b"Tr@remote.example\0"
    assert not q(home, queuedir.todo(msgid)).exists()


def test_a_message_without_recipients_goes_straight_to_completion(home, sections):
    msgid = queue(home, b"a@x.example", [])
    sections.todo.do(readable=set())
    assert [m for _, m in sections.queues.done] == [msgid]
    sections.done.do()
    sections.comm.clean_collect(block=True)
    assert f"end msg {msgid}" in sections.log()
    assert not q(home, queuedir.info(msgid)).exists()
    assert not q(home, queuedir.mess(msgid)).exists()


def test_completion_of_a_failed_recipient_injects_one_bounce_and_cleans(home, sections):
    msgid = queue(home, b"a@x.example", [b"r@remote.example"])
    sections.todo.do(readable=set())
    sections.done.addbounce(msgid, b"r@remote.example", b"Sorry, no such user. (#5.1.1)\n")
    assert sections.messages.get(msgid).bounced
    assert b"<r@remote.example>:\nSorry" in q(home, queuedir.bounce(msgid)).read_bytes()
    # the remote job finished: its channel file goes, then the message is done
    os.unlink(q(home, queuedir.remote(msgid)))
    before = set(queuedir.scan_flat(str(home / "queue"), "todo"))
    sections.done.messdone(msgid)
    sections.comm.clean_collect(block=True)
    (bounce_id,) = set(queuedir.scan_flat(str(home / "queue"), "todo")) - before
    todo = q(home, queuedir.todo(bounce_id)).read_bytes()
    assert b"F\0" in todo and b"Ta@x.example\0" in todo
    bounce = q(home, queuedir.mess(bounce_id)).read_bytes()
    assert b"<r@remote.example>:" in bounce and b"hello" in bounce
    assert not q(home, queuedir.bounce(msgid)).exists()
    assert not q(home, queuedir.info(msgid)).exists()
    assert not q(home, queuedir.mess(msgid)).exists()
    assert sections.messages.get(msgid) is None
    log = sections.log()
    assert any(line.startswith(f"bounce msg {msgid} qp ") for line in log)
    assert log[-1] == f"end msg {msgid}"


def test_completion_without_a_record_looks_at_the_files(home, sections):
    msgid = queue(home, b"a@x.example", [b"u@test.example"])
    sections.todo.do(readable=set())
    sections.messages.forget(msgid)         # as after a restart
    sections.done.messdone(msgid)           # local/<id> still there: nothing happens
    assert q(home, queuedir.info(msgid)).exists()
    assert f"end msg {msgid}" not in sections.log()
    os.unlink(q(home, queuedir.local(msgid)))
    sections.done.messdone(msgid)
    sections.comm.clean_collect(block=True)
    assert not q(home, queuedir.info(msgid)).exists()
    assert not q(home, queuedir.mess(msgid)).exists()


def test_reports_mark_records_done_and_the_last_one_finishes_the_message(home, sections):
    msgid = queue(home, b"a@x.example", [b"r1@remote.example", b"r2@remote.example"])
    sections.todo.do(readable=set())
    cmd_r, cmd_w = os.pipe()
    sp = sections.comm.spawners[1]
    sp.fd_out = cmd_w
    sections.jobs.do()                      # both recipients handed to the spawner
    commands = os.read(cmd_r, 65536)
    assert commands.count(b"r1@remote.example\0") == 1 and sp.used == 2
    sections.jobs.report(sp, bytes([0]) + b"Kr1 accepted")
    path = q(home, queuedir.remote(msgid))
    assert path.read_bytes() == b"Dr1@remote.example\0Tr2@remote.example\0"
    sections.jobs.report(sp, bytes([1]) + b"DNo such user (#5.1.1)")
    assert not path.exists()                # finished channel file given back
    assert [m for _, m in sections.queues.done] == [msgid]
    assert sections.messages.get(msgid).bounced
    os.close(cmd_r)
    os.close(cmd_w)


def test_many_recipients_are_preprocessed_and_passed_in_chunks(home, sections):
    """200 000 recipients: files written CHUNK by CHUNK, a pass reads its file a window at a
    time; records straddling the windows come out whole, at their exact offsets."""
    n = 200_000
    rcpts = [b"r%06d@remote%d.example" % (i, i % 3) for i in range(n)]
    msgid = queue(home, b"a@x.example", rcpts)
    sections.todo.do(readable=set())
    path = q(home, queuedir.remote(msgid))
    assert path.read_bytes() == b"".join(b"T" + r + b"\0" for r in rcpts)
    # mark every third record done, as earlier deliveries would have
    data = bytearray(path.read_bytes())
    offsets, pos = [], 0
    for i, r in enumerate(rcpts):
        offsets.append(pos)
        if i % 3 == 0:
            data[pos:pos + 1] = b"D"
        pos += len(r) + 2
    path.write_bytes(bytes(data))
    sections.queues.chan[1].pop()
    sections.queues.chan[1].add(msgid, 0)
    job_pass = sections.jobs.open_pass(1)
    seen = []
    while (found := job_pass.peek()) is not None:
        offset, record = found
        if record[:1] == b"T":
            seen.append((offset, record[1:]))
        job_pass.advance(record)
    job_pass.close()
    assert seen == [(offsets[i], r) for i, r in enumerate(rcpts) if i % 3]


def test_first_sweep_removes_crash_leftovers_but_never_a_message_being_written(home, sections):
    """S2 and S3 leftovers (a completion or a writer cut short by a crash) go at start-up;
    a message whose writer is still at work, and a queued one, are left alone."""
    from qpy.send_cleanup import Cleanup
    done = queue(home, b"a@x.example", [b"u@test.example"])      # completed: mess only left
    os.unlink(q(home, queuedir.todo(done)))
    os.unlink(q(home, queuedir.intd(done)))
    cut = queue(home, b"a@x.example", [b"u@test.example"])       # writer killed before todo/
    os.unlink(q(home, queuedir.todo(cut)))
    queued_id = queue(home, b"a@x.example", [b"u@test.example"])  # S4: a real message
    writing = qmailq.start()                                     # a writer still at work
    writing.put(b"Subject: slow\n\n")
    (busy,) = [int(n) for d in (home / "queue" / "mess").iterdir() for n in os.listdir(d)
               if int(n) not in (done, cut, queued_id)]
    cleanup = Cleanup(sections.core, sections.comm)
    cleanup.do()
    assert not q(home, queuedir.mess(done)).exists()
    assert not q(home, queuedir.mess(cut)).exists() and not q(home, queuedir.intd(cut)).exists()
    assert q(home, queuedir.mess(queued_id)).exists() and q(home, queuedir.todo(queued_id)).exists()
    assert q(home, queuedir.mess(busy)).exists()
    assert writing.close(b"a@x.example", [b"u@test.example"]) == ""     # and it is queued
    assert q(home, queuedir.todo(busy)).exists()
    cleanup.first, cleanup.nextrun = False, 0                    # a later sweep: 36 h rule only
    os.unlink(q(home, queuedir.todo(busy)))
    cleanup.do()
    assert q(home, queuedir.mess(busy)).exists()


def test_the_writer_holds_a_lock_on_the_mess_file_until_todo_is_linked(home, monkeypatch):
    import fcntl
    monkeypatch.chdir(home / "queue")
    job = qmailq.start()
    job.put(b"Subject: x\n\n")
    (msgid,) = [int(n) for d in (home / "queue" / "mess").iterdir() for n in os.listdir(d)]
    fd = os.open(queuedir.mess(msgid), os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert job.close(b"a@x.example", [b"u@test.example"]) == ""
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)              # released once queued
    finally:
        os.close(fd)
