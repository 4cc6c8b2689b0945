"""tcprulescheck: the same answers as Debian's for the same cdb, in tcpserver's lookup order."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tcpserve import debian

RULES = """joe@1.2.3.4:deny
joe@=host.example.com:allow,WHO="joe at host"
1.2.3.4:allow,WHAT="ip"
=host.example.com:allow,WHAT="host"
1.2.3.:allow,WHAT="class c"
1.2.:deny
=.example.com:allow,WHAT="domain"
=.com:allow,WHAT="tld"
=:allow,WHAT="any name"
:allow,WHAT="default",OTHER=""
"""
CLIENTS = [
    {"TCPREMOTEIP": "1.2.3.4", "TCPREMOTEINFO": "joe"},
    {"TCPREMOTEIP": "9.9.9.9", "TCPREMOTEINFO": "joe", "TCPREMOTEHOST": "host.example.com"},
    {"TCPREMOTEIP": "1.2.3.4", "TCPREMOTEHOST": "host.example.com"},
    {"TCPREMOTEIP": "9.9.9.9", "TCPREMOTEHOST": "host.example.com"},
    {"TCPREMOTEIP": "1.2.3.9", "TCPREMOTEHOST": "other.example.com"},
    {"TCPREMOTEIP": "1.2.9.9", "TCPREMOTEHOST": "other.example.com"},
    {"TCPREMOTEIP": "9.9.9.9", "TCPREMOTEHOST": "other.example.com"},
    {"TCPREMOTEIP": "9.9.9.9", "TCPREMOTEHOST": "x.org"},
    {"TCPREMOTEIP": "9.9.9.9", "TCPREMOTEHOST": "localhost"},
    {"TCPREMOTEIP": "9.9.9.9"},
    {},
]


def check(program: str, cdb: Path, client: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TCP")}
    env.update(client)
    return subprocess.run([program, str(cdb)], env=env, capture_output=True, timeout=30)


@pytest.fixture
def debian_cdb(tmp_path: Path) -> Path:
    cdb = tmp_path / "rules.cdb"
    r = subprocess.run([debian("tcprules"), str(cdb), str(cdb) + ".tmp"], input=RULES.encode(),
                       capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return cdb


@pytest.mark.parametrize("client", CLIENTS)
def test_reads_debian_rules_like_debian_tcprulescheck(home, debian_cdb, client):
    ours = check(str(home / "bin" / "tcprulescheck"), debian_cdb, client)
    theirs = check(debian("tcprulescheck"), debian_cdb, client)
    assert (ours.returncode, ours.stdout, ours.stderr) == (theirs.returncode, theirs.stdout, b"")
    assert ours.returncode == 0


def test_lookup_order_answers(home, debian_cdb):
    ours = str(home / "bin" / "tcprulescheck")
    out = [check(ours, debian_cdb, c).stdout.decode() for c in CLIENTS[:3]]
    assert out[0] == "rule joe@1.2.3.4:\ndeny connection\n"
    assert out[1] == ("rule joe@=host.example.com:\nset environment variable WHO=joe at host\n"
                      "allow connection\n")
    assert out[2] == "rule 1.2.3.4:\nset environment variable WHAT=ip\nallow connection\n"
    last = check(ours, debian_cdb, {}).stdout.decode()
    assert last == ("rule :\nset environment variable WHAT=default\n"
                    "set environment variable OTHER=\nallow connection\n")


def test_default_when_nothing_matches(home, tmp_path):
    cdb = tmp_path / "r.cdb"
    subprocess.run([str(home / "bin" / "tcprules"), str(cdb), str(cdb) + ".tmp"],
                   input=b"10.:deny\n", timeout=30, check=True)
    r = check(str(home / "bin" / "tcprulescheck"), cdb, {"TCPREMOTEIP": "127.0.0.1"})
    assert (r.returncode, r.stdout) == (0, b"default:\nallow connection\n")


def test_errors_match_debian(home, tmp_path):
    ours, theirs = str(home / "bin" / "tcprulescheck"), debian("tcprulescheck")
    a = subprocess.run([ours], capture_output=True, timeout=30)
    b = subprocess.run([theirs], capture_output=True, timeout=30)
    assert (a.returncode, a.stderr) == (b.returncode, b.stderr) == (
        100, b"tcprulescheck: usage: tcprulescheck rules.cdb\n")
    missing = tmp_path / "none.cdb"
    a, b = check(ours, missing, {}), check(theirs, missing, {})
    assert (a.returncode, a.stderr) == (b.returncode, b.stderr) == (
        111, f"tcprulescheck: fatal: unable to read {missing}: file does not exist\n".encode())
