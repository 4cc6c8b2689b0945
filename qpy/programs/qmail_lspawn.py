"""qmail-lspawn - start local deliveries for qmail-send, each as its recipient.

SYNOPSIS  qmail-lspawn defaultdelivery
RUNS AS   root in privileged mode (started by qmail-start); the invoking user in
          single-user mode.  cwd QMAILHOME/queue/mess.
PROTOCOL  qmail-send's spawner protocol (docs/protocols.md §2, qpy.spawn): one byte (120) at
          start, commands on fd 0, ``<slot><K|Z|D><text>\\0`` reports on fd 1.
PER COMMAND  a forked child (single-user mode: one of up to 16 reused worker children,
          qpy.spawn WORKERS, each delivery isolated by fd, cwd, umask and signal resets):
          empty local part → success at once.  Otherwise chdir
          QMAILHOME, find the recipient's account: users/cdb (qpy.users), else
          qmail-getpw's search (privileged: a grandchild running qmail-getpw as
          qmailp/nofiles, warm or exec'd; single-user: qpy.getpw in the child).  Then
          (privileged only) become the account's uid/gid with no supplementary groups and
          refuse uid 0 (113), and run ``qmail-local -- user home local dash ext domain
          sender defaultdelivery`` warm (QPY_EXEC=1: exec QMAILHOME/bin/qmail-local) with
          fd 0 = the message, fds 1+2 = the report pipe.  In single-user mode no uid
          changes: users/cdb uid/gid are not applied and uid 0 is not refused.
REPORT    qmail-local's output (cut at its first NUL; over 3000 bytes → 2966 bytes +
          ``\\nError report too long, sorry.\\n``) after a letter from its exit code: 0 K;
          111 71 74 75 Z; anything else D.  Fixed texts for 112-126 (exitcodes.LOCAL_FIXED)
          and ``Zqmail-local crashed.`` for a signal.  A nonzero qmail-getpw exit becomes
          the child's exit code.
TRUSTS    qmail-send for the command stream; re-checks the message file (regular, owned
          by the queue owner) and never runs a delivery as root in privileged mode.
          Parses nothing from the network.
EXIT      0 when fd 0 is at EOF and every delivery is reported; 100 no argument; 111
          cannot reach the queue or find the qmailp account / nofiles group.
"""
from __future__ import annotations

import importlib
import os
import sys

from qpy import auto, fdio, getpw, prot, spawn, users, warm
from qpy.errors import Exit, QmailError, temporary_errno
from qpy.exitcodes import LOCAL_FIXED, QLX, local_letter


# Single-user mode only: deliveries run in up to this many long-lived worker children
# (qpy.spawn WORKERS) instead of a fork each; every delivery runs as the invoking user
# there anyway.  Privileged mode keeps a fresh child per delivery (it changes uid).
WORKERS = 16


def report(status: int, output: bytes) -> bytes:
    """docs/protocols.md §3: the K/Z/D report for qmail-local's exit status and output."""
    if status < 0:
        return b"Zqmail-local crashed.\n"
    if status in LOCAL_FIXED:
        return LOCAL_FIXED[status].encode()
    return local_letter(status).encode() + output.split(b"\0", 1)[0]


class LocalHooks(spawn.Hooks):
    """qmail-lspawn's part of the spawner: user lookup, privilege drop, qmail-local."""

    truncreport = 3000
    crash_code = QLX.SYS

    def __init__(self, defaultdelivery: bytes, priv: bool) -> None:
        self.defaultdelivery = defaultdelivery
        self.priv = priv
        self.workers = 0 if priv else WORKERS
        self.qmailp: prot.Account | None = None
        self.nofiles: int | None = None
        if priv:
            self.qmailp = prot.lookup_user(auto.QMAILP)
            self.nofiles = prot.lookup_group(auto.GROUP_NOFILES)

    def report(self, status: int, output: bytes) -> bytes:
        """See ``report``."""
        return report(status, output)

    def child(self, sender: bytes, recipient: bytes, at: int) -> int:
        """Find the account, become it, run qmail-local."""
        local, domain = recipient[:at], recipient[at + 1:]
        if not local:
            return 0
        try:
            os.chdir(auto.home())
        except OSError:
            return QLX.USAGE
        try:
            who = self.account(local)
            if self.priv:
                try:
                    prot.drop_to(who.uid, who.gid)
                except (QmailError, OSError):
                    return QLX.USAGE
                if os.getuid() == 0:
                    return QLX.ROOT
        except Exit as e:
            return e.code
        argv = [os.fsdecode(a) for a in (b"--", who.user, who.home, local, who.dash, who.ext,
                                         domain, sender, self.defaultdelivery)]
        try:
            return warm.run_or_exec("qmail-local", argv)
        except OSError as e:
            return QLX.EXECSOFT if temporary_errno(e.errno) else QLX.EXECHARD

    def account(self, local: bytes) -> getpw.Entry:
        """users/cdb first, then qmail-getpw's search."""
        try:
            a = users.lookup(local, "users/cdb")
        except QmailError:
            raise Exit(QLX.CDB)
        if a is not None:
            return a
        if self.priv:
            return self.run_getpw(local)
        try:
            return getpw.lookup(local, priv=False)
        except QmailError as e:
            raise Exit(e.exit_code)

    def run_getpw(self, local: bytes) -> getpw.Entry:
        """Run qmail-getpw as qmailp/nofiles in a grandchild; parse its answer."""
        if self.qmailp is None or self.nofiles is None:
            raise Exit(QLX.SYS)
        r, w = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            raise Exit(QLX.SYS)
        if pid == 0:
            code = QLX.RUNGETPW
            try:
                try:
                    prot.drop_to(self.qmailp.uid, self.nofiles)
                except (QmailError, OSError):
                    warm.child_exit(QLX.USAGE)
                null = os.open(os.devnull, os.O_RDONLY)
                warm.place_fds({0: null, 1: w}, keep=(2,))
                code = warm.run_or_exec("qmail-getpw", [os.fsdecode(local)])
            except BaseException as e:
                warm.report_crash(e)
            warm.child_exit(code)
        os.close(w)
        try:
            data = fdio.read_all(r)
        except OSError:
            raise Exit(QLX.SYS)
        finally:
            os.close(r)
        wstat = fdio.wait_status(pid)
        if os.WIFSIGNALED(wstat):
            raise Exit(QLX.SYS)
        if os.WEXITSTATUS(wstat) != 0:
            raise Exit(os.WEXITSTATUS(wstat))
        entry = getpw.decode(data)
        if entry is None:
            raise Exit(QLX.USAGE)
        return entry


def main(argv: list[str] | None = None) -> int:
    """Check the argument, enter the queue, serve qmail-send."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        return 100
    priv = prot.privileged()
    try:
        spawn.enter_queue()
    except QmailError:
        return 111
    hooks = LocalHooks(os.fsencode(args[0]), priv)
    if priv and (hooks.qmailp is None or hooks.nofiles is None):
        return 111
    warm.preload("qmail-local", "qmail-getpw", "qmail-queue")
    importlib.import_module("qpy.qmailq")    # qmail-local imports it only to forward
    return spawn.run(hooks)
