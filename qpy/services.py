"""Service directories for daemontools (svscan/supervise) and runit (runsvdir/runsv).

Both supervisors run ``<service>/run`` and pipe its output into ``<service>/log/run``;
the log service runs multilog as qmaill with ``t`` so every line gets a TAI64N stamp
(readable with tai64nlocal).  One directory tree serves both supervisors.
"""
from __future__ import annotations

import os
import shlex

from qpy import auto, prot

LOGGER = "multilog t s1000000 n20 ./main"          # daemontools
RUNIT_LOGGER = "svlogd -t ./main"                   # runit: -t is a TAI64N stamp too
SMTP_LIMIT = 20                                     # tcpserver -c of the qmail-smtpd service
BUSY = "421 too many connections from your address (#4.7.0)"


def per_client(limit: int) -> str:
    """tcpserver's -C argument for ``limit`` slots: a fifth of them for one address, and the
    421 that a client over it reads (docs/ucspi-tcp.md)."""
    return f"{max(1, limit // 5)}:{BUSY}"


def run_scripts(home: str, me: str, defaultdelivery: str, smtp_host: str, smtp_port: int,
                programs: set[str]) -> dict[str, str]:
    """The run scripts, by service name, for the programs this tree has."""
    q = shlex.quote
    bin_ = os.path.join(home, "bin")
    env = f"env - PATH={q(bin_)}:/usr/bin:/bin QMAILHOME={q(home)}"
    scripts = {
        "qmail-send": f"exec {env} {q(bin_)}/qmail-start {q(defaultdelivery)} 2>&1\n",
        "qmail-smtpd": (
            f"uid=$(id -u {auto.QMAILD}) gid=$(id -g {auto.QMAILD})\n"
            f"exec {env} {q(bin_)}/tcpserver -v -R -l {q(me)} -x {q(home)}/control/tcp.smtp.cdb -X"
            f" -c {SMTP_LIMIT} -C {q(per_client(SMTP_LIMIT))} -u \"$uid\" -g \"$gid\""
            f" {q(smtp_host)} {smtp_port} qmail-smtpd 2>&1\n"),
    }
    # Privileged mode: callers who are not qmailq queue through these two (SECURITY.md).
    for name in ("qmail-queued", "qmail-pickup"):
        if name in programs:
            scripts[name] = f"exec {env} {q(bin_)}/{name} 2>&1\n"
    return scripts


def write(service_dir: str, scripts: dict[str, str]) -> list[str]:
    """Create <service_dir>/<name>/{run,log/run,log/main}; return the service paths."""
    qmaill = prot.lookup_user(auto.QMAILL)
    made = []
    for name, body in scripts.items():
        svc = os.path.join(service_dir, name)
        os.makedirs(os.path.join(svc, "log", "main"), exist_ok=True)
        _script(os.path.join(svc, "run"), "#!/bin/sh\n" + body)
        user = auto.QMAILL if qmaill is not None and os.geteuid() == 0 else ""
        _script(os.path.join(svc, "log", "run"), "#!/bin/sh\n" + log_script(user))
        if user and qmaill is not None:
            os.chown(os.path.join(svc, "log", "main"), qmaill.uid, qmaill.gid)
        os.chmod(os.path.join(svc, "log", "main"), 0o755)
        made.append(svc)
    return made


def log_script(user: str) -> str:
    """multilog where daemontools is installed, else runit's svlogd; as ``user`` if given."""
    as_daemontools = f"setuidgid {user} " if user else ""
    as_runit = f"chpst -u {user} " if user else ""
    return (f"if command -v multilog >/dev/null 2>&1; then exec {as_daemontools}{LOGGER}; fi\n"
            f"exec {as_runit}{RUNIT_LOGGER}\n")


def _script(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o755)
    os.rename(tmp, path)


def link(services: list[str], scan_dir: str) -> None:
    """Symlink each service into a supervisor's scan directory (/service, /etc/service)."""
    os.makedirs(scan_dir, exist_ok=True)
    for svc in services:
        target = os.path.join(scan_dir, os.path.basename(svc))
        if not os.path.lexists(target):
            os.symlink(svc, target)
