"""Our programs named from outside: recognise one, and run it warm as its exec would run it.

A hook configured from outside (``$QMAILQUEUE``, ``$QMAILREMOTE``, a .qmail
``|command``) names a file to exec.  When that file is one of our own programs, a
forked child need not start an interpreter: ``become`` runs the program's main() in
the child with everything the exec would have given it, and execs anything else.
So a filter written as a qpy program costs a fork, not an interpreter start.
QPY_EXEC (``auto.force_exec``) makes every hook exec, as before.

OURS      ``find(prog)``: the file exec would run for prog (execv: as given; execvp and
          /bin/sh: the first executable one in $PATH) is ours when its name is in
          qpy.hier.PROGRAMS, it is executable, and its text is exactly one of our shims
          for that name (qpy.hier.shim's, as in an instance's bin/, or the console
          script an install wrote) whose ``#!`` line names this very interpreter (the
          same file in the same directory, so the same installation), or a shim of this
          source tree's bin/ (``#!/usr/bin/env -S python3 -I``).  The name alone proves
          nothing: a wrapper script called qmail-queue, a shim for another Python, a
          file we cannot read are all exec'd.
AS EXEC   ``run_as_exec``: fds marked close-on-exec closed; caught signals back to their
          default, ignored ones kept, then what an interpreter does at start (SIGPIPE and
          SIGXFSZ ignored, SIGINT raising KeyboardInterrupt unless ignored); the
          environment given, with LC_CTYPE=C.UTF-8 added where the interpreter would
          coerce a C locale (PEP 538); ``sys.argv`` = [file, args...]; new sys.stdin/stdout/stderr
          on fds 0-2 (None where closed); and the interpreter's exit code: main's value
          (None 0, an int, else printed on stderr and 1), a SystemExit's code, 1 after a
          traceback, 120 when stdout or stderr cannot be flushed at the end.
SHELL     ``spawn_command``: a .qmail ``|command`` skips /bin/sh only when it is plain
          words (``words``: letters, digits and ``-_./@+,:%=``, separated by blanks; no
          ``=`` in the first word) so /bin/sh would do nothing but exec the first word,
          and that word is one of ours.  The program then sees the environment /bin/sh
          would pass: PWD kept if it names the cwd, else the cwd (dash's rule; bash would
          also export SHLVL and ``_``, which no program of ours reads).
"""
from __future__ import annotations

import _signal       # signal's C core: the public module wraps every call in enum conversions
import fcntl
import importlib
import io
import os
import signal
import stat
import sys

from qpy import auto, warm

MAX_SHIM = 1024
SOURCE_BIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bin")
SOURCE_SHEBANG = b"#!/usr/bin/env -S python3 -I"
# The console script pip (distlib) writes, after its #! line; "" quotes are read as ''.
CONSOLE_SCRIPT = ("# -*- coding: utf-8 -*-\nimport re\nimport sys\n"
                  "from qpy.programs.{module} import main\n"
                  "if __name__ == '__main__':\n"
                  "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
                  "    sys.exit(main())\n")
WORD_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_./@+,:%="
BLANKS = b" \t"
COERCE_TARGETS = ("C.UTF-8", "C.utf8", "UTF-8")

_EFFECTIVE = os.access in os.supports_effective_ids
_interpreters: dict[bytes, bool] = {}
_parents_streams: list[object] = []


def _executable(file: str) -> bool:
    """True if exec could run ``file``: executable by our effective ids and not a directory."""
    return os.access(file, os.X_OK, effective_ids=_EFFECTIVE) and not os.path.isdir(file)


def locate(prog: str, search: bool = False, env: dict | None = None) -> str | None:
    """The file exec would run for ``prog``; None if a search finds none.

    Without ``search``, or with a ``/`` in prog, prog itself (execv's rule); else the
    first executable file in the $PATH of ``env`` (default os.environ), execvp's rule.
    """
    if not search or "/" in prog:
        return prog
    for folder in os.get_exec_path(env):
        file = os.path.join(folder, prog) if folder else prog
        if _executable(file):
            return file
    return None


def _same_interpreter(first: bytes) -> bool:
    """True if a ``#!`` line runs this interpreter: ``#!<python>`` or ``#!<python> -I``."""
    known = _interpreters.get(first)
    if known is None:
        words = first[2:].split() if first.startswith(b"#!") else []
        known = False
        if words and words[1:] in ([], [b"-I"]) and sys.executable:
            them, me = os.fsdecode(words[0]), sys.executable
            real = os.path.realpath
            known = (real(them) == real(me)
                     and real(os.path.dirname(them)) == real(os.path.dirname(me)))
        _interpreters[first] = known
    return known


def ours(file: str) -> str | None:
    """Our program's name if ``file`` is one of our programs' shims (see OURS), else None."""
    name = os.path.basename(file)
    module = warm.module_for(name)[len("qpy.programs."):]
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)   # a FIFO must not block us
    except OSError:
        return None
    try:
        text = os.read(fd, MAX_SHIM + 1) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
    except OSError:
        text = b""
    finally:
        os.close(fd)
    if not text or len(text) > MAX_SHIM:
        return None
    first, _, body = text.partition(b"\n")
    if b"\nfrom qpy.programs.%s import main\n" % module.encode() not in b"\n" + body:
        return None
    from qpy import hier   # the program table, only once a file looks like one of our shims
    if body.replace(b'"', b"'") not in (hier.shim(name, "python").encode().partition(b"\n")[2],
                                        CONSOLE_SCRIPT.format(module=module).encode()):
        return None
    if first == SOURCE_SHEBANG:
        ok = os.path.realpath(os.path.dirname(os.path.abspath(file))) == os.path.realpath(SOURCE_BIN)
    else:
        ok = _same_interpreter(first)
    if not ok or name not in hier.PROGRAMS or not _executable(file):
        return None
    return name


def find(prog: str, search: bool = False, env: dict | None = None) -> tuple[str, str] | None:
    """(name, file) when exec'ing ``prog`` would run one of our programs and it can run warm here.

    None under QPY_EXEC, for anything not ours (``ours``), and when the program's module
    cannot be imported in this process.  The module is imported now (a parent that asks
    once has it warm for every child).
    """
    if auto.force_exec():
        return None
    file = locate(prog, search, env)
    name = ours(file) if file else None
    if name is None:
        return None
    try:
        warm.preload(name)
    except ImportError:
        return None
    return name, file


def become(argv: list[str], search: bool = False, env: dict | None = None) -> int:
    """In a forked child: run ``argv`` warm if argv[0] is ours (``find``), else exec it.

    ``search``: a bare argv[0] is looked up in $PATH (execvp), else taken as given
    (execv).  ``env`` (bytes or str keys, as os.execve takes) replaces the environment;
    None keeps it.  Returns the warm run's exit code; a failed exec raises OSError.
    """
    found = find(argv[0], search, env)
    if found is not None:
        name, file = found
        return run_as_exec(name, [file, *argv[1:]], env)
    if env is None:
        (os.execvp if search else os.execv)(argv[0], argv)
    (os.execvpe if search else os.execve)(argv[0], argv, env)
    raise OSError("exec returned")   # not reached


def words(command: bytes) -> list[bytes] | None:
    """The words of ``command`` if /bin/sh would only split it at blanks and exec it, else None."""
    if command.translate(None, WORD_BYTES + BLANKS):
        return None     # a quote, $, `, ;, |, &, <, >, *, ?, [, ~, #, (, {, \, !, a newline, …
    argv = command.split()
    if not argv or b"=" in argv[0]:
        return None     # nothing to run, or an assignment
    return argv


def shell_environ(env: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """``env`` as /bin/sh passes it on: PWD kept if it is absolute and names the cwd, else the cwd."""
    pwd = env.get(b"PWD")
    try:
        if pwd and pwd.startswith(b"/") and os.path.samestat(os.stat(pwd), os.stat(".")):
            return env
    except OSError:
        pass
    try:
        return {**env, b"PWD": os.getcwdb()}
    except OSError:
        return env


def spawn_command(command: bytes, env: dict[bytes, bytes]) -> int | None:
    """Start a .qmail ``|command`` warm when /bin/sh would only exec one of our programs.

    Returns the child's pid, or None: the caller runs ``/bin/sh -c command`` as always
    (also under QPY_EXEC).  A bare first word is looked up in env's PATH, as /bin/sh
    does; without a PATH it is left to /bin/sh.  Raises OSError if fork fails.
    """
    argv = words(command)
    if argv is None or (b"/" not in argv[0] and b"PATH" not in env):
        return None
    args = [os.fsdecode(a) for a in argv]
    found = find(args[0], True, env)
    if found is None:
        return None
    name, file = found
    env = shell_environ(env)
    pid = os.fork()
    if pid:
        return pid
    code = 111
    try:
        code = run_as_exec(name, [file, *args[1:]], env)
    except BaseException as e:
        warm.report_crash(e)
    warm.child_exit(code)
    return 0    # not reached


# ------------------------------------------------------------------ as an exec would


def close_on_exec() -> None:
    """Close every fd marked close-on-exec, as the exec would have."""
    try:
        fds: list[int] | range = [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:
        fds = range(warm.MAX_FD)
    for fd in fds:
        try:
            if fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC:
                os.close(fd)
        except OSError:
            pass    # the listing's own fd, gone already


def caught_signals() -> list[int]:
    """Every signal this process catches: the kernel's list (Linux), else the ones Python handles.

    A handler set by C code (not through the signal module) shows only in the kernel's.
    """
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"SigCgt:"):
                    mask = int(line.split()[1], 16)
                    return [sig for sig in range(1, mask.bit_length() + 1) if mask >> (sig - 1) & 1]
    except (OSError, ValueError, IndexError):
        pass
    return [sig for sig in _signal.valid_signals() if callable(_signal.getsignal(sig))]


def exec_signals() -> None:
    """Signal dispositions as an exec'd interpreter has them (see AS EXEC)."""
    _signal.set_wakeup_fd(-1)
    for sig in caught_signals():
        try:
            _signal.signal(sig, _signal.SIG_DFL)
        except (OSError, ValueError):
            continue    # SIGKILL, SIGSTOP, or one the C library keeps for itself
    _signal.signal(signal.SIGPIPE, _signal.SIG_IGN)
    _signal.signal(signal.SIGXFSZ, _signal.SIG_IGN)
    if _signal.getsignal(signal.SIGINT) == _signal.SIG_DFL:
        _signal.signal(signal.SIGINT, _signal.default_int_handler)


def set_environ(env: dict) -> None:
    """Make the process environment (and os.environ) exactly ``env``."""
    current = os.environb if env and isinstance(next(iter(env)), bytes) else os.environ
    for key in [k for k in current if k not in env]:
        del current[key]
    for key, value in env.items():
        if current.get(key) != value:
            current[key] = value


def start_locale() -> None:
    """LC_CTYPE as an interpreter start leaves it: the environment's, C coerced to C.UTF-8 (PEP 538)."""
    import _locale     # built in
    try:
        current = _locale.setlocale(_locale.LC_CTYPE, "")
    except _locale.Error:      # an unknown locale: a fresh process stays in C
        current = _locale.setlocale(_locale.LC_CTYPE, "C")
    if current not in ("C", "POSIX") or os.environ.get("LC_ALL"):
        return
    for target in COERCE_TARGETS:   # exported, so the program's own children see it too
        try:
            _locale.setlocale(_locale.LC_CTYPE, target)
        except _locale.Error:
            continue
        os.environ["LC_CTYPE"] = target
        return


def fresh_stdio() -> None:
    """New sys.stdin/stdout/stderr on fds 0-2, as an interpreter start makes them (None if closed)."""
    # The parent's streams stay referenced: freed, they would flush the parent's pending
    # output into the child's fds.  The child leaves by os._exit, which never flushes them.
    _parents_streams.extend((sys.stdin, sys.stdout, sys.stderr,
                             sys.__stdin__, sys.__stdout__, sys.__stderr__))
    made = []
    for fd, ref in enumerate((sys.__stdin__, sys.__stdout__, sys.__stderr__)):
        try:
            os.fstat(fd)
        except OSError:
            made.append(None)
            continue
        raw = io.FileIO(fd, "r" if fd == 0 else "w", closefd=False)
        buffered = io.BufferedReader(raw) if fd == 0 else io.BufferedWriter(raw)
        errors = "backslashreplace" if fd == 2 else getattr(ref, "errors", None) or "strict"
        made.append(io.TextIOWrapper(buffered, getattr(ref, "encoding", None) or "utf-8", errors,
                                     newline="\n", line_buffering=raw.isatty(),
                                     write_through=fd == 2))
    sys.stdin, sys.stdout, sys.stderr = made
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = made


def exit_code(value: object) -> int:
    """The interpreter's exit code for sys.exit(value)."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    try:
        sys.stderr.write(f"{value}\n")
    except (AttributeError, OSError, ValueError):
        pass
    return 1


def run_as_exec(name: str, argv: list[str], env: dict | None = None) -> int:
    """In a forked child: set up what exec'ing our ``argv[0]`` would give it, run main(); its exit code."""
    close_on_exec()
    if env is not None:
        set_environ(env)
    start_locale()
    exec_signals()
    fresh_stdio()
    sys.argv = list(argv)
    try:
        code = exit_code(importlib.import_module(warm.module_for(name)).main(argv[1:]))
    except SystemExit as e:
        code = exit_code(e.code)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            code = 120
    return code
