"""qpy.mbox: quoting, appending, locking."""
from __future__ import annotations

import fcntl
import mailbox
import os

import pytest

from qpy import mbox
from qpy.errors import TempFail


@pytest.mark.parametrize("line,quoted", [(b"From x", True), (b">From x", True), (b">>>From ", True),
                                         (b"From", False), (b" From x", False), (b"from x", False),
                                         (b">From", False)])
def test_is_from(line, quoted):
    assert mbox.is_from(line) is quoted


def test_golden_delivery(tmp_path):
    src = os.path.join(os.path.dirname(__file__), "..", "data", "qmail-local")
    msg = open(os.path.join(src, "from-lines.in"), "rb").read()
    ref = open(os.path.join(src, "from-lines.mbox.ref"), "rb").read()
    (tmp_path / "m").write_bytes(msg)
    with open(tmp_path / "m", "rb") as f:
        mbox.deliver(str(tmp_path / "box").encode(), b"From a@b Thu Jan 01 00:00:00 1970\n", f.fileno())
    assert (tmp_path / "box").read_bytes() == ref
    assert len(mailbox.mbox(str(tmp_path / "box"))) == 1


def test_big_message_split_across_reads(tmp_path):
    lines = [b"From %d" % i if i % 3 == 0 else b"x" * (i % 97) for i in range(20000)]
    (tmp_path / "m").write_bytes(b"\n".join(lines) + b"\n")
    with open(tmp_path / "m", "rb") as f:
        mbox.deliver(str(tmp_path / "box").encode(), b"", f.fileno())
    expect = b"\n".join(b">" + x if x.startswith(b"From ") else x for x in lines) + b"\n\n"
    assert (tmp_path / "box").read_bytes() == expect


def test_lock_timeout(tmp_path):
    box = tmp_path / "box"
    box.write_bytes(b"")
    (tmp_path / "m").write_bytes(b"x\n")
    with open(box, "rb") as holder, open(tmp_path / "m", "rb") as f:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
        with pytest.raises(TempFail, match="File has been locked for 1 seconds straight"):
            mbox.deliver(str(box).encode(), b"", f.fileno(), lock_timeout=1)
    assert box.read_bytes() == b""


def test_unopenable(tmp_path):
    with pytest.raises(TempFail, match=r"Unable to open .*/no/box: file does not exist\. \(#4\.2\.1\)"):
        mbox.deliver(str(tmp_path / "no" / "box").encode(), b"", 0)
