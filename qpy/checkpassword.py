"""The checkpassword interface (docs/protocols.md §9): ask an external program about a password.

The program runs with fd 3 reading ``<user>\\0<password>\\0<timestamp>\\0`` and
exits 0 when the password is right (after running the rest of its argv, by
convention ``/bin/true`` for a mere check), 1 when it is wrong, 111 for a
temporary failure.  Its fd 0 and fd 1 are /dev/null: it never sees the client's
connection.  It is an external program, so it is exec'd (posix_spawn), never
run warm.
"""
from __future__ import annotations

import os

from qpy import fdio

TEMPORARY = 111


def check(argv: list[str], user: bytes, password: bytes, timestamp: bytes = b"") -> int:
    """Run checkpassword; return its exit code (TEMPORARY if it cannot run or is killed)."""
    if not argv:
        return TEMPORARY
    r, w = os.pipe()
    if r == 3 or w == 3:        # dup2(3, 3) would keep close-on-exec set
        r2, w2 = os.dup(r), os.dup(w)
        os.close(r)
        os.close(w)
        r, w = r2, w2
    try:
        pid = os.posix_spawnp(argv[0], argv, os.environ, file_actions=[
            (os.POSIX_SPAWN_DUP2, r, 3),
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
        ])
    except OSError:
        os.close(r)
        os.close(w)
        return TEMPORARY
    os.close(r)
    # A program that exits without reading makes this fail: its exit code says why.
    fdio.write_quietly(w, user + b"\0" + password + b"\0" + timestamp + b"\0")
    os.close(w)
    status = fdio.wait_status(pid)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return TEMPORARY
