"""tcpserver - accept TCP connections and run a program for each (ucspi-tcp 0.88 compatible).

SYNOPSIS  tcpserver [-1UXpPhHrRoOdDqQv4] [-c limit] [-C perclient[:message]] [-x rules.cdb]
          [-B banner] [-g gid] [-u uid] [-b backlog] [-l localname] [-t timeout]
          host port prog [arg ...]
RUNS AS   root when it must bind a low port: it binds, then sets -g gid and -u uid
          (numeric) before accepting anything; otherwise any user.
HOST      ``0`` or empty: every local address, IPv6 and IPv4 on one ``::`` socket
          (``0.0.0.0`` if the system has no IPv6, or with -4); a dotted IPv4 or an
          IPv6 literal (``::``, ``::1``); or a name (first IPv4 address, else IPv6).
PORT      a number, a /etc/services name, or 0 (the kernel picks; see -1).
CHILD     per connection: banner (-B) → names (PTR unless -H; local unless -l) → ident
          (RFC 1413 unless -R, -t seconds) → tcp-environ variables (qpy.tcpenv: PROTO=TCP
          or TCP6, TCP*, and TCP6* for IPv6 clients) → rules (-x, ucspi-tcp's lookup order,
          rule variables applied last) → fd 0 and 1 = the socket → prog.  A program of
          ours (qpy.chain) runs warm in the child, without an exec; anything else, or
          everything with QPY_EXEC=1, is exec'd through $PATH.
LIMITS    -c: at most ``limit`` children; further clients wait in the listen queue.
          -C (qpy, as tcpsvd's -C n:msg): at most ``perclient`` of them for one client
          address (an IPv6 client: its /64).  A client over that limit is refused by the
          parent at once, before anything else: it writes ``message`` and CRLF if given,
          closes, and forks nothing (no slot, no DNS).  Stress (qpy, as Postfix's stress
          mode): a connection accepted while at least 3/4 of the -c slots are in use runs
          with QPYSTRESS=1 (qmail-smtpd then uses short timeouts); others without it.
LOG       fd 2, -v: ``tcpserver: status: n/limit``, ``pid P from IP``, ``ok|deny P
          lhost:lip:lport rhost:rip:rinfo:rport`` (unsafe bytes and ``:`` → ``?``, except
          the ``:`` of IPv6 addresses; values cut at 100 with ``...``), ``end P status W``.
          -Q (default) errors only, -q nothing.  -v also logs ``busy IP n/perclient``
          for each client refused by -C.
TRUSTS    nothing from the network; the rules cdb and the command line are the admin's.
EXIT      parent: 0 on SIGTERM (children keep running), 100 usage, 111 fatal.
          child: 100 denied by the rules, 111 dropped (rules unreadable, banner or exec
          failure), else the program's own code.
"""
from __future__ import annotations

import errno
import gc
import getopt
import ipaddress
import os
import select
import signal
import socket
import sys
import traceback
from dataclasses import dataclass

from qpy import chain, errstr, fdio, prot, scan, tcpenv, tcprules, warm
from qpy.errors import CdbError, Exit, QmailError

USAGE = ("tcpserver: usage: tcpserver [ -1UXpPhHrRoOdDqQv ] [ -c limit ] [ -C perclient[:msg] ] "
         "[ -x rules.cdb ] "
         "[ -B banner ] [ -g gid ] [ -u uid ] [ -b backlog ] [ -l localname ] [ -t timeout ] "
         "host port program")
FATAL = "tcpserver: fatal: "                              # an Exit before serving
DROP = "tcpserver: warning: dropping connection, "        # an Exit in a connection's child
OPTSTRING = "dDvqQhHrR1UXx:t:u:g:l:b:B:c:C:pPoO4"
DNS_TIMEOUT = 30.0
STRESS = "QPYSTRESS"            # set to 1 in a child accepted while the slots are nearly full


@dataclass
class Options:
    """The command line, with ucspi-tcp's defaults."""

    limit: int = 40
    per_client: int = 0         # -C: 0 = no per-client limit
    busy_message: bytes = b""   # -C n:message, sent (with CRLF) to a client over it
    backlog: int = 20
    rules: str | None = None
    allow_norules: bool = False
    banner: bytes = b""
    uid: int = 0
    gid: int = 0
    print_port: bool = False
    verbosity: int = 1
    delay: bool = True
    kill_options: bool = True
    remote_host: bool = True
    paranoid: bool = False
    local_host: str | None = None
    remote_info: bool = True
    timeout: int = 26
    ipv4_only: bool = False


_FLAGS = {
    "-d": ("delay", True), "-D": ("delay", False), "-v": ("verbosity", 2),
    "-q": ("verbosity", 0), "-Q": ("verbosity", 1), "-p": ("paranoid", True),
    "-P": ("paranoid", False), "-o": ("kill_options", False), "-O": ("kill_options", True),
    "-h": ("remote_host", True), "-H": ("remote_host", False), "-r": ("remote_info", True),
    "-R": ("remote_info", False), "-1": ("print_port", True), "-X": ("allow_norules", True),
    "-4": ("ipv4_only", True),
}
_NUMBERS = {"-c": "limit", "-b": "backlog", "-t": "timeout", "-u": "uid", "-g": "gid"}


def parse_args(argv: list[str]) -> tuple[Options, str, str, list[str]]:
    """argv → (options, host, port, program argv).  Raises Exit(100)."""
    try:
        pairs, rest = getopt.getopt(argv, OPTSTRING)
    except getopt.GetoptError:
        raise Exit(100, USAGE)
    opts = Options()
    for flag, value in pairs:
        if flag in _FLAGS:
            setattr(opts, *_FLAGS[flag])
        elif flag in _NUMBERS:
            setattr(opts, _NUMBERS[flag], scan.ulong(value))
        elif flag == "-C":
            count, colon, message = value.partition(":")
            opts.per_client = scan.ulong(count)
            if not opts.per_client:
                raise Exit(100, USAGE)
            opts.busy_message = os.fsencode(message) + b"\r\n" if colon and message else b""
        elif flag == "-x":
            opts.rules = value
        elif flag == "-B":
            opts.banner = os.fsencode(value)
        elif flag == "-l":
            opts.local_host = value
        elif flag == "-U":
            opts.uid = scan.ulong(os.environ.get("UID", str(opts.uid)))
            opts.gid = scan.ulong(os.environ.get("GID", str(opts.gid)))
    if len(rest) < 3:
        raise Exit(100, USAGE)
    return opts, rest[0], rest[1], rest[2:]


class Log:
    """Lines on fd 2, subject to the verbosity (0 nothing, 1 errors, 2 status lines too)."""

    def __init__(self, verbosity: int) -> None:
        self.verbosity = verbosity

    def write(self, line: str, level: int = 1) -> None:
        if self.verbosity >= level:
            try:
                os.write(2, os.fsencode(line + "\n"))
            except OSError:
                pass


def safe(value: str | None, colons: bool = False) -> str:
    """ucspi-tcp's safecats: bytes < 33 or > 126, ``%`` and ``:`` → ``?``; 100 bytes then ``...``."""
    if value is None:
        return ""
    data = os.fsencode(value)
    out = bytearray()
    for ch in data[:100]:
        if ch < 33 or ch > 126 or ch == 0x25 or (ch == 0x3A and not colons):
            ch = 0x3F
        out.append(ch)
    return out.decode("ascii") + ("..." if len(data) >= 100 else "")


def port_number(text: str) -> int:
    """A port argument: all digits (empty = 0), else a /etc/services name.  Raises Exit(111)."""
    if text == "" or text.isdigit():
        return int(text or 0)
    try:
        return socket.getservbyname(text, "tcp")
    except OSError:
        raise Exit(111, f"unable to figure out port number for {text}")


def bind_address(host: str, ipv4_only: bool) -> list[tuple[int, str]]:
    """The (family, address) choices to bind for ``host``, best first.  Raises Exit(111)."""
    if host in ("", "0"):
        return [(socket.AF_INET, "0.0.0.0")] if ipv4_only else [
            (socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")]
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return [(family, host)]
        except OSError:
            continue
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        if e.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
            raise Exit(111, f"no IP address for {host}")
        raise Exit(111, f"temporarily unable to figure out IP address for {host}: {e.strerror}")
    for want in (socket.AF_INET, socket.AF_INET6):
        for family, _, _, _, addr in infos:
            if family == want:
                return [(family, addr[0])]
    raise Exit(111, f"no IP address for {host}")


def listen(host: str, port: int, opts: Options) -> socket.socket:
    """Create, bind (SO_REUSEADDR) and listen.  Raises Exit(111)."""
    choices = bind_address(host, opts.ipv4_only)
    for i, (family, address) in enumerate(choices):
        last = i == len(choices) - 1
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as e:
            if last:
                raise Exit(111, f"unable to create socket: {errstr.text(e)}")
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and address == "::" and host in ("", "0"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((address, port))
        except OSError as e:
            sock.close()
            if last or e.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                raise Exit(111, f"unable to bind: {errstr.text(e)}")
            continue
        try:
            sock.listen(opts.backlog)
        except OSError as e:
            raise Exit(111, f"unable to listen: {errstr.text(e)}")
        return sock
    raise Exit(111, "unable to bind: address not available")


def drop_privileges(opts: Options) -> None:
    """-g then -u, as ucspi-tcp does right after binding.  Raises Exit(111)."""
    if opts.gid:
        try:
            prot.set_gid(opts.gid)
        except OSError as e:
            raise Exit(111, f"unable to set gid: {errstr.text(e)}")
    if opts.uid:
        try:
            prot.set_uid(opts.uid)
        except OSError as e:
            raise Exit(111, f"unable to set uid: {errstr.text(e)}")


# ---------------------------------------------------------------- child


def describe(conn: tcpenv.Connection, opts: Options) -> None:
    """Fill in the local and remote names and the ident answer (ucspi-tcp's order)."""
    resolver = None
    if opts.local_host is None or opts.remote_host:
        from qpy import resolver as qpy_resolver
        try:
            resolver = qpy_resolver.make_resolver(DNS_TIMEOUT)
        except (QmailError, OSError, ValueError):
            resolver = None   # no usable resolver configuration: names stay unknown
    conn.local_host = opts.local_host
    if conn.local_host is None and resolver is not None:
        conn.local_host = tcpenv.ptr_name(resolver, conn.local_ip)
    if opts.remote_host and resolver is not None:
        name = tcpenv.ptr_name(resolver, conn.remote_ip)
        if name and (not opts.paranoid or tcpenv.has_address(resolver, name, conn.remote_ip)):
            conn.remote_host = name
    if opts.remote_info:
        conn.remote_info = tcpenv.remote_info(conn, opts.timeout)


def set_environ(values: dict[str, str | None]) -> None:
    """Set (or unset, for None) each variable in this process's environment."""
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def apply_rules(conn: tcpenv.Connection, opts: Options) -> bool:
    """Look the client up in -x; set the rule's variables; return True if denied.  Raises Exit."""
    if opts.rules is None:
        return False
    enc = os.fsencode
    try:
        found = tcprules.find(opts.rules, enc(conn.remote_ip),
                              None if conn.remote_host is None else enc(conn.remote_host),
                              None if conn.remote_info is None else enc(conn.remote_info))
    except CdbError as e:
        cause = e.__cause__
        if isinstance(cause, FileNotFoundError) and opts.allow_norules:
            return False
        reason = errstr.text(cause) if isinstance(cause, OSError) else errstr.text(errno.EPROTO)
        raise Exit(111, f"unable to read {opts.rules}: {reason}")
    if found is None:
        return False
    rule = tcprules.decode(found[1])
    for name, value in rule.env:
        try:
            os.environb[name] = value
        except ValueError:
            continue
    return rule.deny


def status_line(word: str, conn: tcpenv.Connection) -> str:
    """The ``ok``/``deny`` line."""
    ip = conn.v6
    return (f"tcpserver: {word} {os.getpid()} {safe(conn.local_host)}:{safe(conn.local_ip, ip)}"
            f":{conn.local_port} {safe(conn.remote_host)}:{safe(conn.remote_ip, ip)}"
            f":{safe(conn.remote_info)}:{conn.remote_port}")


def setup(csock: socket.socket, remote: tuple, opts: Options, log: Log) -> bool:
    """Everything between accept and the program; return True if the rules deny.  Raises Exit."""
    log.write(f"tcpserver: pid {os.getpid()} from {tcpenv.ip_text(remote[0])[0]}", 2)
    if opts.kill_options and csock.family == socket.AF_INET:
        try:
            csock.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, b"")
        except OSError:
            pass
    if not opts.delay:
        try:
            csock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
    if opts.banner:
        try:
            csock.sendall(opts.banner)
        except OSError as e:
            raise Exit(111, f"unable to print banner: {errstr.text(e)}")
    try:
        conn = tcpenv.Connection.from_socket(csock, remote)
    except OSError as e:
        raise Exit(111, f"unable to get local address: {errstr.text(e)}")
    describe(conn, opts)
    set_environ(conn.environ())
    deny = apply_rules(conn, opts)
    log.write(status_line("deny" if deny else "ok", conn), 2)
    return deny


def connect_fds(fd: int) -> None:
    """fd 0 = the connection, fd 1 = a copy of it (both inheritable)."""
    if fd != 0:
        os.dup2(fd, 0)
    if fd != 1:
        os.dup2(fd, 1)
    if fd > 1:
        os.close(fd)
    os.set_inheritable(0, True)
    os.set_inheritable(1, True)


def run_program(argv: list[str], log: Log) -> int:
    """Run prog: warm if it is ours, else exec.  Returns the exit code of a warm run."""
    try:
        return chain.run_next(argv)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        sys.stderr.write(f"{e.code}\n")
        return 1
    except OSError as e:
        log.write(f"{DROP}unable to run {argv[0]}: {errstr.text(e)}")
        return 111
    except Exception:
        traceback.print_exc()
        return 1


def child(csock: socket.socket, remote: tuple, closing: list[int], opts: Options,
          argv: list[str], log: Log, stress: bool = False) -> None:
    """The forked child: serve one connection and never return."""
    code = 111
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        for fd in closing:
            os.close(fd)
        if stress:
            os.environ[STRESS] = "1"
        else:
            os.environ.pop(STRESS, None)
        try:
            code = 100 if setup(csock, remote, opts, log) else -1
        except Exit as e:
            log.write(DROP + e.text)
            code = e.code
        if code == -1:
            fd = csock.detach()
            os.set_blocking(fd, True)
            connect_fds(fd)
            code = run_program(argv, log)
    except BaseException:
        traceback.print_exc()
        code = 111
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    warm.child_exit(code)


# ---------------------------------------------------------------- parent


def client_key(address: str) -> str:
    """What -C counts by: an IPv4 address, or the /64 of an IPv6 one (one site's LAN)."""
    text, v6 = tcpenv.ip_text(address)
    if not v6:
        return text
    return str(ipaddress.IPv6Network((text, 64), strict=False).network_address)


class Server:
    """The accept loop: at most ``limit`` children, at most ``per_client`` of them for one
    client address; SIGCHLD wakes it through a pipe."""

    def __init__(self, sock: socket.socket, opts: Options, argv: list[str], log: Log) -> None:
        self.sock, self.opts, self.argv, self.log = sock, opts, argv, log
        self.children = 0
        self.clients: dict[int, str] = {}     # pid → client_key, for -C
        self.per_client: dict[str, int] = {}  # client_key → running children
        self.wake = fdio.SelfPipe()
        sock.setblocking(False)

    def status(self) -> None:
        self.log.write(f"tcpserver: status: {self.children}/{self.opts.limit}", 2)

    def reap(self) -> None:
        """Collect every finished child."""
        for pid, wstat in fdio.reap():
            self.log.write(f"tcpserver: end {pid} status {wstat}", 2)
            if self.children:
                self.children -= 1
            key = self.clients.pop(pid, None)
            if key is not None:
                left = self.per_client.get(key, 1) - 1
                if left > 0:
                    self.per_client[key] = left
                else:
                    self.per_client.pop(key, None)
            self.status()

    def serve(self) -> None:
        """Accept and fork forever (SIGTERM ends the process)."""
        self.wake.install()
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        self.status()
        while True:
            self.reap()
            watch = [self.wake.r]
            if self.children < self.opts.limit:
                watch.append(self.sock)
            ready, _, _ = select.select(watch, [], [])
            if self.wake.r in ready:
                self.wake.drain()
            if self.sock in ready and self.children < self.opts.limit:
                self.accept()

    def accept(self) -> None:
        """Accept one connection and fork its child."""
        try:
            csock, remote = self.sock.accept()
        except OSError:
            return
        key = client_key(remote[0]) if self.opts.per_client else ""
        if self.opts.per_client and self.per_client.get(key, 0) >= self.opts.per_client:
            self.refuse(csock, key)
            return
        # Stress: at least 3/4 of the slots were busy when this client came in.
        stress = self.children * 4 >= self.opts.limit * 3
        self.children += 1
        self.status()
        try:
            pid = os.fork()
        except OSError as e:
            self.log.write(f"{DROP}unable to fork: {errstr.text(e)}")
            self.children -= 1
            self.status()
            csock.close()
            return
        if pid == 0:
            child(csock, remote, [self.sock.detach(), self.wake.r, self.wake.w], self.opts,
                  self.argv, self.log, stress)
        if self.opts.per_client:
            self.clients[pid] = key
            self.per_client[key] = self.per_client.get(key, 0) + 1
        csock.close()

    def refuse(self, csock: socket.socket, key: str) -> None:
        """-C: a client over its limit gets the message, if any, and is closed; no child."""
        self.log.write(f"tcpserver: busy {key} {self.per_client[key]}/{self.opts.per_client}", 2)
        if self.opts.busy_message:
            try:
                # A fresh socket's send buffer always holds one short line: never blocks.
                csock.send(self.opts.busy_message, socket.MSG_DONTWAIT)
            except OSError:
                pass
        csock.close()


def on_term(signum: int, frame: object) -> None:
    """SIGTERM: the parent leaves at once; children keep running."""
    os._exit(0)


def main(argv: list[str] | None = None) -> int:
    """Parse, bind, drop privileges, preload our programs, serve."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        opts, host, port_text, prog = parse_args(argv)
    except Exit as e:
        os.write(2, (e.text + "\n").encode())
        return e.code
    log = Log(opts.verbosity)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        sock = listen(host, port_number(port_text), opts)
        drop_privileges(opts)
    except Exit as e:
        log.write(FATAL + e.text)
        return e.code
    if opts.print_port:
        os.write(1, b"%d\n" % sock.getsockname()[1])
    if opts.remote_host or opts.local_host is None:
        from qpy import resolver  # noqa: F401  (import dnspython once, in the parent)
        import dns.reversename  # noqa: F401
    ours = chain.preload(prog)
    if ours:
        try:
            warm.preload("qmail-queue")   # our servers queue through a warm qmail-queue child
            from qpy import queuewrite    # ... or write the queue in-process (qpy.qmailq)
            queuewrite.prepare()
            from qpy import submit        # ... which signs relay clients' mail
            submit.preload()
            if "qmail-smtpd" in ours:     # ... and checks mail from outside (DKIM, DMARC)
                from qpy import inbound
                inbound.preload()
        except ImportError:
            pass
    server = Server(sock, opts, prog, log)
    for fd in (0, 1):
        fdio.close_quietly(fd)
    # Everything imported so far lives as long as we do: keep it out of the cyclic GC, so a
    # full collection in a forked session never touches (and copies) the parent's pages.
    gc.freeze()
    server.serve()
    return 0
