"""qmail-send's shared state: its controls, signal flags, the select() wait being
built for a loop turn, and the Core every section of the scheduler works on.

qmail-send is cut along qmail-send.c's own sections, one module each:
``send_comm`` (COMMUNICATION: spawner and qmail-clean pipes), ``send_info`` (INFO:
what is known of each message), ``send_queues`` (PRIORITY QUEUES and the start-up
scan), ``send_jobs`` (JOBS, DELIVERIES, PASSES), ``send_done`` (BOUNCES and
completion), ``send_todo`` (TODO: preprocessing), ``send_cleanup`` (CLEANUPS) and
the loop in ``qpy.programs.qmail_send`` (MAIN).  Each section has ``prep(wait)``,
its part of the select() preparation, and ``do(…)``, its handler.
"""
from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from qpy import auto, bounce, control, fdio, log, spare
from qpy.errors import ControlError
from qpy.rewrite import Rewriter
from qpy.schedule import SLEEP_FOREVER

SLEEP_PAUSE = 10        # after an unreadable directory or a failing bounce append


@dataclass
class Controls:
    """Everything qmail-send reads from control/ at start."""

    lifetime: int
    concurrency: list[int]
    rewriter: Rewriter
    bounce: bounce.Settings


def read_controls() -> Controls:
    """Read the controls; ControlError if one is unreadable."""
    bouncehost = control.read_host("bouncehost")
    dbhost = control.read_host("doublebouncehost")
    dbto = control.read_line("doublebounceto")
    return Controls(
        lifetime=control.read_int("queuelifetime"),
        concurrency=[min(control.read_int("concurrencylocal"), auto.SPAWN_LIMIT),
                     min(control.read_int("concurrencyremote"), auto.SPAWN_LIMIT)],
        rewriter=Rewriter.from_control(),
        bounce=bounce.Settings(bouncefrom=control.read_line("bouncefrom") or b"",
                               bouncehost=bouncehost,
                               doublebounceto=(dbto or b"") + b"@" + dbhost,
                               maxbytes=control.read_int("bouncemaxbytes"),
                               dsn=bounce.dsn_format(control.read_line("bounceformat"))),
    )


def reread_bounceformat(old: bounce.Settings, lg: log.Log) -> bounce.Settings:
    """HUP: the bounce settings with a fresh bounceformat, or the old ones on trouble."""
    try:
        value = control.read_line("bounceformat")
    except ControlError:
        lg.alert("unable to reread control/bounceformat")
        return old
    return replace(old, dsn=bounce.dsn_format(value))


def reread_rewriter(old: Rewriter, lg: log.Log) -> Rewriter:
    """HUP: a rewriter with fresh locals and virtualdomains, or the old one on trouble."""
    try:
        locals_ = control.read_list("locals")
    except ControlError:
        locals_ = None
    if locals_ is None:
        lg.alert("unable to reread control/locals")
        return old
    try:
        vdoms = control.read_map("virtualdomains") or {}
    except ControlError:
        lg.alert("unable to reread control/virtualdomains")
        return old
    return replace(old, locals={d.lower() for d in locals_}, virtualdomains=vdoms)


class Flags:
    """What the signal handlers ask for; a self-pipe makes select() return for them."""

    def __init__(self) -> None:
        self.exitasap = self.runasap = self.readasap = False
        self.wake: fdio.SelfPipe | None = None

    def install(self) -> None:
        """Catch TERM, ALRM and HUP from now on."""
        self.wake = fdio.SelfPipe()
        self.wake.install()
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGALRM, self._on_alarm)
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)

    def _on_term(self, signum: int, frame: object) -> None:
        self.exitasap = True

    def _on_alarm(self, signum: int, frame: object) -> None:
        self.runasap = True

    def _on_hup(self, signum: int, frame: object) -> None:
        self.readasap = True


@dataclass
class Wait:
    """One turn's select() preparation: fds to watch and the latest time to wake up."""

    wakeup: int
    rfds: list[int] = field(default_factory=list)
    wfds: list[int] = field(default_factory=list)

    def at(self, when: int | None) -> None:
        """Wake up no later than ``when`` (None: nothing due)."""
        if when is not None and when < self.wakeup:
            self.wakeup = when


@dataclass(eq=False)
class Core:
    """What every section shares: controls, log, the turn's time, signal flags, spares."""

    controls: Controls
    log: log.Log
    flags: Flags
    recent: int
    rewriter: Rewriter = field(init=False)
    # Move a message with corrupt queue files aside (msgid, reason): send_cleanup's.
    quarantine: Callable[[int, str], None] = field(init=False)
    # Finished info/ and channel inodes, reused for new ones (qpy.spare).
    spares: spare.Pool = field(default_factory=lambda: spare.pool(spare.SPARES))

    def __post_init__(self) -> None:
        self.rewriter = self.controls.rewriter
        self.quarantine = self.cannot_quarantine

    def cannot_quarantine(self, msgid: int, reason: str) -> None:
        """Until CLEANUPS installs its own (send_cleanup.Cleanup.quarantine): only say it."""
        self.log.warning(f"message {msgid} has a corrupt queue file ({reason}); left in place")

    @property
    def exitasap(self) -> bool:
        """TERM, or a lost pipe: start nothing new, exit once running deliveries are done."""
        return self.flags.exitasap

    @exitasap.setter
    def exitasap(self, value: bool) -> None:
        self.flags.exitasap = value

    def wait(self) -> Wait:
        """An empty select() preparation for this turn."""
        return Wait(self.recent + SLEEP_FOREVER)

    def pause(self, alert: str) -> None:
        """Log an alert and sleep SLEEP_PAUSE seconds (a directory or file we cannot do without)."""
        self.log.alert(alert)
        self.log.flush()
        time.sleep(SLEEP_PAUSE)
