"""Control files: every file in QMAILHOME/control/ that qpy knows, each declared once.

One ``ControlFile`` per file: its name, how it is read (its kind), its default,
which programs read it and one line of meaning, plus qmail-showctl's sentence for
it.  qpy.control takes every default from here (``control.read_int("concurrencylocal")``
finds 10 here); qmail-showctl prints its paragraphs from here, in this order;
docs/controlfiles.md is this table as Markdown (``python3 -m qpy.controlfiles``
prints it; a test keeps the committed file equal to the rendering).

A name missing from the table is a programming error (KeyError); a test scans qpy/
for every control file read, so none reaches production.  Reading rules (missing
file → default, any other error → temporary failure, trailing blanks stripped) are
qpy.control's.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

# kind → how qpy.control reads it (one line each, for the docs)
KINDS = {
    "line": "the first line; an empty file is an empty value",
    "int": "the first line's leading decimal digits; none (or no file) → the default",
    "list": "one entry a line; empty lines and lines starting with `#` skipped",
    "map": "a list of `key:value` lines; keys compared case-insensitively, the last duplicate wins",
    "cdb": "a constant database, built by the program named in its meaning",
    "pem": "read only by the TLS library; its presence is what counts",
    "secret": "a list that is never printed: qmail-showctl says only whether it is there",
    "dir": "a directory of files, laid out as its meaning says",
}


@dataclass(frozen=True)
class ControlFile:
    """One control file and everything said about it."""

    name: str
    kind: str                        # a key of KINDS
    default: int | bytes | None      # int: the number; line: the literal; None: no value
    readers: tuple[str, ...]         # the programs that read it
    meaning: str                     # one line, for the docs
    me: bool = False                 # "default me": control/me before ``default``
    required: bool = False           # its reader refuses to run without a value
    show: str | None = None          # qmail-showctl's sentence, ``{}`` = the value
    absent: str | None = None        # qmail-showctl's text after ``(Default.) `` if not derived
    initial: int | None = None       # what a new instance's file says, if not the default

    def shown(self, value: str) -> str:
        """qmail-showctl's sentence with ``value`` in place of ``{}``."""
        pre, _, post = (self.show or "").partition("{}")
        return pre + value + post


SEND = ("qmail-send",)
SMTPD = ("qmail-smtpd",)
REMOTE = ("qmail-remote",)
INJECT = ("qmail-inject",)
QUALIFY = ("qmail-inject", "newaliases", "fastforward", "dot-forward", "sendmail")  # sendmail -bt
REWRITE = ("qmail-send", "qmail-smtpd", "sendmail")   # qpy.rewrite; qmail-smtpd with rcptcheck
SERVERS = ("qmail-smtpd", "qmail-qmtpd")
QUEUE = ("qmail-queue",)                              # the queue writer, in any process
DOCTOR = ("qpy",)                                     # qpy doctor, qpy dkim

# qmail-showctl's order: qmail's files (rcpthosts before morercpthosts), then qpy's own,
# then the conventional files that no program reads.
FILES: tuple[ControlFile, ...] = (
    ControlFile("badmailfrom", "list", None, SMTPD,
                "MAIL FROM senders refused: an address, or `@domain` for a whole domain",
                show="{} not accepted in MAIL FROM.", absent="Any MAIL FROM is allowed."),
    ControlFile("bouncefrom", "line", b"MAILER-DAEMON", SEND,
                "user part of a bounce's `From:`",
                show="Bounce user name is {}."),
    ControlFile("bouncehost", "line", b"bouncehost", SEND,
                "host part of a bounce's `From:`",
                me=True, show="Bounce host name is {}."),
    ControlFile("bouncemaxbytes", "int", 50000, SEND,
                "bytes of the original message a bounce carries, whole lines (0: all of it)",
                show="Bounces carry at most {} bytes of the original message."),
    ControlFile("concurrencylocal", "int", 10, SEND,
                "local deliveries at once (0 holds them; at most the silent limit, 120)",
                show="Local concurrency is {}."),
    ControlFile("concurrencyremote", "int", 20, SEND,
                "remote deliveries at once (0 holds them; at most the silent limit, 120)",
                show="Remote concurrency is {}."),
    ControlFile("databytes", "int", 0, SERVERS,
                "largest message accepted, in bytes; 0 = unlimited; $DATABYTES overrides",
                show="SMTP DATA limit is {} bytes.", initial=10485760),
    ControlFile("defaultdomain", "line", b"defaultdomain", QUALIFY,
                "domain appended to a host name without a dot; $QMAILDEFAULTDOMAIN overrides",
                me=True, show="Default domain name is {}."),
    ControlFile("defaulthost", "line", b"defaulthost", QUALIFY,
                "host appended to an address without `@`; $QMAILDEFAULTHOST overrides",
                me=True, show="Default host name is {}."),
    ControlFile("doublebouncehost", "line", b"doublebouncehost", SEND,
                "host part of the double-bounce recipient",
                me=True, show="2B recipient host: {}."),
    ControlFile("doublebounceto", "line", b"postmaster", SEND,
                "user part of the double-bounce recipient",
                show="2B recipient user: {}."),
    ControlFile("envnoathost", "line", b"envnoathost", REWRITE,
                "domain appended to an envelope recipient without `@`",
                me=True, show="Presumed domain name is {}."),
    ControlFile("helohost", "line", None, REMOTE + DOCTOR,
                "qmail-remote's HELO argument",
                me=True, required=True, show="SMTP client HELO host name is {}."),
    ControlFile("idhost", "line", b"idhost", INJECT,
                "host part of a new Message-ID; $QMAILIDHOST overrides",
                me=True, show="Message-ID host name is {}."),
    ControlFile("localiphost", "line", None, SMTPD,
                "replaces `[own IP]` as a recipient's domain",
                me=True, show="Local IP address becomes {}."),
    ControlFile("locals", "list", None, tuple(dict.fromkeys(REWRITE + QUALIFY + QUEUE)),
                "domains delivered locally (and hosts the address completion leaves alone)",
                me=True, required=True, show="Messages for {} are delivered locally.",
                absent="Messages for me are delivered locally."),
    ControlFile("me", "line", None,
                ("qmail-send", "qmail-smtpd", "qmail-remote", "qmail-inject", "newaliases",
                 "fastforward", "dot-forward", "qpy", "qmail-queue"),
                "this host's fully qualified name; the default of the files marked me",
                show="My name is {}.", absent="My name is undefined! Uh-oh."),
    ControlFile("percenthack", "list", None, REWRITE,
                "domains where `user%host@domain` becomes `user@host`",
                show="The percent hack is allowed for user%host@{}.",
                absent="The percent hack is not allowed."),
    ControlFile("plusdomain", "line", b"plusdomain", QUALIFY,
                "domain appended to an address ending in `+`; $QMAILPLUSDOMAIN overrides",
                me=True, show="Plus domain name is {}."),
    ControlFile("qmqpservers", "list", None, ("qmail-qmqpc",),
                "QMQP servers' IP addresses, tried in order",
                required=True, show="QMQP server: {}.", absent="No QMQP servers."),
    ControlFile("queuelifetime", "int", 604800, SEND,
                "seconds in the queue before a temporary failure becomes permanent",
                show="Message lifetime in the queue is {} seconds."),
    ControlFile("rcpthosts", "list", None, SERVERS,
                "domains accepted in RCPT (`.domain`: its subdomains); no file accepts all:"
                " an open relay",
                show="SMTP clients may send messages to recipients at {}.",
                absent="SMTP clients may send messages to any recipient."),
    ControlFile("morercpthosts", "list", None, ("qmail-newmrh",),
                "more rcpthosts, compiled into morercpthosts.cdb by qmail-newmrh",
                show="SMTP clients may send messages to recipients at {}.", absent="No effect."),
    ControlFile("morercpthosts.cdb", "cdb", None, SERVERS,
                "morercpthosts as a cdb (built by qmail-newmrh); consulted only if rcpthosts exists",
                show="Modified recently enough; hopefully up to date.", absent="No effect."),
    ControlFile("smtpgreeting", "line", None, SMTPD,
                "text after `220 ` in the greeting; its first word is the host name",
                me=True, required=True, show="SMTP greeting: 220 {}."),
    ControlFile("smtproutes", "map", None, REMOTE,
                "`domain:relay[:port]` routes; an empty relay = MX; the empty domain = every host",
                show="SMTP route: {}", absent="No artificial SMTP routes."),
    ControlFile("timeoutconnect", "int", 60, REMOTE,
                "seconds qmail-remote waits for a connection (0 → 1)",
                show="SMTP client connection timeout is {} seconds."),
    ControlFile("timeoutremote", "int", 1200, REMOTE,
                "seconds qmail-remote waits for each read or write (0 → 1)",
                show="SMTP client data timeout is {} seconds."),
    ControlFile("timeoutsmtpd", "int", 1200, SMTPD,
                "seconds qmail-smtpd waits for each read (0 → 1)",
                show="SMTP server data timeout is {} seconds.", initial=300),
    ControlFile("virtualdomains", "map", None, REWRITE + QUEUE,
                "`domain:prefix` or `user@domain:prefix`: deliver locally to `prefix-address`;"
                " an empty prefix is an exception",
                show="Virtual domain: {}", absent="No virtual domains."),
    # qpy's own
    ControlFile("nameservers", "list", None,
                ("qmail-remote", "tcpserver", "rblsmtpd") + QUEUE + DOCTOR,
                "DNS servers (`ip`, `ip:port`, `[ipv6]:port`), one a line; $QPY_NAMESERVERS"
                " overrides; no file = the system's resolver configuration",
                show="Name server: {}.", absent="Using the system resolver configuration."),
    ControlFile("rcptcheck", "int", 0, SMTPD,
                "1 = refuse RCPT of a local address that has no mailbox",
                show="Unknown local recipients refused at RCPT time (1 = yes): {}.", initial=1),
    # limits on what one client may cost (qpy.smtplimits); maxrcpt is the maxrcpt patch's
    ControlFile("maxrcpt", "int", 0, ("qmail-smtpd", "qmail-qmtpd", "qmail-qmqpd"),
                "recipients of one message (more: 452 4.5.3 in SMTP, Z in QMTP, D in QMQP);"
                " 0 = no limit; $MAXRCPT overrides",
                show="Recipients per message are limited to {} (0 = no limit).", initial=1000),
    ControlFile("timeoutsmtpdsession", "int", 1800, SMTPD,
                "seconds an SMTP session may last in all, then 421 4.4.2; 0 = no limit",
                show="SMTP server session deadline is {} seconds (0 = none)."),
    ControlFile("mindatarate", "int", 500, SMTPD,
                "bytes a second a client must keep up in DATA after one timeoutsmtpd of grace,"
                " then 421 4.4.2; 0 = no minimum",
                show="SMTP server minimum DATA rate is {} bytes a second (0 = none)."),
    ControlFile("maxerrors", "int", 20, SMTPD,
                "4xx/5xx replies an SMTP session may get, then 421 4.7.0 (counted afresh after"
                " each accepted message); 0 = no limit",
                show="SMTP sessions are closed after {} errors (0 = never)."),
    ControlFile("maxjunk", "int", 100, SMTPD,
                "NOOP, RSET, VRFY and HELP commands an SMTP session may send before each further"
                " one counts as an error; 0 = no limit",
                show="SMTP junk commands counted as errors after {} (0 = never)."),
    ControlFile("maxauthfail", "int", 3, SMTPD,
                "failed SMTP AUTH attempts in one session, then 421 4.7.0; 0 = no limit",
                show="SMTP sessions are closed after {} AUTH failures (0 = never)."),
    ControlFile("authfaildelay", "int", 2, SMTPD,
                "seconds a failed AUTH waits for its 535, times the session's failures so far",
                show="Failed SMTP AUTH attempts wait {} seconds per failure so far."),
    ControlFile("checkpassword", "line", None, SMTPD,
                "SMTP AUTH's checkpassword program and its arguments; $CHECKPASSWORD overrides",
                show="SMTP AUTH checkpassword command: {}.",
                absent="SMTP AUTH checkpassword command: none."),
    ControlFile("servercert.pem", "pem", None, SMTPD + DOCTOR,
                "certificate chain and key for STARTTLS; no file, no STARTTLS",
                show="STARTTLS certificate present.", absent="No STARTTLS."),
    # sending on behalf of our users (qpy.dkimkeys, qpy.srs, qpy.bounce): the names of the
    # s/qmail DKIM patch (dkimdomains, domainkeys/) and of the qmail SRS patch (srs_*)
    ControlFile("dkimdomains", "list", None, QUEUE + DOCTOR,
                "`domain:selector[,selector2]`: the selectors whose keys in"
                " control/domainkeys/<domain>/ sign mail whose From: is in that domain"
                " (qpy dkim keygen writes it); no line, no signature",
                show="DKIM signing: {}.", absent="No DKIM signing."),
    ControlFile("domainkeys", "dir", None, QUEUE + DOCTOR,
                "`domainkeys/<domain>/<selector>`: a DKIM private key (PEM, RSA or Ed25519),"
                " readable only by the queue's owner; `<selector>.pub` its TXT record",
                show="DKIM keys present.", absent="No DKIM keys."),
    ControlFile("authservid", "line", None, QUEUE + SMTPD,
                "the authserv-id of our Authentication-Results and ARC seals; incoming"
                " Authentication-Results fields carrying it are removed",
                me=True, show="Authentication-Results authserv-id is {}."),
    ControlFile("srs_domain", "line", None, QUEUE + SERVERS,
                "the domain of SRS addresses (SRS0=…@it) given to forwarded mail's senders;"
                " no file, no SRS",
                show="Forwarded senders are rewritten to SRS addresses at {}.",
                absent="No SRS: forwards keep their sender."),
    ControlFile("srs_secrets", "secret", None, QUEUE + SERVERS,
                "SRS secrets, one a line: the first signs, every one is accepted (rotation)",
                show="SRS secrets present.", absent="No SRS secret: SRS is off."),
    ControlFile("srs_maxage", "int", 21, QUEUE + SERVERS,
                "days an SRS address stays valid for bounces",
                show="SRS addresses are valid for {} days."),
    ControlFile("bounceformat", "line", b"dsn", SEND,
                "`dsn`: bounces are RFC 3464 multipart/report with qmail's text first;"
                " `qsbmf`: qmail's plain text bounce only",
                show="Bounce format is {}."),
    # receiving: what qmail-smtpd checks about a client (qpy.dnsbudget, issue 17); spfbehavior
    # and spfexp are the qmail SPF patch's
    ControlFile("timeoutdns", "int", 5, SMTPD + QUEUE,
                "seconds one DNS question may take in qmail-smtpd's checks and a forward's sealing",
                show="DNS questions time out after {} seconds."),
    ControlFile("dnsbudget", "int", 30, SMTPD + QUEUE,
                "seconds of DNS one message may use in all; then every further lookup is a"
                " temporary failure (4xx, never 5xx)",
                show="Each message may spend {} seconds on DNS."),
    ControlFile("spfbehavior", "int", 0, SMTPD,
                "SPF on MAIL FROM (HELO for <>): 0 off, 1 header only, 2 and 451 on DNS"
                " trouble (at MAIL), 3 and 550 on fail (at RCPT), 4 also softfail, 5 also"
                " neutral, 6 anything but pass; $SPFBEHAVIOR overrides",
                show="SPF behavior is {}."),
    ControlFile("spfexp", "line", None, SMTPD,
                "the explanation in SPF's 550 (macros as RFC 7208 §7) unless the domain's exp="
                " gives one; none: `%{i} is not one of %{d}'s designated mail servers`",
                show="SPF explanation: {}.",
                absent="SPF explanation: %{i} is not one of %{d}'s designated mail servers."),
    ControlFile("dmarcenforce", "int", 0, SMTPD,
                "0 annotate only; 1 honour DMARC p=reject (550 5.7.1 after DATA) and"
                " p=quarantine (an `X-Qpy-Quarantine: dmarc <domain>` field for .qmail"
                " filters), when SPF was checked (spfbehavior 1 or more)",
                show="DMARC policies are enforced (1 = yes): {}."),
    ControlFile("helocheck", "int", 0, SMTPD,
                "at MAIL, 1 refuse a HELO that is neither an FQDN nor an address literal; 2 refuse"
                " a HELO naming this host (me, locals, rcpthosts) from a non-local client; 3 both",
                show="HELO checks: {} (1 syntax, 2 our name, 3 both)."),
    ControlFile("senderdomaincheck", "int", 0, SMTPD,
                "1 refuse a MAIL FROM domain without MX, A or AAAA (550 on NXDOMAIN or no"
                " record or a null MX, 450 while DNS fails)",
                show="Sender domains must exist in DNS (1 = yes): {}."),
    ControlFile("tcp.smtp.cdb", "cdb", None, ("tcpserver",),
                "the SMTP service's tcprules, built by tcprules; `tcpserver -x` in qpy install's"
                " run script"),
    # conventional (Life with qmail); no program reads them
    ControlFile("defaultdelivery", "line", None, (),
                "the default delivery a startup script passes to qmail-start as argv[1]"),
    ControlFile("concurrencyincoming", "int", None, (),
                "the `tcpserver -c` limit a startup script gives the SMTP service"),
)

BY_NAME: dict[str, ControlFile] = {f.name: f for f in FILES}


def entry(name: str) -> ControlFile:
    """The declaration of control/<name>; KeyError (a programming error) if there is none."""
    return BY_NAME[name]


def default_text(f: ControlFile) -> str:
    """The default column of the docs table."""
    if isinstance(f.default, int):
        text = str(f.default)
        if f.initial is not None:
            text += f"; a new instance's file: {f.initial}"
    elif f.default is not None:
        text = f"`{f.default.decode()}`"
    else:
        text = "none"
    if f.me:
        text = "me" if f.default is None else f"me, else {text}"
    return text + (" (*required*)" if f.required else "")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown() -> str:
    """docs/controlfiles.md: the kinds, then one table row per control file."""
    lines = [
        "# Control files",
        "",
        "<!-- Generated from qpy/controlfiles.py by `python3 -m qpy.controlfiles`; do not edit. -->",
        "",
        "Every file in `QMAILHOME/control/` that qpy knows, in qmail-showctl's order. A missing",
        "file means its default; any other trouble reading it is a temporary failure. Trailing",
        "spaces, tabs and newlines are stripped from every line. *me* as a default means the first",
        "line of `control/me`, then the literal shown; *required*: without a value the reader",
        "refuses to run.",
        "",
        "| type | read as |",
        "|---|---|",
    ]
    lines += [f"| {kind} | {_cell(text)} |" for kind, text in KINDS.items()]
    lines += ["", "| file | type | default | read by | meaning |", "|---|---|---|---|---|"]
    for f in FILES:
        readers = ", ".join(f.readers) or "no program"
        lines.append(f"| {f.name} | {f.kind} | {_cell(default_text(f))} | {readers} "
                     f"| {_cell(f.meaning)} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    """Print docs/controlfiles.md."""
    sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
