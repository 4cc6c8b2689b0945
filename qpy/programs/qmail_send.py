"""qmail-send - schedule the deliveries of queued messages.

SYNOPSIS  qmail-send    (started by qmail-start; fds 0-6 wired as below)
RUNS AS   qmails, group qmail; cwd QMAILHOME/queue; umask 077.
FDS       0 log (write) · 1 → qmail-lspawn commands · 2 ← qmail-lspawn reports ·
          3 → qmail-rspawn commands · 4 ← qmail-rspawn reports · 5 → qmail-clean · 6 ← qmail-clean.
READS     control/ once at start (locals, virtualdomains and bounceformat again on HUP);
          todo/<id>, info/, local/, remote/, bounce/ and mess/ of the queue; lock/trigger.
WRITES    info/, local/, remote/, bounce/ files (docs/queue.md §4, §5, §8); log lines on fd 0
          (docs/protocols.md §8); bounce messages through qmail-queue.
TRUSTS    the queue layout; never the contents of a queue file beyond its format (a bad
          record is a warning, never a crash); the spawners' reports only as far as
          their format (slot numbers are checked, reports cut at 10000 bytes).
SIGNALS   TERM: start nothing new, wait for running deliveries, save retry times as
          the channel files' atime/mtime, log ``status: exiting``, exit 0.
          ALRM: retry every channel now.  HUP: reread locals, virtualdomains and
          bounceformat (qpy).
EXIT      0 after TERM (or after losing a spawner or qmail-clean, logged as an alert);
          111 if it cannot start (``alert: cannot start: …``) or on an internal error
          (``alert: oh no! internal error: …``; the queue stays consistent, a supervisor
          restarts it).

One process, one select() loop (qpy.spare unlinks excess spares in a helper thread;
nothing else runs beside it).  The scheduler is cut along qmail-send.c's sections,
one library module each, every one with its part of the select() preparation
(``prep``) and its handler (``do``): send_comm (COMMUNICATION: spawner and
qmail-clean pipes), send_info (INFO: one record per message preprocessed here),
send_queues (PRIORITY QUEUES, the start-up scan), send_jobs (JOBS, DELIVERIES,
PASSES), send_done (BOUNCES, completion), send_todo (TODO: preprocessing and its
batched durability argument), send_cleanup (CLEANUPS); this module is MAIN.  Each
turn services spawner reports, writes pending commands (non-blocking), preprocesses
a bounded batch of todo/ entries, starts deliveries, completes finished messages and
sweeps a bounded slice of mess/ for leftovers; so a long todo/ never starves
deliveries.  Log lines are written once per turn, whole lines below PIPE_BUF each
(the log is not part of the queue's state).
"""
from __future__ import annotations

import fcntl
import os
import select
import signal
import sys
import time

from qpy import auto, log, prot
from qpy.errors import ControlError, Exit, QmailError
from qpy.schedule import CHANNELS, SLEEP_FUZZ
from qpy.send_cleanup import Cleanup
from qpy.send_comm import Comm, read_limits
from qpy.send_core import (Core, Flags, Wait, read_controls, reread_bounceformat,
                           reread_rewriter)
from qpy.send_done import Completion
from qpy.send_info import Messages
from qpy.send_jobs import Deliveries
from qpy.send_queues import Queues
from qpy.send_todo import Todo

FD_LOG = 0


class QmailSend:
    """The sections, wired together, and the loop that turns them."""

    def __init__(self, core: Core, concurrency: list[int]) -> None:
        self.core = core
        self.comm = Comm(core, concurrency)
        self.queues = Queues(core)
        self.messages = Messages()
        self.completion = Completion(core, self.comm, self.queues, self.messages)
        self.deliveries = Deliveries(core, self.comm, self.queues, self.messages, self.completion)
        self.todo = Todo(core, self.comm, self.queues, self.messages)
        self.cleanup = Cleanup(core, self.comm, self.messages.quarantined)

    def prep(self) -> Wait:
        """This turn's select(): every section adds its fds and its latest wakeup."""
        wait = self.core.wait()
        if self.core.flags.wake is not None:
            wait.rfds.append(self.core.flags.wake.r)
        self.comm.prep(wait)
        if not self.core.exitasap:
            for section in (self.deliveries, self.queues, self.completion, self.todo, self.cleanup):
                section.prep(wait)
        return wait

    def signals(self) -> None:
        """ALRM: every channel due now.  HUP: reread locals, virtualdomains, bounceformat."""
        flags = self.core.flags
        if flags.runasap:
            flags.runasap = False
            self.queues.run_all()
        if flags.readasap:
            flags.readasap = False
            self.core.rewriter = reread_rewriter(self.core.rewriter, self.core.log)
            controls = self.core.controls
            controls.bounce = reread_bounceformat(controls.bounce, self.core.log)

    def turn(self) -> None:
        """One loop turn: sleep in select() until something is due, then do it."""
        core = self.core
        core.recent = int(time.time())
        self.signals()
        wait = self.prep()
        timeout = 0 if wait.wakeup <= core.recent else wait.wakeup - core.recent + SLEEP_FUZZ
        core.log.flush()
        try:
            r, w, _ = select.select(wait.rfds, wait.wfds, [], timeout)
        except OSError:
            core.log.warning("trouble in select")
            core.log.flush()
            time.sleep(1)
            return
        readable, writable = set(r), set(w)
        if core.flags.wake is not None and core.flags.wake.r in readable:
            core.flags.wake.drain()
        core.recent = int(time.time())
        self.comm.do(readable, writable, self.deliveries.report)
        self.todo.do(readable)
        self.deliveries.do()
        self.queues.do()
        self.completion.do()
        self.cleanup.do()

    def run(self) -> int:
        """Schedule until TERM (or a lost pipe) and the running deliveries are done."""
        self.queues.start()
        self.comm.status()
        self.todo.trigger_set()
        while not self.core.exitasap or not self.comm.can_exit():
            self.turn()
        self.comm.clean_collect(block=True)
        self.queues.finish()
        self.core.log.line(log.exiting())
        self.core.log.flush()
        return 0


def lock_mutex() -> int:
    """Take lock/sendmutex (exclusive, non-blocking); the fd stays open for our lifetime."""
    try:
        fd = os.open("lock/sendmutex", os.O_WRONLY)
    except OSError:
        raise Exit(111, "unable to open mutex")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise Exit(111, "qmail-send is already running")
    return fd


def start(flags: Flags) -> QmailSend:
    """Everything before the loop; Exit or QmailError (``cannot start: …``) on failure."""
    home = os.path.abspath(auto.home())
    os.environ["QMAILHOME"] = home  # control paths stay valid after chdir
    try:
        os.chdir(home)
    except OSError:
        raise Exit(111, "unable to switch to home directory")
    try:
        controls = read_controls()
    except (ControlError, OSError):
        raise Exit(111, "unable to read controls")
    try:
        os.chdir("queue")
    except OSError:
        raise Exit(111, "unable to switch to queue directory")
    prot.set_umask(0o077)
    lock_mutex()
    limits = read_limits()
    concurrency = [min(controls.concurrency[c], limits[c]) for c in CHANNELS]
    core = Core(controls, log.Log(FD_LOG, buffered=True), flags, int(time.time()))
    return QmailSend(core, concurrency)


def main(argv: list[str] | None = None) -> int:
    """Run the scheduler on fds 0-6."""
    lg = log.Log(FD_LOG)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    # fds 1 and 2 are spawner pipes: nothing may ever print to them (print() to None is a no-op).
    sys.stdout = sys.stderr = None
    flags = Flags()
    flags.install()
    try:
        daemon = start(flags)
    except (Exit, QmailError) as e:
        lg.alert(f"cannot start: {e.text}")
        return 111
    daemon.comm.init()
    try:
        return daemon.run()
    except Exception as e:  # a bug: say so, and let the supervisor restart us
        daemon.core.log.flush()
        lg.alert(f"oh no! internal error: {type(e).__name__}: {e}; exiting")
        return 111
