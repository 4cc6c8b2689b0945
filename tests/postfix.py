"""Debian's Postfix as a test peer: a private instance in a temporary directory.

    with Postfix() as pf:                                # SMTP on 127.0.0.1:<pf.port>
        ... send to user@pf.test via 127.0.0.1:pf.port ...
        msgs = pf.wait_for_messages(1)                   # mailbox.MaildirMessage list
        pf.maildir()                                     # mailbox.Maildir of user@pf.test

Everything lives under one directory (by default a fresh world-traversable one in
/tmp, removed afterwards, since the postfix and nobody accounts must reach it):
config_directory (main.cf, master.cf,
the virtual mailbox map), queue_directory, data_directory, the Maildir base and
the log file (``maillog_file``; there is no syslog in a test).  It listens on
127.0.0.1 only, on a free port, with no chroot.  Mail for ``<user>@<domain>`` is
delivered by Postfix's ``virtual`` agent into ``<dir>/mail/<user>/`` (a Maildir,
owned by ``nobody``).  With ``relayhost=("127.0.0.1", port)`` Postfix relays every
other domain to that SMTP server (``relayhost = [127.0.0.1]:port``), so a test can
send Postfix → qpy.  ``tls=(certfile, keyfile)`` makes smtpd offer STARTTLS.

Postfix's master runs as root (its daemons drop to the ``postfix`` account), so
callers need root: use ``need_root()`` and ``need_program("postfix")``.
"""
from __future__ import annotations

import mailbox
import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

POSTFIX = "/usr/sbin/postfix"

MASTER_CF = """\
{listen} inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Postfix:
    """One private Postfix instance, started and stopped by the test."""

    def __init__(self, base: Path | None = None, *, domain: str = "pf.test", user: str = "user",
                 port: int | None = None, relayhost: tuple[str, int] | None = None,
                 tls: tuple[str, str] | None = None, hostname: str = "postfix.test") -> None:
        if base is None:       # world-traversable: the postfix and nobody accounts must reach it
            import tempfile
            base = Path(tempfile.mkdtemp(prefix="qpy-postfix-"))
            os.chmod(base, 0o755)
            self.owns_base = True
        else:
            self.owns_base = False
        self.base = Path(base)
        self.domain = domain
        self.user = user
        self.port = port or free_port()
        self.relayhost = relayhost
        self.tls = tls
        self.hostname = hostname
        self.config = self.base / "etc"
        self.queue = self.base / "spool"
        self.data = self.base / "data"
        self.mail = self.base / "mail"
        self.log = self.base / "maillog"
        self.started = False

    # -- configuration --------------------------------------------------------------------
    def main_cf(self) -> str:
        nobody = pwd.getpwnam("nobody")
        settings = {
            "compatibility_level": "3.6",
            "config_directory": str(self.config),
            "queue_directory": str(self.queue),
            "data_directory": str(self.data),
            "maillog_file": str(self.log),
            "maillog_file_prefixes": str(self.base),
            "myhostname": self.hostname,
            "mydomain": "postfix.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "biff": "no",
            "smtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "disable_vrfy_command": "yes",
            "virtual_mailbox_domains": self.domain,
            "virtual_mailbox_base": str(self.mail),
            "virtual_mailbox_maps": f"texthash:{self.config / 'vmailbox'}",
            "virtual_minimum_uid": "1",
            "virtual_uid_maps": f"static:{nobody.pw_uid}",
            "virtual_gid_maps": f"static:{nobody.pw_gid}",
            "message_size_limit": "50000000",
            "smtputf8_enable": "yes",
            "queue_run_delay": "5s",
            "minimal_backoff_time": "5s",
            "maximal_backoff_time": "10s",
            "smtpd_banner": "$myhostname ESMTP Postfix",
        }
        if self.relayhost:
            host, port = self.relayhost
            settings["relayhost"] = f"[{host}]:{port}"
        if self.tls:
            cert, key = self.tls
            settings.update({"smtpd_tls_security_level": "may", "smtpd_tls_cert_file": cert,
                             "smtpd_tls_key_file": key, "smtpd_tls_received_header": "yes"})
        else:
            settings["smtpd_tls_security_level"] = "none"
        settings["smtp_tls_security_level"] = "may" if self.tls else "none"
        return "".join(f"{k} = {v}\n" for k, v in settings.items())

    def write_config(self) -> None:
        for d in (self.config, self.queue, self.data, self.mail):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        nobody = pwd.getpwnam("nobody")
        os.chown(self.mail, nobody.pw_uid, nobody.pw_gid)
        (self.config / "main.cf").write_text(self.main_cf())
        (self.config / "master.cf").write_text(MASTER_CF.format(listen=f"127.0.0.1:{self.port}"))
        (self.config / "vmailbox").write_text(f"{self.user}@{self.domain} {self.user}/\n")
        postfix = pwd.getpwnam("postfix")
        os.chown(self.data, postfix.pw_uid, postfix.pw_gid)

    # -- running --------------------------------------------------------------------------
    def command(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``postfix -c <config> args…``."""
        return subprocess.run([POSTFIX, "-c", str(self.config), *args], capture_output=True,
                              timeout=120, check=check)

    def start(self) -> "Postfix":
        self.write_config()
        r = self.command("start", check=False)
        if r.returncode != 0:
            raise RuntimeError(f"postfix start failed: {r.stdout!r} {r.stderr!r}\n{self.log_text()}")
        self.started = True
        self.wait_listening()
        return self

    def wait_listening(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                    s.settimeout(10)
                    if s.recv(100).startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"postfix does not listen on {self.port}\n{self.log_text()}")
            time.sleep(0.1)

    def flush(self) -> None:
        """Ask Postfix to retry its deferred mail now."""
        self.command("flush", check=False)

    def stop(self) -> None:
        if not self.started:
            return
        self.command("stop", check=False)
        pidfile = self.queue / "pid" / "master.pid"
        deadline = time.monotonic() + 30
        while pidfile.exists() and time.monotonic() < deadline:
            try:
                pid = int(pidfile.read_text().split()[0])
                os.kill(pid, 0)
            except (ValueError, IndexError, ProcessLookupError, FileNotFoundError):
                break
            time.sleep(0.1)
        self.started = False

    def __enter__(self) -> "Postfix":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # -- results --------------------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def maildir(self) -> mailbox.Maildir:
        """The test user's Maildir (read with Python's mailbox, not parsed as email)."""
        return mailbox.Maildir(str(self.mail / self.user), factory=None, create=False)

    def wait_for_messages(self, count: int, timeout: float = 60) -> list[bytes]:
        """The raw bytes of the Maildir's messages once there are ``count`` of them."""
        deadline = time.monotonic() + timeout
        while True:
            path = self.mail / self.user
            if (path / "new").is_dir():
                box = self.maildir()
                keys = sorted(box.keys())
                if len(keys) >= count:
                    return [box.get_bytes(k) for k in keys]
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} message(s) not delivered by Postfix\n{self.log_text()}")
            time.sleep(0.1)

    def cleanup(self) -> None:
        """Stop, and remove the directory if this object made it."""
        self.stop()
        if self.owns_base:
            shutil.rmtree(self.base, ignore_errors=True)
