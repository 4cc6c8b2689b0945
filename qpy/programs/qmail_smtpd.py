"""qmail-smtpd - receive mail by SMTP.

SYNOPSIS  qmail-smtpd
RUNS AS   qmaild/nofiles, started per connection by tcpserver (Debian's ucspi-tcp execs
          bin/qmail-smtpd; qpy's tcpserver runs it warm).  fd 0 = client → server,
          fd 1 = server → client, fd 2 = log.  Started as root on a privileged
          instance it becomes qmaild/nofiles itself before it reads from the network.
READS     control/smtpgreeting (else me; neither → 421), localiphost (else me),
          timeoutsmtpd, rcpthosts, morercpthosts.cdb, badmailfrom, databytes,
          servercert.pem, rcptcheck, checkpassword, srs_domain, srs_secrets (qmaild's,
          read at the first SRS recipient), srs_maxage, and the limits of qpy.smtplimits
          (maxrcpt, maxerrors, maxjunk, timeoutsmtpdsession, mindatarate,
          maxauthfail, authfaildelay), and of qpy.clientcheck (helocheck,
          senderdomaincheck, spfbehavior, spfexp, dnsbudget, timeoutdns; me and
          locals for helocheck), and of qpy.inbound (authservid, dmarcenforce).
          Environment: TCPREMOTEIP, TCPREMOTEHOST,
          TCPREMOTEINFO, TCPLOCALHOST, TCPLOCALIP, RELAYCLIENT, DATABYTES, MAXRCPT,
          QPYSTRESS, QMAILQUEUE, CHECKPASSWORD, SPFBEHAVIOR.
WRITES    replies on fd 1; each accepted message through qmail-queue (a warm child,
          or $QMAILQUEUE: warm if one of ours, else exec'd).  fd 2: one line when
          controls are unreadable, TLS fails, or on an internal error (never a traceback);
          ``auth ok|failed|deferred <ip> user <user> mechanism <name>`` for each AUTH
          attempt (escaped; never the password); ``closed <ip>: <text>`` when a limit
          ends the session with 421.
TRUSTS    nothing the client sends.  Addresses with control bytes are refused, HELO
          and tcpserver's names are escaped in the Received line (the HELO cut at 255
          bytes), command lines are capped at 4096 bytes, what one client may cost is
          limited (qpy.smtplimits), and a 250 after DATA means qmail-queue exited 0.
DIALOGUE  docs/smtpd.md, byte for byte for a HELO client.  Beyond qmail:
          - EHLO advertises PIPELINING, 8BITMIME, SIZE <databytes> (if set),
            ENHANCEDSTATUSCODES, SMTPUTF8, STARTTLS (fd 0 a socket and
            control/servercert.pem present: certificate chain and key in one PEM,
            which qpy init makes qmaild's, mode 0400) and AUTH LOGIN PLAIN (a checkpassword program is
            configured, and the session is under TLS or from a loopback address).
          - Enhanced status codes: after EHLO every 2xx/4xx/5xx reply carries one
            (``250 2.1.5 ok``, ``553 5.7.1 sorry, …``), taken from the ``(#x.y.z)``
            qmail puts in its texts, else 2.1.0 for MAIL, 2.1.5 for RCPT, x.0.0
            otherwise.  After HELO, and before any HELO/EHLO, replies are qmail's,
            unchanged.  The greeting, EHLO lines, 354 and 334 never carry one.
          - MAIL … SIZE=n with n > databytes → 552 at once; SMTPUTF8 and BODY= are
            accepted; other parameters are ignored as qmail does.
          - ``box@[IPv6:…]`` literals naming this host become box@<localiphost>,
            like IPv4 ones.
          - An address holding a byte below 32 or DEL → 555 (qmail would cut it at
            a NUL; a CR could end a Return-Path line in a later hop).
          - A command line over 4096 bytes (RFC 5321's 512, raised for its extensions)
            → ``500 sorry, line too long (#5.5.2)``; the rest of it is thrown away.
          - Limits (qpy.smtplimits; each a control file, 0 = none): a RCPT past
            maxrcpt → ``452 4.5.3``; the maxerrors-th 4xx/5xx reply (junk commands
            past maxjunk count) → ``421 4.7.0 too many errors``; past
            timeoutsmtpdsession, or slower than mindatarate in DATA → ``421 4.4.2``;
            the n-th failed AUTH waits n × authfaildelay, the maxauthfail-th → 421
            4.7.0.  QPYSTRESS=1 (tcpserver's slots nearly full): short timeouts.
          - A bare CR in the message data → ``554 sorry, bare CR in message data is
            not allowed (#5.6.0)`` after the end of the data; nothing is queued
            (why: qpy/smtpio.py).  Bare LF is qmail's 451-and-drop.
          - STARTTLS resets the session (EHLO again); plaintext pipelined after it
            is thrown away.  The Received line says ``with ESMTPS (<TLS version>
            <cipher>)`` under TLS, ``ESMTPA``/``ESMTPSA`` after AUTH, ``UTF8SMTP…`` for
            SMTPUTF8 mail, else qmail's ``with SMTP``.  QUIT under TLS ends with the TLS
            close (close_notify), the client's awaited at most 5 seconds.
          - control/rcptcheck containing 1: RCPT of an unknown local recipient →
            ``550 sorry, no mailbox here by that name (#5.1.1)`` (qpy.rcptcheck).
          - SRS (qpy.srs; control/srs_domain, srs_secrets, srs_maxage): RCPT of an
            SRS0/SRS1 address at srs_domain whose hash or timestamp does not verify →
            ``550 forged SRS address (#5.7.1)``, ``550 expired SRS address (#5.7.1)``,
            ``550 malformed SRS address (#5.1.1)``; a valid one is accepted without
            rcpthosts or rcptcheck (the queue writer turns it back).
          - HELO, sender-domain and SPF checks of clients neither RELAYCLIENT nor
            authenticated (qpy.clientcheck, qpy.spfcheck; replies in docs/smtpd.md):
            refused at MAIL, SPF's 550 at RCPT; Received-SPF above the Received line.
          - Their messages are held until the end of the data, then checked (qpy.inbound:
            DKIM, DMARC, ARC) and queued below one Authentication-Results field; such
            fields that arrive with our authserv-id are removed.  control/dmarcenforce
            1: DMARC p=reject → ``550 … (#5.7.1)`` after the data, nothing queued;
            p=quarantine → an X-Qpy-Quarantine field.  DNS trouble: temperror, never 5xx.
          - AUTH PLAIN / AUTH LOGIN: the checkpassword program (env CHECKPASSWORD,
            else control/checkpassword: the program and its arguments, e.g.
            ``/usr/bin/checkpassword /bin/true``) reads ``user\\0password\\0\\0`` on
            fd 3; exit 0 = authenticated, which then acts like RELAYCLIENT="";
            111 → 454.  It runs as qmaild, so it must not need root.
EXIT      0 after QUIT; 1 on EOF, timeout, a limit's 421, bare LF, control trouble or any
          fatal error.
"""
from __future__ import annotations

import os
import signal
import stat
import sys
import time

from qpy import auto, clientcheck, control, inbound, qmailq, received, sasl, scan, smtpio, \
    spfcheck, srs, submit
from qpy.errors import Exit, QmailError
from qpy.rcpthosts import RcptHosts
from qpy.smtpio import Dropped, LineTooLong, StrayNewline, Timeout
from qpy.smtplimits import HELO_MAX, TIMEOUTS, TOO_MANY_AUTH, TOO_MANY_ERRORS, TOO_MANY_RCPTS, Limits

MAX_ADDR = 900          # longest address accepted (bytes)
MAXHOPS = 100
SMTPLF = b"451 See https://cr.yp.to/docs/smtplf.html."
SERVERCERT = "servercert.pem"
CONTROLS = b"421 unable to read controls (#4.3.0)"


class Config:
    """Control files and tcpserver's environment, read once per connection."""

    def __init__(self, env: os._Environ | dict) -> None:
        greeting = control.read_line_me("smtpgreeting")
        if greeting is None:
            raise Exit(1, CONTROLS)
        self.greeting: bytes = greeting
        self.localiphost = control.read_line_me("localiphost")
        self.limits = Limits(env)
        self.rcpthosts = RcptHosts()
        bmf = control.read_list("badmailfrom")
        self.badmailfrom = None if bmf is None else frozenset(b.lower() for b in bmf)
        self.databytes = control.read_int("databytes")
        if env.get("DATABYTES") is not None:
            self.databytes = scan.ulong(env["DATABYTES"])
        self.servercert = control.control_path(SERVERCERT)
        self.rcptcheck = control.read_int("rcptcheck") == 1
        cpw = env.get("CHECKPASSWORD")
        line = os.fsencode(cpw) if cpw is not None else control.read_line("checkpassword")
        self.checkpassword = [os.fsdecode(w) for w in (line or b"").split()]

        def var(name: str) -> bytes | None:
            value = env.get(name)
            return None if value is None else os.fsencode(value)
        self.remoteip = var("TCPREMOTEIP") or b"unknown"
        self.remotehost = var("TCPREMOTEHOST") or b"unknown"
        self.remoteinfo = var("TCPREMOTEINFO")
        self.localip = var("TCPLOCALIP")
        self.localhost = var("TCPLOCALHOST") or self.localip or b"unknown"
        self.relayclient = var("RELAYCLIENT")
        self._own_ips: set[bytes] | None = None
        self.checks = clientcheck.Checks(env, self.greeting, self.rcpthosts, self.own_ip)

    def rcpthost_ok(self, address: bytes) -> bool:
        """qmail's rcpthosts(): no @, no rcpthosts file, or the domain is listed."""
        try:
            return self.rcpthosts.accepts(address)
        except QmailError:
            raise Exit(1, CONTROLS)

    def srs_verdict(self, address: bytes) -> str | None:
        """qpy.srs on a recipient: None (not an SRS address at srs_domain), VALID or why not."""
        try:
            return srs.classify(address)    # reads the controls at the first SRS address only
        except QmailError:
            raise Exit(1, CONTROLS)

    def in_badmailfrom(self, address: bytes) -> bool:
        """qmail's bmfcheck(): the address, or @domain of its last @, is listed."""
        if self.badmailfrom is None:
            return False
        lower = address.lower()
        at = lower.rfind(b"@")
        return lower in self.badmailfrom or (at >= 0 and lower[at:] in self.badmailfrom)

    def own_ip(self, literal: bytes) -> bool:
        """True if ``a.b.c.d`` or ``IPv6:…`` is one of this host's addresses."""
        import socket
        try:
            if literal[:5].lower() == b"ipv6:":
                packed = socket.inet_pton(socket.AF_INET6, literal[5:].decode("ascii"))
                if packed[:12] == b"\0" * 10 + b"\xff\xff":
                    packed = packed[12:]
            else:
                packed = socket.inet_pton(socket.AF_INET, literal.decode("ascii"))
        except (OSError, UnicodeDecodeError, ValueError):
            return False
        if self._own_ips is None:
            from qpy import mx
            try:
                texts = mx.own_ips()
            except QmailError:
                raise Exit(1, b"421 unable to figure out my IP addresses (#4.3.0)")
            if self.localip is not None:
                texts.add(os.fsdecode(self.localip))
            self._own_ips = set()
            for text in texts:
                try:
                    family = socket.AF_INET6 if ":" in text else socket.AF_INET
                    self._own_ips.add(socket.inet_pton(family, text))
                except OSError:
                    pass
        return packed in self._own_ips


_CONTROL = bytes(range(32)) + b"\x7f"


def parse_address(arg: bytes) -> tuple[bytes, bytes] | None:
    """qmail's addrparse(): (address, text after its terminator); None if too long or unsafe."""
    lt = arg.find(b"<")
    if lt >= 0:
        arg, terminator = arg[lt + 1:], 0x3E
    else:   # RFC 821 violators: MAIL FROM: addr
        colon = arg.find(b":")
        arg, terminator = (arg[colon + 1:] if colon >= 0 else b"").lstrip(b" "), 0x20
    if arg[:1] == b"@":     # source route @a,@b:
        colon = arg.find(b":")
        arg = arg[colon + 1:] if colon >= 0 else b""
    if b"\\" not in arg and b'"' not in arg:     # the usual case: nothing quoted
        end = arg.find(terminator.to_bytes(1, "big"))
        plain, rest = (arg, b"") if end < 0 else (arg[:end], arg[end + 1:])
        if len(plain) > MAX_ADDR + 64 or len(plain.translate(None, _CONTROL)) != len(plain):
            return None
        return plain, rest
    out = bytearray()
    escaped = quoted = False
    rest = b""
    for i, ch in enumerate(arg):
        if escaped:
            out.append(ch)
            escaped = False
        elif ch == terminator and not quoted:
            rest = arg[i + 1:]
            break
        elif ch == 0x5C:
            escaped = True
        elif ch == 0x22:
            quoted = not quoted
        else:
            out.append(ch)
        if len(out) > MAX_ADDR + 64:    # already hopeless: stop copying a megabyte
            return None
    if any(ch < 32 or ch == 127 for ch in out):
        return None
    return bytes(out), rest


def parse_params(rest: bytes) -> dict[bytes, bytes]:
    """ESMTP parameters after the address: ``KEY=value`` or ``KEY``, keys uppercased."""
    params = {}
    for word in rest.split(b" "):
        if word:
            key, _, value = word.partition(b"=")
            params[key.upper()] = value
    return params


class Session:
    """One SMTP dialogue."""

    def __init__(self, conn: smtpio.Connection, cfg: Config) -> None:
        self.conn, self.cfg = conn, cfg
        self.socket = _is_socket(conn.rfd)
        self.tls = False
        self.reset_session()
        self._checker = None

    def reset_session(self) -> None:
        """The state before any HELO (at start and after STARTTLS)."""
        self.helo: bytes | None = None
        self.esmtp = False           # replies carry enhanced status codes
        self.sender: bytes | None = None
        self.rcpts: list[bytes] = []
        self.spf: spfcheck.Verdict | None = None
        self.dns = None              # the transaction's qpy.dnsbudget.Budget, made at MAIL
        self.barf = False
        self.utf8 = False
        self.authed: bytes | None = None

    # -- output ------------------------------------------------------------------

    def reply(self, line: bytes, code: bytes = b"", error: bool = True) -> None:
        """Queue one reply line, with an enhanced status code after EHLO; count 4xx/5xx."""
        if error and line[:1] in b"45":
            self.cfg.limits.errors += 1
        if self.esmtp and line[:1] in b"245" and line[3:4] == b" ":
            line = line[:4] + (code or _status_code(line)) + b" " + line[4:]
        self.conn.put(line + b"\r\n")

    # -- verbs ---------------------------------------------------------------------

    def smtp_helo(self, arg: bytes) -> None:
        self.conn.put(b"250 " + self.cfg.greeting + b"\r\n")
        self.sender = None
        self.helo = arg[:HELO_MAX]
        self.esmtp = False

    def smtp_ehlo(self, arg: bytes) -> None:
        lines = [self.cfg.greeting, b"PIPELINING", b"8BITMIME"]
        if self.cfg.databytes:
            lines.append(b"SIZE %d" % self.cfg.databytes)
        lines += [b"ENHANCEDSTATUSCODES", b"SMTPUTF8"]
        if self.tls_offered():
            lines.append(b"STARTTLS")
        if self.auth_offered():
            lines.append(b"AUTH LOGIN PLAIN")
        for line in lines[:-1]:
            self.conn.put(b"250-" + line + b"\r\n")
        self.conn.put(b"250 " + lines[-1] + b"\r\n")
        self.sender = None
        self.helo = arg[:HELO_MAX]
        self.esmtp = True

    def smtp_rset(self, arg: bytes) -> None:
        self.sender = None
        self.reply(b"250 flushed")

    def smtp_noop(self, arg: bytes) -> None:
        self.reply(b"250 ok")

    def smtp_vrfy(self, arg: bytes) -> None:
        self.reply(b"252 send some mail, i'll try my best")

    def smtp_help(self, arg: bytes) -> None:
        self.reply(b"214 notqmail home page: https://notqmail.org")

    def smtp_quit(self, arg: bytes) -> None:
        self.reply(b"221 " + self.cfg.greeting)
        self.conn.end_tls()     # close_notify, briefly awaited (Exim logs a ragged close)
        raise Exit(0)

    def smtp_unimpl(self, arg: bytes) -> None:
        self.reply(b"502 unimplemented (#5.5.1)")

    def smtp_mail(self, arg: bytes) -> None:
        parsed = self.address(arg)
        if parsed is None:
            self.reply(b"555 syntax error (#5.5.4)")
            return
        address, rest = parsed
        params = parse_params(rest)
        size = params.get(b"SIZE", b"")
        if self.cfg.databytes and size.isdigit() and int(size) > self.cfg.databytes:
            self.reply(b"552 sorry, that message size exceeds my databytes limit (#5.3.4)")
            return
        self.dns = self.cfg.checks.budget()     # this transaction's DNS, DATA's checks too
        # HELO, sender domain, SPF (qpy.clientcheck); self.spf: a qpy.spfcheck.Verdict or None
        refusal, self.spf = self.cfg.checks.mail(address, self.helo, self.relay(), self.dns)
        if refusal is not None:
            self.sender = None
            self.reply(refusal)
            return
        self.barf = self.cfg.in_badmailfrom(address)
        self.sender = address
        self.rcpts = []
        self.utf8 = b"SMTPUTF8" in params
        self.reply(b"250 ok", b"2.1.0")

    def smtp_rcpt(self, arg: bytes) -> None:
        if self.sender is None:
            self.reply(b"503 MAIL first (#5.5.1)")
            return
        if self.cfg.limits.rcpt_full(len(self.rcpts)):     # nothing more is stored
            self.reply(TOO_MANY_RCPTS, error=not self.cfg.limits.quiet_overshoot())
            return
        parsed = self.address(arg)
        if parsed is None:
            self.reply(b"555 syntax error (#5.5.4)")
            return
        if self.barf:
            self.reply(b"553 sorry, your envelope sender is in my badmailfrom list (#5.7.1)")
            return
        refusal = self.cfg.checks.rcpt(self.spf)      # SPF's 550, here as in the SPF patch
        if refusal is not None:
            self.reply(refusal)
            return
        address = parsed[0]
        relay = self.relay()
        verdict = self.cfg.srs_verdict(address)        # None: not an SRS address of ours
        if verdict not in (None, srs.VALID):
            self.reply(b"550 " + srs.refusal(verdict))
            return
        if verdict is None and relay is None and not self.cfg.rcpthost_ok(address):
            self.reply(b"553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)")
            return
        if verdict is None and self.cfg.rcptcheck and not self.recipient_known(address):
            self.reply(b"550 sorry, no mailbox here by that name (#5.1.1)")
            return
        self.rcpts.append(address + (relay or b""))
        self.reply(b"250 ok", b"2.1.5")

    def smtp_data(self, arg: bytes) -> None:
        if self.sender is None:
            self.reply(b"503 MAIL first (#5.5.1)")
            return
        if not self.rcpts:
            self.reply(b"503 RCPT first (#5.5.1)")
            return
        sender, self.sender = self.sender, None
        ours = self.relay() is not None     # RELAYCLIENT, AUTH: streamed, signed (qpy.submit)
        try:
            job = qmailq.start(submit.SIGN if ours else None)
        except OSError:
            self.reply(b"451 qqt failure (#4.3.0)")
            return
        done, held = False, []      # mail from outside is held, then checked (qpy.inbound)
        try:
            self.reply(b"354 go ahead")
            # Received-SPF above our Received line (RFC 7208 §9.1)
            head = b"" if self.spf is None else self.spf.received_spf(self.cfg.checks.receiver)
            head += received.smtp_line(self.cfg.remotehost, self.helo, self.cfg.remoteinfo,
                                       self.cfg.remoteip, self.cfg.localhost, self.protocol(),
                                       tls=self.conn.tls_description())
            if ours:
                job.put(head)
            try:
                seen = smtpio.read_data(self.conn, job.put if ours else held.append,
                                        self.cfg.databytes, rate=self.cfg.limits.datarate)
            except StrayNewline:
                self.reply(SMTPLF, b"4.6.0")
                raise Exit(1)
            refusal = seen.refusal(MAXHOPS)     # looping, bare CR, over databytes
            if refusal is None and not ours:    # DKIM, DMARC, ARC: Authentication-Results
                checked = inbound.check(b"".join(held), self.spf, self.dns)
                refusal = checked.refusal       # DMARC p=reject under dmarcenforce 1
            if refusal is not None:
                job.fail()
            elif not ours:
                job.put(checked.fields + head + checked.message)
            qqx = job.close(sender, self.rcpts)
            done = True
        finally:
            if not done:            # dropped, timed out or bare LF: queue nothing
                job.fail()
                job.close(sender, self.rcpts)
        if not qqx:
            self.reply(b"250 ok %d qp %d" % (int(time.time()), job.pid))
            self.cfg.limits.delivered()
        elif refusal is not None:
            self.reply(refusal)
        else:
            self.reply((b"554 " if qqx[:1] == "D" else b"451 ") + qqx[1:].encode())

    def smtp_starttls(self, arg: bytes) -> None:
        if not self.tls_offered():
            self.smtp_unimpl(arg)
            return
        try:
            import ssl
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.cfg.servercert)
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
            _log(f"unable to load {SERVERCERT}: {e}")
            self.reply(b"454 TLS not available due to temporary reason (#4.3.0)")
            return
        self.reply(b"220 ready for tls")
        try:
            self.conn.start_tls(context)
        except Dropped as e:
            _log(str(e))
            raise
        self.tls = True
        self.reset_session()

    def smtp_auth(self, arg: bytes) -> None:
        if not self.auth_offered():
            if self.cfg.checkpassword:
                self.reply(b"538 encryption required for requested authentication mechanism"
                           b" (#5.7.11)")
            else:
                self.smtp_unimpl(arg)
            return
        if self.authed is not None:
            self.reply(b"503 you're already authenticated (#5.5.1)")
            return
        if self.sender is not None:
            self.reply(b"503 no auth during mail transaction (#5.5.1)")
            return
        mechanism, _, initial = arg.partition(b" ")
        mechanism = mechanism.upper()
        try:
            found = sasl.credentials(self.conn, mechanism, initial.strip(b" "))
        except sasl.Cancelled:
            self.reply(b"501 auth exchange cancelled (#5.0.0)")
            return
        except ValueError:
            self.reply(b"501 malformed auth input (#5.5.2)")
            return
        if found is None:
            self.reply(b"504 auth type unimplemented (#5.5.4)")
            return
        user, password = found
        from qpy import checkpassword
        code = 1
        if sasl.acceptable(user, password):
            code = checkpassword.check(self.cfg.checkpassword, user, password)
        outcome = {0: "ok", checkpassword.TEMPORARY: "deferred"}.get(code, "failed")
        _log(sasl.log_line(outcome, self.cfg.remoteip, user, mechanism))
        if code == 0:
            self.authed = user
            self.reply(b"235 ok, go ahead (#2.7.0)")
        elif code == checkpassword.TEMPORARY:
            self.reply(b"454 temporary authentication failure (#4.7.0)")
        else:
            last = self.cfg.limits.auth_failed()        # waits longer after each failure
            self.reply(b"535 authorization failed (#5.7.8)")
            if last:
                raise Exit(1, TOO_MANY_AUTH)

    # -- helpers -----------------------------------------------------------------

    def tls_offered(self) -> bool:
        """STARTTLS is possible: a socket, not yet TLS, and a certificate installed."""
        return self.socket and not self.tls and os.path.exists(self.cfg.servercert)

    def auth_offered(self) -> bool:
        """AUTH is advertised: a checkpassword program, and TLS or a loopback client."""
        return bool(self.cfg.checkpassword) and (self.tls or _loopback(self.cfg.remoteip))

    def relay(self) -> bytes | None:
        """RELAYCLIENT's value, or b"" after a successful AUTH; None: check rcpthosts."""
        if self.cfg.relayclient is not None:
            return self.cfg.relayclient
        return b"" if self.authed is not None else None

    def protocol(self) -> bytes:
        """The ``with`` word of the Received line (RFC 3848 / RFC 6531)."""
        suffix = (b"S" if self.tls else b"") + (b"A" if self.authed is not None else b"")
        if self.utf8:
            return b"UTF8SMTP" + suffix
        return b"ESMTP" + suffix if suffix else b"SMTP"

    def address(self, arg: bytes) -> tuple[bytes, bytes] | None:
        """Parse a MAIL/RCPT argument; map own-IP literals to localiphost; None = 555."""
        parsed = parse_address(arg)
        if parsed is None:
            return None
        address, rest = parsed
        at = address.rfind(b"@")
        if (self.cfg.localiphost is not None and at >= 0 and address[at + 1:at + 2] == b"["
                and address.endswith(b"]") and self.cfg.own_ip(address[at + 2:-1])):
            address = address[:at + 1] + self.cfg.localiphost
        if len(address) > MAX_ADDR:
            return None
        return address, rest

    def recipient_known(self, address: bytes) -> bool:
        """control/rcptcheck: False only for a local address certain to have no mailbox."""
        if self._checker is None:
            from qpy import rcptcheck     # only when control/rcptcheck switches it on
            self._checker = rcptcheck.RecipientCheck.from_control()
        return self._checker.check(address)

    # -- the loop ----------------------------------------------------------------

    def run(self) -> int:
        """Greet, then answer commands until QUIT or the end; return the exit code."""
        try:
            self.conn.put(b"220 " + self.cfg.greeting + b" ESMTP\r\n")
            self.commands()
        except Exit as e:       # QUIT, or a reply that ends the session
            if e.text:
                self.reply(e.data, error=False)
                _closed(self.cfg.remoteip, e.data)
            code = e.code
        except Timeout as e:    # qmail's 451 for one read; 421 past a deadline
            self.reply(TIMEOUTS[e.kind], error=False)
            _closed(self.cfg.remoteip, TIMEOUTS[e.kind])
            code = 1
        except Dropped:
            return 1
        except MemoryError:
            self.reply(b"421 out of memory (#4.3.0)")
            code = 1
        try:
            self.conn.flush()
        except Dropped:
            return 1
        return code

    def commands(self) -> None:
        """Read and dispatch command lines until an exception, or too many errors, end it."""
        limits = self.cfg.limits
        while not limits.exhausted():
            try:
                line = self.conn.line()
            except LineTooLong as e:
                self.reply(b"500 sorry, line too long (#5.5.2)")
                if e.partial:
                    self.conn.skip_line()
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            verb, _, arg = line.partition(b" ")
            verb = verb.lower()
            limits.command(verb)
            name, flush = COMMANDS.get(verb, ("unimpl", True))
            getattr(self, "smtp_" + name)(arg.lstrip(b" "))
            if flush:
                self.conn.flush()
        raise Exit(1, TOO_MANY_ERRORS)


# verb → (handler, flush after it); replies to the others wait for the next read.
COMMANDS: dict[bytes, tuple[str, bool]] = {
    b"rcpt": ("rcpt", False),
    b"mail": ("mail", False),
    b"data": ("data", True),
    b"quit": ("quit", True),
    b"helo": ("helo", True),
    b"ehlo": ("ehlo", True),
    b"rset": ("rset", False),
    b"help": ("help", True),
    b"noop": ("noop", True),
    b"vrfy": ("vrfy", True),
    b"starttls": ("starttls", True),
    b"auth": ("auth", True),
}


def _status_code(line: bytes) -> bytes:
    """The enhanced code of a qmail reply: its ``(#x.y.z)``, else x.0.0 (x = class)."""
    start = line.rfind(b"(#")
    if start >= 0 and line.endswith(b")"):
        code = line[start + 2:-1]
        parts = code.split(b".")
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            return line[:1] + code[1:]
    return line[:1] + b".0.0"


def _is_socket(fd: int) -> bool:
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


def _loopback(ip: bytes) -> bool:
    return ip.startswith(b"127.") or ip == b"::1"


def _log(text: str) -> None:
    """One line on fd 2 (tcpserver's log)."""
    try:
        os.write(2, f"qmail-smtpd: {text}\n".encode(errors="replace"))
    except OSError:
        pass


def _closed(remoteip: bytes, reply: bytes) -> None:
    """Log a session that a limit ended with 421 (for the operator, or fail2ban)."""
    if reply[:4] == b"421 ":
        _log(f"closed {received.safe(remoteip).decode()}: {reply[4:].decode(errors='replace')}")


def _become_qmaild() -> None:
    """Root on a privileged instance: become qmaild/nofiles before reading the network."""
    if os.geteuid() != 0:
        return
    from qpy import prot
    if not prot.privileged():
        return
    acct = prot.account(auto.QMAILD, True)
    gid = prot.lookup_group(auto.GROUP_NOFILES)
    prot.drop_to(acct.uid, acct.gid if gid is None else gid)


def main(argv: list[str] | None = None) -> int:
    """Run one SMTP session on fd 0/fd 1."""
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    conn = smtpio.Connection(0, 1)
    try:
        os.chdir(auto.home())
        _become_qmaild()
        cfg = Config(os.environ)
    except (OSError, QmailError, Exit) as e:
        if not isinstance(e, Exit):
            _log(f"unable to read controls: {e}")
        conn.put(CONTROLS + b"\r\n")
        try:
            conn.flush()
        except Dropped:
            pass
        return 1
    conn.timeout, conn.deadline = cfg.limits.timeout, cfg.limits.deadline
    try:
        return Session(conn, cfg).run()
    except Exception as e:      # a bug: one log line, a 421, never a traceback
        _log(f"fatal: internal error: {e!r}")
        conn.put(b"421 internal error (#4.3.0)\r\n")
        try:
            conn.flush()
        except Dropped:
            pass
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
