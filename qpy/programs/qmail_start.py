"""qmail-start - build the delivery daemons' process tree, then become qmail-send.

SYNOPSIS  qmail-start [defaultdelivery [logger arg...]]
RUNS AS   root (privileged mode: root with the instance's queue owned by qmailq), or
          the invoking user (single-user mode: nobody changes uid).
DOES      chdir /, umask 077, group qmail; makes fds 2-6 copies of fd 0.  With a
          logger: a pipe to ``logger arg...`` (exec'd, PATH search, as qmaill/nofiles,
          fd 0 = the pipe), whose write end becomes fd 1.  Then six pipes and three
          children, each with fd 2 on /dev/null and nothing else open:
            qmail-lspawn defaultdelivery (default ./Mailbox)  root / qmail    0 ← send 1, 1 → send 2
            qmail-rspawn                                      qmailr / qmail  0 ← send 3, 1 → send 4
            qmail-clean                                       qmailq / qmail  0 ← send 5, 1 → send 6
          and finally runs qmail-send itself as qmails / qmail, with fd 0 = the log
          (our fd 1) and fds 1-6 as above.  The children run warm (fork, no exec);
          QPY_EXEC=1 execs QMAILHOME/bin/<program> instead.  The environment, rlimits
          and terminal pass through to every child.
TRUSTS    its arguments and the instance (it runs as root from the boot script).
PRINTS    nothing.
EXIT      qmail-send's exit code; 111 on any failure before it runs.
"""
from __future__ import annotations

import os
import sys

from qpy import auto, prot, warm
from qpy.errors import Exit

DEFAULT_DELIVERY = "./Mailbox"


class Ids:
    """uid/gid/groups of each daemon; None means "leave as is" (single-user mode)."""

    def __init__(self, priv: bool) -> None:
        self.priv = priv
        if not priv:
            return
        gidq = prot.lookup_group(auto.GROUP_QMAIL)
        gidn = prot.lookup_group(auto.GROUP_NOFILES)
        if gidq is None or gidn is None:
            raise Exit(111, "missing group")
        self.gid_qmail, self.gid_nofiles = gidq, gidn
        self.accounts = {name: prot.account(name, True)
                         for name in (auto.QMAILL, auto.QMAILQ, auto.QMAILR, auto.QMAILS)}

    def become(self, name: str | None, gid: int | None = None) -> None:
        """Drop to account ``name`` (None: stay root) with group ``gid`` (default qmail)."""
        if not self.priv:
            return
        gid = self.gid_qmail if gid is None else gid
        if name is None:
            prot.drop_to(0, gid)
            return
        acct = self.accounts[name]
        groups = [gid] if acct.gid == gid else [gid, acct.gid]
        prot.drop_to(acct.uid, gid, groups)


def _child(ids: Ids, account: str | None, fds: dict[int, int], program: str,
           argv: list[str]) -> None:
    """In a forked child: wire fds, drop privileges, run the program warm (or exec it)."""
    code = 111
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        warm.place_fds({**fds, 2: devnull}, keep=())
        ids.become(account)
        code = warm.run_or_exec(program, argv)
    except BaseException as e:
        warm.report_crash(e)
    warm.child_exit(code)


def _fork() -> int:
    """fork, or Exit(111)."""
    try:
        return os.fork()
    except OSError as e:
        raise Exit(111, "fork") from e


def start_logger(ids: Ids, argv: list[str]) -> None:
    """Run the logger on a pipe; our fd 1 becomes the pipe's write end."""
    r, w = os.pipe()
    if _fork() == 0:
        try:
            warm.place_fds({0: r, 1: 1}, keep=())
            if ids.priv:
                ids.become(auto.QMAILL, ids.gid_nofiles)
            os.execvp(argv[0], argv)
        except BaseException as e:
            warm.report_crash(e)    # fd 2 is closed once the fds are placed: silent after that
        warm.child_exit(111)
    os.close(r)
    os.dup2(w, 1)
    os.close(w)


def start(argv: list[str]) -> int:
    """Build the tree and run qmail-send in this process; return its exit code."""
    home = os.path.abspath(auto.home())
    os.environ["QMAILHOME"] = home  # we leave for /; the daemons find the instance by it
    priv = prot.privileged(home)
    ids = Ids(priv)
    try:
        os.chdir("/")
    except OSError as e:
        raise Exit(111, "chdir") from e
    prot.set_umask(0o077)
    ids.become(None)
    for fd in range(2, 7):
        os.dup2(0, fd)
    delivery = argv[0] if argv else DEFAULT_DELIVERY
    if len(argv) > 1:
        start_logger(ids, argv[1:])
    pipes = [os.pipe() for _ in range(6)]
    to_l, from_l, to_r, from_r, to_c, from_c = pipes
    children = ((None, to_l[0], from_l[1], "qmail-lspawn", [delivery]),
                (auto.QMAILR, to_r[0], from_r[1], "qmail-rspawn", []),
                (auto.QMAILQ, to_c[0], from_c[1], "qmail-clean", []))
    for account, fd0, fd1, program, args in children:
        if _fork() == 0:
            _child(ids, account, {0: fd0, 1: fd1}, program, args)
    # The rest of this process is qmail-send.
    ids.become(auto.QMAILS)
    warm.place_fds({0: 1, 1: to_l[1], 2: from_l[0], 3: to_r[1], 4: from_r[0], 5: to_c[1],
                    6: from_c[0]}, keep=())
    return warm.run_or_exec("qmail-send", [])


def main(argv: list[str] | None = None) -> int:
    """qmail-start [defaultdelivery [logger arg...]]."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        return start(argv)
    except Exit as e:
        return e.code
    except Exception:
        return 111
