"""qpy.spare on a real filesystem, and qmail-queue / qmail-clean using spares as real processes."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qpy import spare
from qpy.auto import SPLIT

OLD = time.time() - 3 * 86400


def fill(pool: Path, count: int, data: bytes = b"old" * 100) -> list[int]:
    """``count`` finished files given to ``pool``; return their inode numbers."""
    work = pool.parent / "work"
    work.mkdir(exist_ok=True)
    p = spare.Pool(str(pool))
    inos = []
    for i in range(count):
        f = work / f"f{i}"
        f.write_bytes(data)
        os.chmod(f, 0o600)
        os.utime(f, (OLD, OLD))
        inos.append(f.stat().st_ino)
        p.give(str(f))
    return inos


def test_give_names_the_spare_by_its_inode_and_take_reuses_it(tmp_path):
    pool = tmp_path / "spareq"
    pool.mkdir()
    (ino,) = fill(pool, 1)
    assert sorted(os.listdir(pool)) == [str(ino)]
    dest = tmp_path / "new"
    fd = spare.Pool(str(pool)).take(str(dest), 0o644, touch=True)
    assert fd is not None
    try:
        os.write(fd, b"new")
        spare.trim(fd, 3)
    finally:
        os.close(fd)
    st = dest.stat()
    assert st.st_ino == ino and dest.read_bytes() == b"new"
    assert st.st_mode & 0o777 == 0o644 and st.st_nlink == 1
    assert st.st_atime > time.time() - 60 and st.st_mtime > time.time() - 60   # not the old times
    assert os.listdir(pool) == []


def test_take_never_replaces_an_existing_file(tmp_path):
    pool = tmp_path / "spareq"
    pool.mkdir()
    (ino,) = fill(pool, 1)
    dest = tmp_path / "exists"
    dest.write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        spare.Pool(str(pool)).take(str(dest), 0o644)
    assert dest.read_bytes() == b"keep" and os.listdir(pool) == [str(ino)]


def test_an_empty_or_missing_pool_means_create_and_unlink(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert spare.Pool(str(empty)).take(str(tmp_path / "a"), 0o644) is None
    missing = spare.Pool(str(tmp_path / "missing"))
    assert missing.take(str(tmp_path / "b"), 0o644) is None
    f = tmp_path / "done"
    f.write_bytes(b"x")
    missing.give(str(f))
    assert not f.exists() and not (tmp_path / "missing").exists()
    with pytest.raises(FileNotFoundError):
        missing.give(str(f))                       # as unlink(2) of a missing file


def test_unfit_spares_are_unlinked_not_used(tmp_path):
    pool = tmp_path / "spareq"
    pool.mkdir()
    other = tmp_path / "elsewhere"
    other.write_bytes(b"secret")
    os.link(other, pool / str(other.stat().st_ino))          # a second link: not a spare
    target = tmp_path / "target"
    target.write_bytes(b"t")
    os.symlink(target, pool / "12345")                      # a symlink: never followed
    assert spare.Pool(str(pool)).take(str(tmp_path / "n1"), 0o644) is None
    assert other.read_bytes() == b"secret" and target.read_bytes() == b"t"
    assert not (tmp_path / "n1").exists() and os.listdir(pool) == []


def test_big_files_keep_only_their_inode_and_a_full_pool_unlinks(tmp_path, monkeypatch):
    pool = tmp_path / "spareq"
    pool.mkdir()
    big = tmp_path / "big"
    big.write_bytes(b"x" * (spare.SIZE_MAX + 1))
    spare.Pool(str(pool)).give(str(big))
    (name,) = os.listdir(pool)
    assert (pool / name).stat().st_size == 0
    monkeypatch.setattr(spare, "MAX", 3)
    fill(pool, 5)
    assert not any((tmp_path / "work").iterdir())          # all five left the queue at once
    deadline = time.time() + 30
    while len(os.listdir(pool)) > 3 and time.time() < deadline:
        time.sleep(0.01)                                   # the excess is unlinked by a thread
    assert len(os.listdir(pool)) == 3


TAKER = r"""
import os, sys
from qpy import spare
pool, out, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
p = spare.Pool(pool)
got = []
for i in range(10000):
    fd = p.take(f"{out}/{k}.{i}", 0o600)
    if fd is None:
        break
    got.append(os.fstat(fd).st_ino)
    os.close(fd)
print(" ".join(map(str, got)))
"""


def test_concurrent_takers_get_every_spare_exactly_once(tmp_path):
    pool = tmp_path / "spareq"
    pool.mkdir()
    inos = fill(pool, 600)
    out = tmp_path / "out"
    out.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", TAKER, str(pool), str(out), str(k)],
                              stdout=subprocess.PIPE) for k in range(6)]
    taken: list[int] = []
    for proc in procs:
        taken += [int(x) for x in proc.communicate(timeout=120)[0].split()]
        assert proc.returncode == 0
    assert sorted(taken) == sorted(inos)                    # none twice, none lost
    assert sorted(f.stat().st_ino for f in out.iterdir()) == sorted(inos)
    assert os.listdir(pool) == []


# ---------------------------------------------------------------- the programs

def queue(home: Path, message: bytes) -> None:
    """Run the real qmail-queue: message on fd 0, envelope on fd 1."""
    r, w = os.pipe()
    os.write(w, b"Fa@example.test\0Tb@example.test\0\0")
    os.close(w)
    proc = subprocess.run([str(home / "bin" / "qmail-queue")], input=message, stdout=r,
                          env=dict(os.environ, QMAILHOME=str(home)))
    os.close(r)
    assert proc.returncode == 0


def test_qmail_queue_writes_into_spares_byte_exactly(home):
    q = home / "queue"
    inos = fill(q / "spareq", 2, b"stale message text " * 200)
    message = b"Subject: new\n\nshort\n"
    queue(home, message)
    (todo,) = os.listdir(q / "todo")
    msgid = int(todo)
    assert msgid in inos                                    # the id is a spare's inode
    mess = q / "mess" / str(msgid % SPLIT) / todo
    data = mess.read_bytes()
    assert data.startswith(b"Received: (qmail ") and data.endswith(b"\n" + message)
    assert data.count(b"\n") == 4 and b"stale" not in data  # cut to the new length
    envelope = (q / "todo" / todo).read_bytes()
    assert envelope.endswith(b"\0Fa@example.test\0Tb@example.test\0") and b"stale" not in envelope
    assert (q / "todo" / todo).stat().st_ino in inos and os.listdir(q / "spareq") == []
    assert mess.stat().st_mode & 0o777 == 0o644 and mess.stat().st_atime > time.time() - 60


def test_qmail_clean_gives_the_last_link_to_the_spares(home):
    q = home / "queue"
    for rel in ("intd/100", "mess/8/100", "intd/200"):
        (q / rel).write_bytes(b"x")
    os.link(q / "intd/200", q / "todo/200")
    mess_ino = (q / "mess/8/100").stat().st_ino
    todo_ino = (q / "todo/200").stat().st_ino
    proc = subprocess.Popen([str(home / "bin" / "qmail-clean")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=dict(os.environ, QMAILHOME=str(home)))
    out, _ = proc.communicate(b"foop/100\0todo/200\0", timeout=60)
    assert out == b"++" and proc.returncode == 0
    for rel in ("intd/100", "mess/8/100", "intd/200", "todo/200"):
        assert not (q / rel).exists()
    assert sorted(os.listdir(q / "spareq")) == sorted([str(mess_ino), str(todo_ino)])
