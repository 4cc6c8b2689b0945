"""qpy.fdio on real pipes, files, directories, signals and children."""
from __future__ import annotations

import fcntl
import os
import select
import signal
import threading

import pytest

from qpy import fdio


def pipe_size(fd: int) -> int:
    """The kernel's buffer size of a pipe."""
    return fcntl.fcntl(fd, 1032)    # F_GETPIPE_SZ


def test_write_all_crosses_a_pipe_larger_than_its_buffer():
    r, w = os.pipe()
    data = bytes(range(256)) * (4 * pipe_size(w) // 256 + 1)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fdio.read_all(r)))
    reader.start()
    fdio.write_all(w, data)
    os.close(w)
    reader.join()
    os.close(r)
    assert got == [data]


def test_write_all_raises_broken_pipe_on_a_closed_reader():
    r, w = os.pipe()
    os.close(r)
    with pytest.raises(BrokenPipeError):
        fdio.write_all(w, b"x")
    os.close(w)


def test_feed_returns_false_on_a_closed_reader():
    r, w = os.pipe()
    os.close(r)
    assert fdio.feed(w, b"x" * 100000) is False
    os.close(w)


def test_feed_returns_true_when_everything_was_written():
    r, w = os.pipe()
    assert fdio.feed(w, b"hello") is True
    os.close(w)
    assert fdio.read_all(r) == b"hello"
    os.close(r)


def test_write_quietly_swallows_any_error():
    r, w = os.pipe()
    os.close(r)
    assert fdio.write_quietly(w, b"x") is False
    os.close(w)
    assert fdio.write_quietly(w, b"x") is False     # EBADF as well


def test_read_all_reads_to_eof_in_small_chunks():
    r, w = os.pipe()
    os.write(w, b"0123456789")
    os.close(w)
    assert fdio.read_all(r, chunk=3) == b"0123456789"
    os.close(r)


def test_read_all_stops_at_its_limit():
    r, w = os.pipe()
    os.write(w, b"0123456789")
    assert fdio.read_all(r, chunk=4, limit=6) == b"012345"
    os.close(w)
    assert fdio.read_all(r) == b"6789"
    os.close(r)


def test_read_ready_tells_data_nothing_yet_and_eof_apart():
    r, w = os.pipe()
    os.set_blocking(r, False)
    assert fdio.read_ready(r) is None
    os.write(w, b"abc")
    assert fdio.read_ready(r, chunk=2) == b"ab"
    os.close(w)
    assert fdio.read_ready(r) == b"c"
    assert fdio.read_ready(r) == b""
    os.close(r)
    assert fdio.read_ready(r) == b""          # an error (EBADF) ends the peer like EOF


def test_read_file_with_and_without_mtime(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"data\n")
    os.utime(path, (1000000000, 1000000000))
    assert fdio.read_file(str(path)) == (b"data\n", 0)
    assert fdio.read_file(str(path), with_mtime=True) == (b"data\n", 1000000000)
    with pytest.raises(FileNotFoundError):
        fdio.read_file(str(tmp_path / "missing"))


def test_copy_file_into_pipe(tmp_path):
    path = tmp_path / "src"
    data = os.urandom(200000)
    path.write_bytes(data)
    src = os.open(path, os.O_RDONLY)
    r, w = os.pipe()
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fdio.read_all(r)))
    reader.start()
    assert fdio.copy(src, w) is True
    os.close(w)
    reader.join()
    os.close(r)
    os.close(src)
    assert got == [data]


def test_copy_returns_false_when_the_reader_went_away(tmp_path):
    path = tmp_path / "src"
    path.write_bytes(b"x" * 1000)
    src = os.open(path, os.O_RDONLY)
    r, w = os.pipe()
    os.close(r)
    assert fdio.copy(src, w) is False
    os.close(w)
    os.close(src)


def test_copy_raises_on_a_read_error(tmp_path):
    src = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    r, w = os.pipe()
    with pytest.raises(IsADirectoryError):
        fdio.copy(src, w)
    for fd in (src, r, w):
        os.close(fd)


def test_fsync_dir_on_a_real_directory(tmp_path):
    (tmp_path / "sub").mkdir()
    fdio.fsync_dir(str(tmp_path))
    dfd = fdio.open_dir(str(tmp_path))
    try:
        fdio.fsync_dir(b"sub", dir_fd=dfd)
    finally:
        os.close(dfd)


def test_fsync_dir_names_the_directory_it_could_not_open(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        fdio.fsync_dir(str(tmp_path / "missing"))
    assert e.value.filename == str(tmp_path / "missing")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        fdio.fsync_dir(str(tmp_path / "file"))


def test_unlink_missing_ok_and_close_quietly(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"")
    fdio.unlink_missing_ok(str(path))
    fdio.unlink_missing_ok(str(path))
    assert not path.exists()
    r, w = os.pipe()
    os.close(r)
    fdio.close_quietly(w)
    fdio.close_quietly(w)           # already closed: ignored


def test_self_pipe_wakes_select_for_a_real_signal():
    wake = fdio.SelfPipe()
    old = signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    try:
        wake.install()
        assert select.select([wake.r], [], [], 0)[0] == []
        os.kill(os.getpid(), signal.SIGUSR1)
        assert select.select([wake.r], [], [], 5)[0] == [wake.r]
        wake.drain()
        assert select.select([wake.r], [], [], 0)[0] == []
    finally:
        wake.close()
        signal.signal(signal.SIGUSR1, old)
    assert signal.set_wakeup_fd(-1) == -1     # close() put the previous one (none) back


def test_self_pipe_close_restores_the_previous_wakeup_fd():
    outer = fdio.SelfPipe()
    outer.install()
    inner = fdio.SelfPipe()
    inner.install()
    inner.close()
    assert signal.set_wakeup_fd(outer.w) == outer.w
    outer.close()
    assert signal.set_wakeup_fd(-1) == -1


def test_suspended_has_no_wakeup_fd_inside():
    wake = fdio.SelfPipe()
    wake.install()
    try:
        with fdio.Suspended():
            assert signal.set_wakeup_fd(-1) == -1
        assert signal.set_wakeup_fd(wake.w, warn_on_full_buffer=False) == wake.w
    finally:
        wake.close()


def fork_exit(code: int) -> int:
    """A child that exits with ``code`` at once."""
    pid = os.fork()
    if pid == 0:
        os._exit(code)
    return pid


def test_reap_collects_every_finished_child():
    pids = {fork_exit(n): n for n in (0, 3, 7)}
    found: dict[int, int] = {}
    while not pids.keys() <= found.keys():     # another test's leftover child may come too
        select.select([], [], [], 0.01)
        found.update(fdio.reap())
    assert {pid: fdio.exit_code(found[pid]) for pid in pids} == pids
    assert pids.keys().isdisjoint(pid for pid, _ in fdio.reap())


def test_reap_leaves_a_running_child_alone():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(w)
        os.read(r, 1)
        os._exit(5)
    os.close(r)
    assert pid not in dict(fdio.reap())
    os.close(w)
    assert fdio.exit_code(fdio.wait_status(pid)) == 5


def test_wait_status_of_a_killed_child():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    os.kill(pid, signal.SIGKILL)
    status = fdio.wait_status(pid)
    os.close(w)
    assert os.WTERMSIG(status) == signal.SIGKILL
    assert fdio.exit_code(status) is None
