"""Warm spawning: run one of our programs in a forked child without an exec.

A spawner forks; the child sets up its fds and calls ``run(name, argv)``, which
imports qpy.programs.<module> by name (already imported in a warm parent) and
calls its main().  Anything configured from outside (QMAILQUEUE, QMAILREMOTE, a
.qmail program) goes through qpy.shim: warm too when the file it names is one of
our programs' shims, else exec'd.  QPY_EXEC forces exec for our own programs,
so tests can show both paths behave the same.
"""
from __future__ import annotations

import _signal       # signal's C core: the public module wraps every call in enum conversions
import fcntl
import importlib
import keyword
import os
import signal
import sys

from qpy import auto

MAX_FD = 1024


def module_for(program: str) -> str:
    """bin name → module path: qmail-queue → qpy.programs.qmail_queue (except → except_)."""
    name = program.replace("-", "_")
    return "qpy.programs." + (name + "_" if keyword.iskeyword(name) else name)


def preload(*programs: str) -> None:
    """Import program modules now, in the parent, so forked children start warm."""
    for program in programs:
        importlib.import_module(module_for(program))


def place_fds(mapping: dict[int, int], keep: tuple[int, ...] = (2,)) -> None:
    """In a child: make fd ``to`` a copy of ``fd`` for each item; close every other fd.

    Targets are assigned through copies above the highest target, so a source
    that is also another item's target is never clobbered.  fds in ``keep`` stay.
    """
    if any(fd != to and fd in mapping for to, fd in mapping.items()):
        floor = max(list(mapping) + list(keep) + [2]) + 1
        parked = {to: fcntl.fcntl(fd, fcntl.F_DUPFD, floor) for to, fd in mapping.items()}
    else:       # no source is another item's target: copy straight
        parked = {to: fd for to, fd in mapping.items() if fd != to}
        for to in mapping.keys() - parked.keys():
            os.set_inheritable(to, True)    # as a dup2 would have left it
    for to, fd in parked.items():
        os.dup2(fd, to)
    busy = sorted(set(mapping) | set(keep))
    low = 0
    for fd in busy:
        if low < fd:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, MAX_FD)


RESET = (signal.SIGPIPE, signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM,
         signal.SIGINT)


def reset_signals(signals: tuple[int, ...] = RESET) -> None:
    """Give each of ``signals`` its default action, as an exec would (a syscall only where needed).

    Runs once per warm run and per reused worker's delivery, so it calls ``_signal``
    directly: ``signal.getsignal`` and ``signal.signal`` cost several enum conversions each.
    """
    for sig in signals:
        if _signal.getsignal(sig) != _signal.SIG_DFL:
            _signal.signal(sig, _signal.SIG_DFL)


def run(program: str, argv: list[str]) -> int:
    """Call the program's main(argv) as if it had been exec'd; return its exit code."""
    reset_signals()
    sys.argv = [program, *argv]
    module = importlib.import_module(module_for(program))
    code = module.main(argv)
    return int(code or 0)


def exec_program(path: str, argv: list[str], env: dict[str, str] | None = None) -> None:
    """exec a program (replaces the child); raises OSError if it cannot."""
    if env is None:
        os.execv(path, [path, *argv])
    os.execve(path, [path, *argv], env)


def run_or_exec(program: str, argv: list[str], external: str | None = None,
                search: bool = False) -> int:
    """In a child: become ``external`` (qpy.shim.become, $PATH with ``search``), else run ours warm (exec'd if forced)."""
    if external:
        from qpy import shim   # only a configured hook pays for it
        return shim.become([external, *argv], search)
    if auto.force_exec():
        exec_program(auto.path("bin", program), argv)
    return run(program, argv)


def child_exit(code: int) -> None:
    """Leave a forked child without running the parent's atexit handlers or flushing its buffers."""
    os._exit(code & 0xFF)


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
MAX_CRASH_TEXT = 400


def crash_line(e: BaseException) -> bytes:
    """``crashed: <type>: <message> (<file>:<line>)\\n`` for an exception nobody expected.

    The file and line are where it was raised (the innermost frame), relative to the
    tree that holds the qpy package; the message is folded onto one line.
    """
    kind = type(e).__qualname__
    if type(e).__module__ not in ("builtins", "__main__"):
        kind = f"{type(e).__module__}.{kind}"
    text = " ".join(str(e).split())[:MAX_CRASH_TEXT]
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = "?"
    if tb is not None:
        path = tb.tb_frame.f_code.co_filename
        where = f"{path[len(_ROOT):] if path.startswith(_ROOT) else path}:{tb.tb_lineno}"
    line = f"crashed: {kind}{': ' if text else ''}{text} ({where})\n"
    return line.encode("utf-8", "backslashreplace")


def report_crash(e: BaseException) -> None:
    """In a child that is about to exit: ``crash_line(e)`` on fd 2, which may be closed."""
    try:
        os.write(2, crash_line(e))
    except OSError:
        pass
