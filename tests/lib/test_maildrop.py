"""qpy.maildrop: the drop file header, names, and the peer credentials of a socket."""
from __future__ import annotations

import os
import socket

import pytest

from qpy import maildrop, trigger


def test_header_is_32_bytes_and_round_trips():
    head = maildrop.header(1234)
    assert head == b"qpy-drop 1 00000000000000001234\n" and len(head) == maildrop.HEADER_LEN == 32
    assert maildrop.parse_header(head, 32 + 1234 + 3) == (1234, 0)


def test_header_carries_the_submission_flags():
    # the digit after "qpy-drop " is 1 + qpy.submit's flags: 1 sign, 2 forward
    for flags in (1, 2, 3):
        head = maildrop.header(77, flags)
        assert head == b"qpy-drop %d 00000000000000000077\n" % (1 + flags) and len(head) == 32
        assert maildrop.parse_header(head, 32 + 77 + 3) == (77, flags)


@pytest.mark.parametrize("data, size", [
    (b"qpy-drop 5 00000000000000001234\n", 2000),     # another format
    (b"qpy-drop 11 0000000000000001234\n", 2000),     # another format
    (b"qpy-drop 1 0000000000000000123x\n", 2000),     # not digits
    (b"qpy-drop 1 00000000000000001234 ", 2000),      # no newline
    (b"qpy-drop 1 0000", 2000),                       # short file
    (b"qpy-drop 1 00000000000000001234\n", 32 + 1234),  # no room for an envelope
])
def test_bad_headers_are_malformed(data, size):
    with pytest.raises(maildrop.Malformed):
        maildrop.parse_header(data, size)


def test_names_are_random_and_told_apart():
    finals = {maildrop.final_name() for _ in range(100)}
    assert len(finals) == 100
    assert all(maildrop.FINAL.match(n) and not maildrop.TEMP.match(n) for n in finals)
    temp = maildrop.temp_name()
    assert maildrop.TEMP.match(temp) and not maildrop.FINAL.match(temp)
    assert not maildrop.FINAL.match("d" + "0" * 32 + "\n") and not maildrop.FINAL.match("../d" + "0" * 32)


def test_peer_is_the_kernels_view_of_the_other_end():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert maildrop.peer(a) == (os.getpid(), os.getuid(), os.getgid())


def test_trigger_pull_can_poke_another_fifo(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    fd = trigger.open_listen(str(tmp_path), "fifo")
    try:
        trigger.pull(str(tmp_path), "fifo")
        assert os.read(fd, 10) == b"\0"
    finally:
        os.close(fd)
