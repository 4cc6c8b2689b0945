"""A small authoritative DNS server on loopback for tests, built on dnspython's message API.

    with DNSServer({"example.test": [("MX", "10 mx.example.test."), ("A", "127.0.0.2")],
                    "mx.example.test": [("A", "127.0.0.3"), ("AAAA", "::1")]},
                   servfail={"broken.test"}) as dns:
        env = {"QPY_NAMESERVERS": dns.spec}     # "127.0.0.1:PORT"

Names are case-insensitive and given without the final dot.  A name not in the
table gets NXDOMAIN (NOERROR with no answer if only a type is missing).  A CNAME
is followed inside the table.  Names in ``servfail`` get SERVFAIL; names in
``drop`` get no answer at all (a timeout for the client).  UDP and TCP are served.
``queries`` records (name, type) of every question asked.
"""
from __future__ import annotations

import socket
import socketserver
import struct
import threading

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

TTL = 60


class DNSServer:
    """Serve a table of records on 127.0.0.1 (UDP+TCP, same port) until closed."""

    def __init__(self, records: dict[str, list[tuple[str, str]]], servfail: set[str] = frozenset(),
                 drop: set[str] = frozenset(), host: str = "127.0.0.1", port: int = 0) -> None:
        self.records = {k.lower().rstrip("."): list(v) for k, v in records.items()}
        self.servfail = {s.lower().rstrip(".") for s in servfail}
        self.drop = {s.lower().rstrip(".") for s in drop}
        self.queries: list[tuple[str, str]] = []
        self.host = host
        self.want_port = port       # 0: any free port
        self._udp: socketserver.UDPServer | None = None
        self._tcp: socketserver.TCPServer | None = None

    # -- answering -------------------------------------------------------------
    def answer(self, wire: bytes) -> bytes | None:
        """Build the response for one query in wire format (None = stay silent)."""
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if not query.question:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        q = query.question[0]
        name = q.name.to_text().lower().rstrip(".")
        self.queries.append((name, dns.rdatatype.to_text(q.rdtype)))
        if name in self.drop:
            return None
        if name in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()
        seen = set()
        while True:
            if name not in self.records:
                if not response.answer:
                    response.set_rcode(dns.rcode.NXDOMAIN)
                break
            entries = self.records[name]
            cname = [v for t, v in entries if t.upper() == "CNAME"]
            if cname and q.rdtype != dns.rdatatype.CNAME and name not in seen:
                seen.add(name)
                response.answer.append(self._rrset(name, "CNAME", cname[:1]))
                name = cname[0].lower().rstrip(".")
                continue
            values = [v for t, v in entries if dns.rdatatype.from_text(t.upper()) == q.rdtype]
            if values:
                response.answer.append(self._rrset(name, dns.rdatatype.to_text(q.rdtype), values))
            break
        return response.to_wire()

    @staticmethod
    def _rrset(name: str, rdtype: str, values: list[str]) -> dns.rrset.RRset:
        return dns.rrset.from_text_list(dns.name.from_text(name + "."), TTL, "IN", rdtype, values)

    # -- serving ---------------------------------------------------------------
    def start(self) -> "DNSServer":
        """Bind UDP and TCP on one free port (or the one asked for) and serve in threads."""
        server = self
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET

        class UDPHandler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                reply = server.answer(data)
                if reply is not None:
                    sock.sendto(reply, self.client_address)

        class TCPHandler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                head = self.request.recv(2, socket.MSG_WAITALL)
                if len(head) < 2:
                    return
                data = self.request.recv(struct.unpack("!H", head)[0], socket.MSG_WAITALL)
                reply = server.answer(data)
                if reply is not None:
                    self.request.sendall(struct.pack("!H", len(reply)) + reply)

        class UDP(socketserver.ThreadingUDPServer):
            address_family = family
            daemon_threads = True

        class TCP(socketserver.ThreadingTCPServer):
            address_family = family
            daemon_threads = True
            allow_reuse_address = True

        for _ in range(20):
            udp = UDP((self.host, self.want_port), UDPHandler)
            port = udp.server_address[1]
            try:
                tcp = TCP((self.host, port), TCPHandler)
            except OSError:
                udp.server_close()
                continue
            break
        else:
            raise OSError("no free port for the test DNS server")
        self._udp, self._tcp = udp, tcp
        for srv in (udp, tcp):
            threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                             daemon=True).start()
        return self

    @property
    def port(self) -> int:
        assert self._udp is not None
        return self._udp.server_address[1]

    @property
    def spec(self) -> str:
        """The QPY_NAMESERVERS value for this server."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def close(self) -> None:
        for srv in (self._udp, self._tcp):
            if srv is not None:
                srv.shutdown()
                srv.server_close()

    def __enter__(self) -> "DNSServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
