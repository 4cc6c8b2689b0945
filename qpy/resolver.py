"""The DNS resolver every qpy program uses (dnspython), and where it points.

Nameservers come from ``$QPY_NAMESERVERS`` if set, else control/nameservers,
else the system's /etc/resolv.conf.  Each entry is ``IP`` or ``IP:port`` or
``[IPv6]:port`` (separated by commas or spaces in the variable, one per line in
the file), so tests and sites can point qmail-remote and rblsmtpd at any server.
"""
from __future__ import annotations

import os

import dns.resolver

from qpy import control
from qpy.errors import ControlError

DEFAULT_PORT = 53


def parse_server(entry: str) -> tuple[str, int]:
    """``1.2.3.4``, ``1.2.3.4:5353``, ``::1``, ``[::1]:5353`` → (ip, port)."""
    entry = entry.strip()
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else DEFAULT_PORT
    if entry.count(":") == 1:
        host, port = entry.split(":")
        return host, int(port)
    return entry, DEFAULT_PORT


def configured_servers() -> list[tuple[str, int]] | None:
    """The configured nameservers, or None for the system default."""
    text = os.environ.get("QPY_NAMESERVERS")
    if text:
        entries = text.replace(",", " ").split()
    else:
        lines = control.read_list("nameservers")
        if lines is None:
            return None
        entries = [line.decode("ascii", "replace") for line in lines]
    try:
        return [parse_server(e) for e in entries if e]
    except ValueError as e:
        raise ControlError(f"Unable to parse nameservers: {e}. (#4.3.0)") from e


def make_resolver(timeout: float = 30.0) -> dns.resolver.Resolver:
    """A dnspython Resolver aimed at the configured servers."""
    servers = configured_servers()
    if servers is None:
        try:
            res = dns.resolver.Resolver()
        except dns.resolver.NoResolverConfiguration:
            res = dns.resolver.Resolver(configure=False)
            res.nameservers = ["127.0.0.1"]
    else:
        res = dns.resolver.Resolver(configure=False)
        res.nameservers = [ip for ip, _ in servers]
        ports = {port for _, port in servers}
        if len(ports) == 1:
            res.port = ports.pop()
        else:
            res.nameserver_ports = {ip: port for ip, port in servers}
    res.lifetime = timeout
    res.timeout = min(timeout, 5.0)
    res.cache = None
    return res

