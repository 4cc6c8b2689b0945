"""qpy - create, run and inspect qpy instances.

SYNOPSIS  qpy init   [--home DIR] [--me HOSTNAME]
          qpy run    [--home DIR] [--me HOSTNAME] [--host IP] [--port N] [--user NAME]
                     [--log-size BYTES] [--log-files N]
          qpy user add NAME [--home DIR];  qpy user list [--home DIR]
          qpy status [--home DIR]
          qpy dkim keygen DOMAIN [--selector S] [--type rsa|ed25519] [--bits N] [--home DIR]
          qpy dkim show DOMAIN [--selector S];  qpy dkim use DOMAIN SELECTOR…
          qpy doctor [DOMAIN] [--ip ADDRESS] [--timeout SECONDS] [--json] [--home DIR]
          qpy install [--home /var/qmail] [--me HOST] [--service-dir DIR] [--link SCANDIR] …
RUNS AS   the admin or an ordinary user.  As root with the qmail accounts present,
          ``init`` gives the instance qmail's owners and modes (privileged mode);
          otherwise every file belongs to the invoking user (single-user mode).
HOME      --home, else $QMAILHOME, else ./qpy-home.
WRITES    init: the instance tree of qpy.hier (existing control files are kept).
          run: creates the instance on first use (me = localhost, one virtual user
          named after the invoking login, mail to NAME@localhost lands in
          users/NAME/Maildir/), then runs the delivery daemons, the queue service
          and pickup, and an SMTP listener on 127.0.0.1:2525 in the foreground with
          logs on the terminal and in log/current (rotated, qpy.runner); Ctrl-C stops
          cleanly.  As root it runs a privileged instance with each part as its
          account, an ordinary user's instance as that user, and refuses to create or
          run a single-user instance as root (qpy.runner.decide); one line says which.
          dkim keygen: a new private key in control/domainkeys/DOMAIN/S (qpy.dkimkeys:
          readable only by the queue's owner, who signs) and S.pub; the first key of
          its type for DOMAIN also goes into control/dkimdomains (a second type: two
          signatures); prints the TXT record to publish.  show: that record again.
          use: the selectors that sign for DOMAIN from now on (key rotation).
          doctor: writes nothing; checks through the instance's resolver (qpy.doctor)
          that DOMAIN's MX is this host, the PTR of the address mail leaves from
          (--ip, else the kernel's route out) is the HELO name and resolves back, SPF
          (one record, 10 lookups, passes), every DKIM selector's record, DMARC, the
          certificate in control/servercert.pem, MTA-STS and TLS-RPT; one line
          ``ok|warn|fail  check: why`` each, then the records to publish.  Without
          DOMAIN: every domain in control/dkimdomains, else me's parent domain.
          install (root): the qmail accounts, a privileged instance, and service
          directories (run + log/run with multilog's TAI64N stamps) for daemontools
          or runit; postmaster, mailer-daemon and root get alias/.qmail-* files
          (to --postmaster ADDRESS, else to alias/Maildir/), as qmail's INSTALL.alias.
EXIT      0 ok; 100 usage or bad argument; 111 on any failure (one line on stderr);
          doctor: 1 when a check fails (warnings allowed), 111 if the instance is unreadable.
"""
from __future__ import annotations

import getpass
import os
import re
import socket

import click

from qpy import auto, control, dkimkeys, hier, instance, prot, runner
from qpy.errors import Exit, QmailError
from qpy.programs import options

DEFAULT_HOME = "./qpy-home"

home_option = click.option(
    "--home", envvar="QMAILHOME", default=DEFAULT_HOME, show_default=True,
    type=click.Path(file_okay=False), help="The instance directory ($QMAILHOME).")


def default_me() -> str:
    """This host's fully qualified name, as best the resolver knows it."""
    return socket.getfqdn() or socket.gethostname() or "localhost"


def ensure_instance(home: str, me: str) -> bool:
    """Create a single-user instance unless one exists; return True if it was created."""
    if os.path.exists(os.path.join(home, "control", "me")):
        return False
    try:
        hier.install(home, me.encode(), False)
    except OSError as e:
        raise Exit(111, f"unable to create {e.filename or home}: {e.strerror}")
    return True


def login_name() -> str:
    """A user name for the first virtual user: the invoking login, made safe."""
    name = re.sub(r"[^a-z0-9._]", "", getpass.getuser().lower()) or "user"
    return name[:32]


@click.group(context_settings=options.CONTEXT)
def cli() -> None:
    """Create, run and inspect qpy mail instances."""


@cli.command()
@home_option
@click.option("--me", default=None, help="This host's FQDN (default: the system's).")
@click.option("--mode", type=click.Choice(["auto", "privileged", "single-user"]), default="auto",
              show_default=True, help="auto = privileged when root and the qmail accounts exist.")
def init(home: str, me: str | None, mode: str) -> None:
    """Create (or repair) an instance directory."""
    home = os.path.abspath(home)
    can = os.geteuid() == 0 and prot.accounts_exist()
    if mode == "privileged" and not can:
        raise Exit(100, "privileged mode needs root and the qmail accounts (qpy install)")
    priv = can and mode != "single-user"
    try:
        hier.install(home, (me or default_me()).encode(), priv)
    except OSError as e:
        raise Exit(111, f"unable to create {e.filename or home}: {e.strerror}")
    mode = "privileged" if priv else "single-user"
    click.echo(f"qpy: instance ready at {home} ({mode} mode)")


@cli.command()
@home_option
@click.option("--me", default="localhost", show_default=True, help="Host name for a new instance.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (:: for IPv6).")
@click.option("--port", default=2525, show_default=True, type=click.IntRange(0, 65535))
@click.option("--user", "user", default=None, help="First virtual user of a new instance.")
@click.option("--log-size", default=runner.LOG_SIZE, show_default=True,
              type=click.IntRange(1000, None), help="Bytes in log/current before it is rotated.")
@click.option("--log-files", default=runner.LOG_FILES, show_default=True,
              type=click.IntRange(1, 10000), help="Rotated log files (@<tai64n>.s) kept.")
def run(home: str, me: str, host: str, port: int, user: str | None, log_size: int,
        log_files: int) -> int:
    """Run an MTA in the foreground: SMTP listener, queue service and delivery daemons."""
    home = os.path.abspath(home)
    try:
        mode = runner.decide(home)
        if mode.owner is not None:      # root on an ordinary user's instance: become that user
            prot.drop_to(mode.owner.uid, mode.owner.gid, [mode.owner.gid])
    except QmailError as e:
        raise Exit(100 if e.exit_code == 100 else 111, e.text)
    if ensure_instance(home, me):
        click.echo(f"qpy: created instance {home} (single-user mode)")
    if not mode.priv and not instance.list_users(home):
        name = user or login_name()
        path = _add_user(home, name)
        click.echo(f"qpy: mail for {name}@{me} is delivered to {path}/Maildir/")
        made = instance.alias_to(home, name.lower().encode() + b"@" + me.encode())
        if made:
            click.echo(f"qpy: {', '.join(made)} forward to {name}@{me}")
    click.echo(f"qpy: {mode.line}")
    os.environ["QMAILHOME"] = home
    me_now = control.read_line("me") or me.encode()
    return runner.Runner(home, host, port, me_now.decode(), mode=mode, log_size=log_size,
                         log_files=log_files).run()


def _add_user(home: str, name: str) -> str:
    try:
        return instance.add_user(home, name.encode())
    except QmailError as e:
        raise Exit(100 if e.exit_code == 100 else 111, e.text)
    except OSError as e:
        raise Exit(111, f"unable to add user {name}: {e.strerror}")


@cli.group()
def user() -> None:
    """Manage virtual users (users/assign → users/cdb)."""


@user.command("add")
@click.argument("name")
@home_option
def user_add(name: str, home: str) -> None:
    """Add a virtual user with a Maildir under the instance."""
    home = os.path.abspath(home)
    if not os.path.isdir(os.path.join(home, "users")):
        raise Exit(111, f"{home} is not an instance (run qpy init first)")
    path = _add_user(home, name)
    click.echo(f"qpy: user {name.lower()} added; mail goes to {path}/Maildir/")


@user.command("list")
@home_option
def user_list(home: str) -> None:
    """List the virtual users."""
    for name in instance.list_users(os.path.abspath(home)):
        click.echo(name.decode())


@cli.command()
@home_option
def status(home: str) -> None:
    """Show whether the instance runs, its queue, and recent deliveries."""
    home = os.path.abspath(home)
    try:
        st = instance.status(home)
    except QmailError as e:
        raise Exit(111, e.text)
    click.echo(f"instance: {home}")
    click.echo(f"qmail-send: {'running' if st.running else 'not running'}")
    click.echo(f"messages in queue: {st.queued}")
    click.echo(f"messages in queue but not yet preprocessed: {st.unprocessed}")
    if st.quarantined:
        click.echo(f"messages in quarantine (corrupt queue files): {st.quarantined}")
    if st.recent:
        click.echo("recent deliveries:")
        for line in st.recent:
            click.echo(f"  {line}")


@cli.group()
def dkim() -> None:
    """DKIM keys: control/domainkeys/DOMAIN/SELECTOR and control/dkimdomains."""


def _instance(home: str) -> None:
    home = os.path.abspath(home)
    if not os.path.isdir(os.path.join(home, "control")):
        raise Exit(111, f"{home} is not an instance (run qpy init first)")
    os.environ["QMAILHOME"] = home


def _domain(domain: str) -> bytes:
    name = domain.lower().rstrip(".").encode("idna")
    if not dkimkeys.valid_name(name):
        raise Exit(100, f"not a domain name: {domain}")
    return name


@dkim.command("keygen")
@click.argument("domain")
@click.option("--selector", default=None, help="Selector name [default: YYYYMM, or YYYYMMe for ed25519].")
@click.option("--type", "kind", type=click.Choice(["rsa", "ed25519"]), default="rsa", show_default=True)
@click.option("--bits", default=dkimkeys.RSA_BITS, show_default=True, type=click.IntRange(1024, 8192))
@home_option
def dkim_keygen(domain: str, selector: str | None, kind: str, bits: int, home: str) -> None:
    """Create a signing key for DOMAIN and print the TXT record to publish."""
    import time
    _instance(home)
    name = _domain(domain)
    algorithm = dkimkeys.ED25519 if kind == "ed25519" else dkimkeys.RSA
    sel = (selector or time.strftime("%Y%m") + ("e" if kind == "ed25519" else "")).lower().encode()
    if not dkimkeys.valid_name(sel):
        raise Exit(100, f"not a selector name: {sel.decode()}")
    pem = dkimkeys.generate(algorithm, bits)
    key = dkimkeys.from_pem(name, sel, pem)
    try:
        path = dkimkeys.store(key, pem)
        active = dkimkeys.selectors().get(name, [])
        kinds = {dkimkeys.load(name, s).algorithm for s in active}
        if algorithm not in kinds:
            dkimkeys.use(name, active + [sel])
    except FileExistsError:
        raise Exit(111, f"selector {sel.decode()} of {name.decode()} exists already")
    except (OSError, QmailError) as e:
        raise Exit(111, str(e))
    click.echo(f"qpy: key {path}")
    if algorithm in kinds:
        click.echo(f"qpy: not signing with it yet: publish the record, then "
                   f"qpy dkim use {name.decode()} {sel.decode()}")
    click.echo(key.zone_line())


@dkim.command("show")
@click.argument("domain")
@click.option("--selector", default=None, help="One selector [default: every key of DOMAIN].")
@home_option
def dkim_show(domain: str, selector: str | None, home: str) -> None:
    """Print the TXT records of DOMAIN's keys (marked: which sign)."""
    _instance(home)
    name = _domain(domain)
    active = dkimkeys.selectors().get(name, [])
    sels = [selector.lower().encode()] if selector else dkimkeys.on_disk(name)
    if not sels:
        raise Exit(111, f"no DKIM key for {name.decode()}")
    for sel in sels:
        try:
            line = open(dkimkeys.key_path(name, sel) + ".pub").read().rstrip("\n")
        except OSError:
            try:
                line = dkimkeys.load(name, sel).zone_line()
            except QmailError as e:
                raise Exit(111, str(e))
        click.echo(f"; {'signing' if sel in active else 'not signing'}\n{line}")


@dkim.command("use")
@click.argument("domain")
@click.argument("selectors", nargs=-1, required=True)
@home_option
def dkim_use(domain: str, selectors: tuple[str, ...], home: str) -> None:
    """Sign mail from DOMAIN with these selectors from now on."""
    _instance(home)
    name = _domain(domain)
    sels = [s.lower().encode() for s in selectors]
    try:
        for sel in sels:
            dkimkeys.load(name, sel)
        dkimkeys.use(name, sels)
    except (OSError, QmailError) as e:
        raise Exit(111, str(e))
    click.echo(f"qpy: {name.decode()} signs with {' '.join(selectors)}")


@cli.command("doctor")
@click.argument("domain", required=False)
@click.option("--ip", default=None, metavar="ADDRESS",
              help="The address mail leaves from [default: the kernel's route to the Internet].")
@click.option("--timeout", default=10.0, show_default=True, type=click.FloatRange(0.1, 300),
              help="Seconds one DNS lookup may take.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of lines.")
@home_option
def doctor_command(domain: str | None, ip: str | None, timeout: float, as_json: bool,
                   home: str) -> int:
    """Check DNS, DKIM keys and the certificate before sending mail for DOMAIN."""
    import ipaddress
    import json

    from qpy import doctor      # cryptography and pyspf only when asked for
    _instance(home)
    if ip is not None:
        try:
            ip = str(ipaddress.ip_address(ip))
        except ValueError:
            raise Exit(100, f"not an IP address: {ip}")
    try:
        domains = [_domain(domain).decode()] if domain else doctor.default_domains()
        if not domains:
            raise Exit(111, "no control/me and no control/dkimdomains: name the DOMAIN")
        checks = doctor.run(domains, ip, timeout)
    except QmailError as e:
        raise Exit(111, e.text)
    if as_json:
        click.echo(json.dumps(doctor.as_dict(checks), indent=1))
    else:
        click.echo(doctor.report(checks), nl=False)
    return doctor.exit_code(checks)


@cli.command()
@click.option("--home", default="/var/qmail", show_default=True, type=click.Path(file_okay=False))
@click.option("--me", default=None, help="This host's FQDN (default: the system's).")
@click.option("--defaultdelivery", default="./Maildir/", show_default=True,
              help="Delivery instruction for users without .qmail (./Mailbox, /var/spool/mail/...).")
@click.option("--smtp-host", default="0", show_default=True, help="tcpserver host (0 = all, :: = IPv6).")
@click.option("--smtp-port", default=25, show_default=True, type=click.IntRange(0, 65535))
@click.option("--service-dir", default=None, help="Where to write service directories [HOME/supervise].")
@click.option("--link", "scan_dir", default=None, help="Also link the services into this scan directory.")
@click.option("--postmaster", default=None, metavar="ADDRESS",
              help="Forward postmaster, mailer-daemon and root here [default: HOME/alias/Maildir/].")
def install(home: str, me: str | None, defaultdelivery: str, smtp_host: str, smtp_port: int,
            service_dir: str | None, scan_dir: str | None, postmaster: str | None) -> None:
    """Privileged mode: accounts, the instance with qmail's owners, service directories."""
    from qpy import accounts, services
    if os.geteuid() != 0:
        raise Exit(100, "qpy install must run as root (use qpy run for single-user mode)")
    home = os.path.abspath(home)
    try:
        made = accounts.ensure(home)
        hier.install(home, (me or default_me()).encode(), True)
        os.environ["QMAILHOME"] = home
        name = (control.read_line("me") or b"localhost").decode()
        scripts = services.run_scripts(home, name, defaultdelivery, smtp_host, smtp_port,
                                       set(hier.PROGRAMS))
        paths = services.write(service_dir or os.path.join(home, "supervise"), scripts)
        if scan_dir:
            services.link(paths, scan_dir)
        roles = _postmaster(home, postmaster)
    except QmailError as e:
        raise Exit(111, e.text)
    except OSError as e:
        raise Exit(111, f"unable to install into {e.filename or home}: {e.strerror}")
    if made:
        click.echo(f"qpy: created accounts: {' '.join(made)}")
    if roles:
        where = postmaster or f"{home}/alias/Maildir/"
        click.echo(f"qpy: mail to {', '.join(roles)} goes to {where}")
    click.echo(f"qpy: privileged instance at {home}; services: {' '.join(paths)}")


def _postmaster(home: str, address: str | None) -> list[str]:
    """qmail's INSTALL.alias: postmaster, mailer-daemon and root get ~alias/.qmail-* files —
    forwarding to ``address``, or delivering to the alias account's own Maildir (which the
    admin reads as root).  Existing files are kept; returns the roles set up."""
    if address:
        return instance.alias_to(home, address.encode())
    maildir = os.path.join(home, "alias", "Maildir")
    instance.maildirmake(maildir)
    alias = prot.lookup_user(auto.ALIAS)
    if alias is not None:
        for sub in ("", "tmp", "new", "cur"):
            os.chown(os.path.join(maildir, sub), alias.uid, alias.gid)
    return instance.alias_roles(home, b"./Maildir/")


def main(argv: list[str] | None = None) -> int:
    """Dispatch a qpy subcommand."""
    return options.run(cli, "qpy", argv)
