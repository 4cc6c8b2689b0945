"""Child processes of the small tools (predate, preline, condredirect, fastforward, …).

``start`` forks a child that either execs a command (execvp, as the C tools do) or
runs one of our own programs warm (``qpy.warm``; exec'd under QPY_EXEC), with an
optional fd as its stdin.  ``wait`` returns the child's exit code and raises
``Crashed`` if a signal killed it.  The tools feed their children through
``fdio.feed``/``fdio.copy``, ignoring a reader that went away (the C tools ignore
SIGPIPE and write blindly).
"""
from __future__ import annotations

import io
import os
import signal
import sys

from qpy import fdio, warm
from qpy.errors import TempFail, temporary_errno


class Crashed(TempFail):
    """The child was killed by a signal."""


def fresh_stdio() -> None:
    """In a forked child: rebuild sys.stdin/stdout/stderr on fds 0-2, dropping the parent's buffers."""
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)))
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)))
    sys.stderr = io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "w", closefd=False)),
                                  write_through=True)


def start(argv: list[str], stdin: int | None = None, close: tuple[int, ...] = (),
          program: str | None = None, exec_fail=None) -> int:
    """Fork a child; return its pid.

    The child gets ``stdin`` (if given) as fd 0, closes the fds in ``close``, sets
    SIGPIPE to default and then runs ``program`` warm with ``argv`` as its
    arguments, or execvp's ``argv``.  When the exec fails, ``exec_fail(err)`` is
    called in the child and its result is the exit code (default: 111 for a
    temporary error, else 100).
    """
    pid = os.fork()
    if pid:
        return pid
    code = 111
    try:
        for fd in close:
            os.close(fd)
        if stdin is not None and stdin != 0:
            os.dup2(stdin, 0)
            os.close(stdin)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        fresh_stdio()
        if program is not None:
            code = warm.run_or_exec(program, argv)
            try:
                sys.stdout.flush()
            except OSError:
                pass
        else:
            try:
                os.execvp(argv[0], argv)
            except OSError as e:
                code = exec_fail(e) if exec_fail else (111 if temporary_errno(e.errno) else 100)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 111
    except BaseException as e:
        warm.report_crash(e)
        code = 111
    warm.child_exit(code)
    return 0  # not reached


def wait(pid: int) -> int:
    """Wait for a child; return its exit code, raise Crashed if a signal killed it."""
    status = fdio.wait_status(pid)
    if os.WIFSIGNALED(status):
        raise Crashed(f"child killed by signal {os.WTERMSIG(status)}")
    return os.WEXITSTATUS(status)


def run_fed(argv: list[str], head: bytes, program: str | None = None, exec_fail=None) -> int:
    """Run a child as ``start`` does, on a pipe carrying ``head`` and then our fd 0; its exit code.

    A read error on fd 0 and a child that stops reading both just end its input.
    Raises Crashed if a signal killed the child.
    """
    r, w = os.pipe()
    pid = start(argv, stdin=r, close=(w,), program=program, exec_fail=exec_fail)
    os.close(r)
    if fdio.feed(w, head):
        try:
            fdio.copy(0, w)
        except OSError:
            pass
    os.close(w)
    return wait(pid)


def rewind(fd: int = 0) -> None:
    """Seek fd back to its start (the message given to a .qmail program is a file)."""
    os.lseek(fd, 0, os.SEEK_SET)
