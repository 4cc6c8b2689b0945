"""tcpserver as a real process on loopback: environment, rules, limit, log, banner, IPv6, warm runs."""
from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import run
from tcpserve import TCPServer, connect, debian, env_lines, ipv6_loopback, read_all, talk

ENV = ["sh", "-c", "env; exit 3"]
QUIET = ["-R", "-H", "-l", "lh"]


def rules(home: Path, text: str, compiler: str | None = None) -> str:
    """Compile rules with our tcprules (or ``compiler``); return the cdb path."""
    cdb = str(home / "rules.cdb")
    argv = [compiler or str(home / "bin" / "tcprules"), cdb, cdb + ".tmp"]
    r = subprocess.run(argv, input=text.encode(), capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return cdb


def pid_of(log: str, word: str = "ok") -> int:
    return int(re.search(rf"tcpserver: {word} (\d+) ", log).group(1))


def test_environment_and_verbose_log_lines(home):
    with TCPServer(home, ["-v", *QUIET], ENV) as srv:
        with connect(srv.host, srv.port) as s:
            client_port = s.getsockname()[1]
            env = env_lines(read_all(s))
        log = srv.wait_log("tcpserver: status: 0/40", 2)
    assert srv.returncode == 0
    assert env["PROTO"] == "TCP"
    assert env["TCPLOCALIP"] == env["TCPREMOTEIP"] == "127.0.0.1"
    assert env["TCPLOCALPORT"] == str(srv.port)
    assert env["TCPREMOTEPORT"] == str(client_port)
    assert env["TCPLOCALHOST"] == "lh"
    assert "TCPREMOTEHOST" not in env and "TCPREMOTEINFO" not in env
    pid = pid_of(log)
    assert log.splitlines() == [
        "tcpserver: status: 0/40",
        "tcpserver: status: 1/40",
        f"tcpserver: pid {pid} from 127.0.0.1",
        f"tcpserver: ok {pid} lh:127.0.0.1:{srv.port} :127.0.0.1::{client_port}",
        f"tcpserver: end {pid} status {3 << 8}",
        "tcpserver: status: 0/40",
    ]


def test_inherited_variables_for_unknown_values_are_unset(home):
    from dnsserver import DNSServer
    stale = {"TCPREMOTEHOST": "stale.example", "TCPREMOTEINFO": "stale", "TCPLOCALHOST": "stale"}
    with DNSServer({}) as dns:   # no PTR records at all
        with TCPServer(home, ["-R"], ENV, env=dict(stale, QPY_NAMESERVERS=dns.spec)) as srv:
            env = env_lines(talk(srv.host, srv.port))
    assert not set(stale) & set(env)


def test_quiet_by_default_and_q_silences_errors(home, tmp_path):
    missing = str(tmp_path / "none.cdb")
    with TCPServer(home, [*QUIET, "-x", missing], ENV) as srv:
        assert talk(srv.host, srv.port) == b""
        log = srv.wait_log("dropping connection")
    assert log == f"tcpserver: warning: dropping connection, unable to read {missing}: file does not exist\n"
    with TCPServer(home, ["-q", *QUIET, "-x", missing], ENV) as srv:
        assert talk(srv.host, srv.port) == b""
    assert srv.log == ""


def test_banner_is_sent_before_the_program_runs(home):
    with TCPServer(home, [*QUIET, "-B", "hello there\r\n"], ["echo", "prog"]) as srv:
        assert talk(srv.host, srv.port) == b"hello there\r\nprog\n"


def test_rules_deny_closes_with_exit_100_after_the_banner(home):
    cdb = rules(home, "127.0.0.1:deny\n:allow\n")
    with TCPServer(home, ["-v", *QUIET, "-B", "hi\n", "-x", cdb], ENV) as srv:
        assert talk(srv.host, srv.port) == b"hi\n"
        log = srv.wait_log(" status 25600")
    pid = pid_of(log, "deny")
    assert f"tcpserver: deny {pid} lh:127.0.0.1:{srv.port} :127.0.0.1::" in log
    assert f"tcpserver: end {pid} status {100 << 8}" in log


def test_rules_set_variables_after_the_tcp_ones(home):
    cdb = rules(home, '127.:allow,RELAYCLIENT="",TCPLOCALHOST="ruled.example",X=/a"b/\n:deny\n')
    with TCPServer(home, [*QUIET, "-x", cdb], ENV) as srv:
        env = env_lines(talk(srv.host, srv.port))
    assert env["RELAYCLIENT"] == ""
    assert env["TCPLOCALHOST"] == "ruled.example"
    assert env["X"] == 'a"b'


def test_default_rule_and_empty_key(home):
    cdb = rules(home, "10.:allow\n:deny\n")
    with TCPServer(home, [*QUIET, "-x", cdb], ENV) as srv:
        assert talk(srv.host, srv.port) == b""


def test_missing_rules_allowed_with_X_and_unreadable_rules_drop(home, tmp_path):
    with TCPServer(home, [*QUIET, "-X", "-x", str(tmp_path / "none.cdb")], ENV) as srv:
        assert env_lines(talk(srv.host, srv.port))["PROTO"] == "TCP"
    bad = tmp_path / "bad.cdb"
    bad.write_bytes(b"short")
    with TCPServer(home, [*QUIET, "-X", "-x", str(bad)], ENV) as srv:
        assert talk(srv.host, srv.port) == b""
        log = srv.wait_log("dropping")
    assert f"unable to read {bad}: protocol error" in log


def _accept_queue(port: int) -> int:
    """How many connections wait in the kernel's accept queue of the listener on ``port``."""
    total = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                total += int(fields[4].split(":")[1], 16)
    return total


def test_connection_limit_makes_extra_connections_wait(home):
    prog = ["sh", "-c", "echo start; read line; echo done"]
    with TCPServer(home, ["-v", *QUIET, "-c", "1"], prog) as srv:
        a = connect(srv.host, srv.port)
        assert a.recv(100) == b"start\n"
        b = connect(srv.host, srv.port)
        # b is in the kernel's accept queue and stays there while a runs.
        for _ in range(300):
            if _accept_queue(srv.port) == 1:
                break
            time.sleep(0.01)
        assert _accept_queue(srv.port) == 1
        a.sendall(b"x\n")
        assert read_all(a) == b"done\n"
        assert b.recv(100) == b"start\n"
        b.sendall(b"y\n")
        assert read_all(b) == b"done\n"
        a.close()
        b.close()
        log = srv.wait_log(" end ", 2)
    first, second = re.findall(r"tcpserver: pid (\d+) from", log)
    assert log.index(f"end {first} status") < log.index(f"pid {second} from")
    assert "status: 2/1" not in log


def test_sigterm_leaves_running_children_alone(home):
    prog = ["sh", "-c", "echo start; read line; echo still here"]
    srv = TCPServer(home, QUIET, prog).__enter__()
    try:
        s = connect(srv.host, srv.port)
        assert s.recv(100) == b"start\n"
    finally:
        assert srv.stop() == 0
    s.sendall(b"x\n")
    assert read_all(s) == b"still here\n"
    s.close()


def test_usage_and_fatal_errors(home):
    r = run(home, "tcpserver", ["-Z", "0", "0", "true"])
    assert r.returncode == 100
    assert r.stderr.startswith(b"tcpserver: usage: tcpserver ")
    assert run(home, "tcpserver", ["127.0.0.1", "0"]).returncode == 100
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        r = run(home, "tcpserver", ["127.0.0.1", str(busy.getsockname()[1]), "true"])
    assert r.returncode == 111
    assert r.stderr == b"tcpserver: fatal: unable to bind: address already used\n"
    r = run(home, "tcpserver", ["127.0.0.1", "no-such-service", "true"])
    assert (r.returncode, r.stderr) == (111, b"tcpserver: fatal: unable to figure out port number "
                                              b"for no-such-service\n")


def test_program_that_cannot_run_drops_the_connection(home):
    with TCPServer(home, QUIET, ["/nonexistent/prog"]) as srv:
        assert talk(srv.host, srv.port) == b""
        log = srv.wait_log("unable to run")
    assert ("tcpserver: warning: dropping connection, unable to run /nonexistent/prog: "
            "file does not exist") in log


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6_client_gets_tcp6_and_tcp_variables(home):
    cdb = rules(home, '::1:allow,SIX="yes"\n:deny\n')
    with TCPServer(home, ["-v", *QUIET, "-x", cdb], ENV, host="::1") as srv:
        with connect("::1", srv.port) as s:
            port = s.getsockname()[1]
            env = env_lines(read_all(s))
        log = srv.wait_log(" end ")
    assert env["PROTO"] == "TCP6"
    for prefix in ("TCP", "TCP6"):
        assert env[prefix + "REMOTEIP"] == env[prefix + "LOCALIP"] == "::1"
        assert env[prefix + "REMOTEPORT"] == str(port)
        assert env[prefix + "LOCALPORT"] == str(srv.port)
        assert env[prefix + "LOCALHOST"] == "lh"
    assert env["SIX"] == "yes"
    pid = pid_of(log)
    assert f"tcpserver: ok {pid} lh:::1:{srv.port} :::1::{port}" in log


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback")
def test_host_0_serves_ipv4_and_ipv6(home):
    with TCPServer(home, QUIET, ENV, host="0") as srv:
        four = env_lines(talk("127.0.0.1", srv.port))
        six = env_lines(talk("::1", srv.port))
    assert (four["PROTO"], four["TCPREMOTEIP"]) == ("TCP", "127.0.0.1")
    assert (six["PROTO"], six["TCPREMOTEIP"]) == ("TCP6", "::1")


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6_prefix_rules_end_in_a_colon(home):
    cdb = rules(home, ':::allow,PREFIX="::"\n:deny\n')
    with TCPServer(home, QUIET + ["-x", cdb], ENV, host="::1") as srv:
        assert env_lines(talk("::1", srv.port))["PREFIX"] == "::"


def test_remote_host_from_ptr_and_paranoid_check(home):
    from dnsserver import DNSServer
    zone = {"1.0.0.127.in-addr.arpa": [("PTR", "Client.Example.")],
            "client.example": [("A", "127.0.0.1")],
            "liar.example": [("A", "127.0.0.9")]}
    with DNSServer(zone) as dns:
        cdb = rules(home, '=.example:allow,BYNAME="1"\n:allow\n')
        for opts, host in ((["-h"], "client.example"), (["-p"], "client.example")):
            with TCPServer(home, ["-R", "-l", "lh", "-x", cdb, *opts], ENV,
                           env={"QPY_NAMESERVERS": dns.spec}) as srv:
                env = env_lines(talk(srv.host, srv.port))
            assert env["TCPREMOTEHOST"] == host
            assert env["BYNAME"] == "1"
        dns.records["1.0.0.127.in-addr.arpa"] = [("PTR", "liar.example.")]
        with TCPServer(home, ["-R", "-p", "-l", "lh", "-x", cdb], ENV,
                       env={"QPY_NAMESERVERS": dns.spec}) as srv:
            env = env_lines(talk(srv.host, srv.port))
        assert "TCPREMOTEHOST" not in env and "BYNAME" not in env
        with TCPServer(home, ["-R", "-H"], ENV, env={"QPY_NAMESERVERS": dns.spec}) as srv:
            env = env_lines(talk(srv.host, srv.port))
        assert env["TCPLOCALHOST"] == "liar.example" and "TCPREMOTEHOST" not in env


def test_our_program_runs_warm_in_the_child_and_exec_with_QPY_EXEC(home):
    """qmail-qmtpd waits for input: while it runs, /proc shows whether it was exec'd."""
    for extra, want in (({}, "tcpserver"), ({"QPY_EXEC": "1"}, "qmail-qmtpd")):
        with TCPServer(home, ["-v", *QUIET], ["qmail-qmtpd"], env=extra) as srv:
            with connect(srv.host, srv.port) as s:
                pid = pid_of(srv.wait_log("tcpserver: ok "))
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                s.sendall(b"x")          # not a netstring length: protocol error
                s.shutdown(socket.SHUT_WR)
                assert read_all(s) == b""
            log = srv.wait_log(" end ")
        warm = any(arg.endswith(b"tcpserver") for arg in cmdline)
        assert warm == (want == "tcpserver"), cmdline
        assert any(arg.endswith(want.encode()) for arg in cmdline), cmdline
        assert f"end {pid} status {100 << 8}" in log


def test_chain_rblsmtpd_then_our_program_stays_warm(home):
    cdb = rules(home, '127.0.0.1:allow,RBLSMTPD=""\n')
    prog = ["rblsmtpd", "-r", "bl.example", "tcprulescheck", cdb]
    with TCPServer(home, ["-v", *QUIET, "-x", cdb], prog) as srv:
        out = talk(srv.host, srv.port)
    assert out == b"rule 127.0.0.1:\nset environment variable RBLSMTPD=\nallow connection\n"


def test_rules_compiled_by_debian_tcprules_are_honoured(home):
    cdb = rules(home, '127.0.0.1-3:allow,FROM="debian"\n:deny\n', compiler=debian("tcprules"))
    with TCPServer(home, QUIET + ["-x", cdb], ENV) as srv:
        assert env_lines(talk(srv.host, srv.port))["FROM"] == "debian"


def test_debian_tcpserver_honours_our_rules_and_runs_our_program(home):
    cdb = rules(home, '127.0.0.1:allow,FROM="qpy"\n:deny\n')
    with TCPServer(home, QUIET + ["-x", cdb], ENV, binary=debian("tcpserver")) as srv:
        env = env_lines(talk(srv.host, srv.port))
    assert env["FROM"] == "qpy" and env["PROTO"] == "TCP"
    prog = [str(home / "bin" / "tcprulescheck"), cdb]
    with TCPServer(home, QUIET + ["-x", cdb], prog, binary=debian("tcpserver")) as srv:
        assert talk(srv.host, srv.port) == (b"rule 127.0.0.1:\nset environment variable FROM=qpy\n"
                                            b"allow connection\n")
    cdb = rules(home, "127.0.0.1:deny\n:allow\n")
    with TCPServer(home, QUIET + ["-x", cdb], ENV, binary=debian("tcpserver")) as srv:
        assert talk(srv.host, srv.port) == b""


def test_ident_answer_becomes_TCPREMOTEINFO_and_a_rule_key(home):
    import threading
    try:
        identd = socket.socket()
        identd.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        identd.bind(("127.0.0.1", 113))
    except OSError:
        pytest.skip("cannot bind 127.0.0.1:113 (needs root and a free port)")
    identd.listen(1)
    asked: list[bytes] = []

    def serve() -> None:
        conn, _ = identd.accept()
        with conn:
            conn.settimeout(30)
            line = conn.recv(100)
            asked.append(line)
            conn.sendall(line.strip() + b" : USERID : UNIX : joe user\r\n")
    threading.Thread(target=serve, daemon=True).start()
    try:
        cdb = rules(home, 'joeuser@127.0.0.1:allow,WHO="ident"\n:deny\n')
        with TCPServer(home, ["-v", "-H", "-l", "lh", "-x", cdb], ENV) as srv:
            with connect(srv.host, srv.port) as s:
                port = s.getsockname()[1]
                env = env_lines(read_all(s))
            log = srv.wait_log(" end ")
    finally:
        identd.close()
    assert asked == [b"%d , %d\r\n" % (port, srv.port)]
    assert env["TCPREMOTEINFO"] == "joeuser" and env["WHO"] == "ident"
    assert f" :127.0.0.1:joeuser:{port}\n" in log


def test_u_g_and_U_drop_to_numeric_ids_after_binding(home):
    from conftest import need_root
    need_root()
    prog = ["sh", "-c", "id -u; id -g; id -G"]
    for opts, env in ((["-u", "65534", "-g", "65533"], {}), (["-U"], {"UID": "65534", "GID": "65533"})):
        with TCPServer(home, QUIET + opts, prog, env=env) as srv:
            assert talk(srv.host, srv.port) == b"65534\n65533\n65533\n"


HOLD = ["sh", "-c", "echo start; read line; echo done"]


def connect_from(source: str, host: str, port: int) -> socket.socket:
    """A client socket bound to the loopback address ``source`` (127.0.0.2 is another client)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(30)
    s.bind((source, 0))
    s.connect((host, port))
    return s


def test_per_client_limit_refuses_the_excess_with_its_message_and_serves_others(home):
    busy = "421 too many connections from your address (#4.7.0)"
    with TCPServer(home, ["-v", *QUIET, "-c", "4", "-C", f"2:{busy}"], HOLD) as srv:
        a, b = (connect_from("127.0.0.1", srv.host, srv.port) for _ in range(2))
        assert a.recv(100) == b.recv(100) == b"start\n"
        c = connect_from("127.0.0.1", srv.host, srv.port)
        assert read_all(c) == busy.encode() + b"\r\n"      # refused at once, not queued
        d = connect_from("127.0.0.2", srv.host, srv.port)
        assert d.recv(100) == b"start\n"                   # another address still gets a slot
        a.sendall(b"x\n")
        assert read_all(a) == b"done\n"
        srv.wait_log(" end ")
        e = connect_from("127.0.0.1", srv.host, srv.port)  # the address is below its limit again
        assert e.recv(100) == b"start\n"
        for s in (b, c, d, e):
            s.close()
        log = srv.wait_log(" end ", 4)
    assert "tcpserver: busy 127.0.0.1 2/2\n" in log
    assert log.count("tcpserver: pid ") == 4               # no child for the refused client
    assert "status: 4/4" not in log


def test_with_every_slot_taken_a_new_address_is_served_when_one_frees(home):
    """One address floods the listen queue; the honest client behind it gets the freed slot."""
    with TCPServer(home, ["-v", *QUIET, "-c", "3", "-C", "2"], HOLD) as srv:
        held = [connect_from(ip, srv.host, srv.port) for ip in ("127.0.0.1", "127.0.0.1", "127.0.0.3")]
        assert all(s.recv(100) == b"start\n" for s in held)
        flood = [connect_from("127.0.0.1", srv.host, srv.port) for _ in range(5)]
        honest = connect_from("127.0.0.2", srv.host, srv.port)
        for _ in range(300):
            if _accept_queue(srv.port) == 6:
                break
            time.sleep(0.01)
        assert _accept_queue(srv.port) == 6                 # all slots busy: nobody accepted
        held[2].sendall(b"x\n")
        assert read_all(held[2]) == b"done\n"
        assert honest.recv(100) == b"start\n"
        assert all(read_all(s) == b"" for s in flood)      # no message configured: just closed
        honest.sendall(b"y\n")
        assert read_all(honest) == b"done\n"
        for s in held[:2]:
            s.sendall(b"z\n")
            assert read_all(s) == b"done\n"
        for s in (*held, *flood, honest):
            s.close()
        log = srv.wait_log(" end ", 4)
    assert log.count("tcpserver: busy 127.0.0.1 2/2") == 5


def test_per_client_limit_must_be_positive(home):
    for bad in ("0", "x", ":msg"):
        r = run(home, "tcpserver", ["-C", bad, "127.0.0.1", "0", "true"])
        assert r.returncode == 100, bad
        assert r.stderr.startswith(b"tcpserver: usage: ")


def test_stress_is_set_only_while_three_quarters_of_the_slots_are_busy(home):
    prog = ["sh", "-c", 'echo "${QPYSTRESS-none}"; read line']
    # An inherited QPYSTRESS does not leak into connections accepted without stress.
    with TCPServer(home, [*QUIET, "-c", "4"], prog, env={"QPYSTRESS": "1"}) as srv:
        clients = [connect(srv.host, srv.port) for _ in range(4)]
        seen = [s.recv(100) for s in clients]      # 0, 1, 2 and then 3 of 4 slots were busy
        assert seen == [b"none\n", b"none\n", b"none\n", b"1\n"]
        for s in clients:
            s.sendall(b"x\n")
            assert read_all(s) == b""
            s.close()
        for _ in range(300):
            with connect(srv.host, srv.port) as s:
                first = s.recv(100)
                s.sendall(b"x\n")
            if first == b"none\n":
                break
            time.sleep(0.01)                       # (the four may not all be reaped yet)
        assert first == b"none\n"
