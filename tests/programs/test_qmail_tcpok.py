"""qmail-tcpok zeroes both timeout tables."""
from __future__ import annotations

import os

from conftest import run
from qpy.tcpto import Tcpto


def test_clears_both_files(home):
    Tcpto().result("127.0.0.2", True)
    Tcpto().result("::1", True)
    lock = home / "queue" / "lock"
    assert lock.joinpath("tcpto").read_bytes() != bytes(1024)
    r = run(home, "qmail-tcpok")
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    assert lock.joinpath("tcpto").read_bytes() == bytes(1024)
    assert lock.joinpath("tcpto6").read_bytes() == bytes(2048)
    assert run(home, "qmail-tcpto").stdout == b""


def test_qmail_sized_file_is_restored_to_1024_bytes(home):
    (home / "queue" / "lock" / "tcpto").write_bytes(b"\1" * 100)
    os.unlink(home / "queue" / "lock" / "tcpto6")
    assert run(home, "qmail-tcpok").returncode == 0
    assert (home / "queue" / "lock" / "tcpto").read_bytes() == bytes(1024)


def test_missing_table_is_111(home):
    os.unlink(home / "queue" / "lock" / "tcpto")
    r = run(home, "qmail-tcpok")
    assert r.returncode == 111 and r.stderr.startswith(b"qmail-tcpok: fatal: unable to clear ")
