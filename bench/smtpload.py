#!/usr/bin/env python3
"""smtpload - send N messages of S bytes over C concurrent SMTP sessions and measure.

    python3 bench/smtpload.py --port 2525 -n 2000 -s 1024 -c 10 [--maildir DIR]

Pure Python (asyncio, no extra dependency; sessions are Protocol state machines, so
the generator takes little CPU from the server it measures).  Each session sends its share of the
messages one transaction after another on one connection (MAIL, RCPT, DATA; no
pipelining so both servers see the same dialogue).  Every message carries an
``X-Bench-Id`` header.  With ``--maildir`` it waits for all messages to appear in
``new/`` and reports accept→delivery latency percentiles (from the file's ctime,
i.e. the moment the Maildir link was made).  Prints one JSON object.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import time

ID = re.compile(rb"^X-Bench-Id: (\d+)", re.M)


def message(i: int, size: int, run: str) -> bytes:
    """A message of about ``size`` bytes with CRLF line ends, dot-stuffed."""
    head = (f"From: bench@localhost\r\nTo: rcpt@localhost\r\nSubject: bench {i}\r\n"
            f"X-Bench-Id: {i}\r\nX-Bench-Run: {run}\r\n\r\n").encode()
    line = b"abcdefghijklmnopqrstuvwxyz0123456789 " * 2 + b"\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return head + body


READ_TIMEOUT = 120.0     # a server that stops answering fails the session instead of hanging it


class Session(asyncio.Protocol):
    """One connection sending ``ids`` in turn: a state machine driven by the replies.

    (A Protocol rather than StreamReader coroutines: the load generator shares the
    machine with the server it measures, so it should spend as little CPU as it can.)
    """

    def __init__(self, ids: list[int], size: int, rcpt: str, run: str,
                 accepted: dict[int, float], failed: list[int], done: asyncio.Future) -> None:
        self.ids, self.size, self.run = ids, size, run
        self.rcpt = f"RCPT TO:<{rcpt}>\r\n".encode()
        self.accepted, self.failed, self.done = accepted, failed, done
        self.k = 0
        self.cur = -1
        self.buf = b""
        self.state = "greet"
        self.last = time.monotonic()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport          # type: ignore[assignment]
        asyncio.get_running_loop().call_later(5, self.watchdog)

    def watchdog(self) -> None:
        if self.done.done():
            return
        if time.monotonic() - self.last > READ_TIMEOUT:
            self.transport.abort()
            return
        asyncio.get_running_loop().call_later(5, self.watchdog)

    def data_received(self, data: bytes) -> None:
        self.last = time.monotonic()
        self.buf += data
        while True:
            nl = self.buf.find(b"\n")
            if nl == -1:
                return
            line, self.buf = self.buf[:nl + 1], self.buf[nl + 1:]
            if line[3:4] != b"-":
                self.reply(line[:3])

    def send(self, data: bytes, state: str) -> None:
        self.state = state
        self.transport.write(data)

    def next_message(self) -> None:
        if self.k < len(self.ids):
            self.cur = self.ids[self.k]
            self.k += 1
            self.send(b"MAIL FROM:<bench@localhost>\r\n", "mail")
        else:
            self.cur = -1
            self.send(b"QUIT\r\n", "quit")

    def reply(self, code: bytes) -> None:
        state = self.state
        if state == "greet":
            if code != b"220":
                self.transport.abort()
                return
            self.send(b"HELO bench.localhost\r\n", "helo")
        elif state == "helo":
            self.next_message()
        elif state == "mail":
            if code == b"250":
                self.send(self.rcpt, "rcpt")
            else:
                self.failed.append(self.cur)
                self.next_message()
        elif state == "rcpt":
            if code == b"250":
                self.send(b"DATA\r\n", "data")
            else:
                self.failed.append(self.cur)
                self.send(b"RSET\r\n", "rset")
        elif state == "rset":
            self.next_message()
        elif state == "data":
            if code == b"354":
                self.send(message(self.cur, self.size, self.run) + b".\r\n", "body")
            else:
                self.failed.append(self.cur)
                self.next_message()
        elif state == "body":
            if code == b"250":
                self.accepted[self.cur] = time.time()
            else:
                self.failed.append(self.cur)
            self.next_message()
        elif state == "quit":
            self.state = "closed"
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        done = set(self.accepted) | set(self.failed)
        self.failed.extend(i for i in self.ids if i not in done)
        if not self.done.done():
            self.done.set_result(None)


async def session(host: str, port: int, ids: list[int], size: int, rcpt: str, run: str,
                  accepted: dict[int, float], failed: list[int]) -> None:
    """One connection sending ``ids`` in turn; on a dead connection the rest count as failed."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    try:
        await asyncio.wait_for(loop.create_connection(
            lambda: Session(ids, size, rcpt, run, accepted, failed, done), host, port), READ_TIMEOUT)
        await done
    except (OSError, asyncio.TimeoutError):
        finished = set(accepted) | set(failed)
        failed.extend(i for i in ids if i not in finished)


async def load(host: str, port: int, n: int, size: int, c: int, rcpt: str, run: str):
    accepted: dict[int, float] = {}
    failed: list[int] = []
    shares = [list(range(k, n, c)) for k in range(c)]
    start = time.time()
    await asyncio.gather(*(session(host, port, ids, size, rcpt, run, accepted, failed)
                           for ids in shares if ids))
    return start, time.time(), accepted, failed


def listdir(path: str) -> list[str]:
    """The names in ``path``; none while it does not exist yet (Postfix makes it on delivery)."""
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def wait_delivered(maildir: str, want: set[int], run: str, timeout: float,
                   before: set[str]) -> dict[int, float]:
    """Wait until every id in ``want`` of this run is in maildir/new; id → ctime.

    Cheap while waiting (a directory listing every 50 ms, files read only once enough
    have appeared), so the waiting takes little CPU from the server still delivering;
    the times are the files' ctimes, not when they were seen.
    """
    seen: dict[int, float] = {}
    read: set[str] = set(before)
    deadline = time.time() + timeout
    new = os.path.join(maildir, "new")
    tag = f"X-Bench-Run: {run}".encode()
    while time.time() < deadline and not want <= set(seen):
        names = listdir(new)
        if len(names) - len(read) >= len(want) - len(seen):
            for name in names:
                if name in read:
                    continue
                read.add(name)
                path = os.path.join(new, name)
                with open(path, "rb") as f:
                    head = f.read(4096)
                    ctime = os.fstat(f.fileno()).st_ctime
                m = ID.search(head)
                if m and tag in head:
                    seen[int(m.group(1))] = ctime
            if want <= set(seen):
                break
        time.sleep(0.05)
    return seen


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=2525)
    ap.add_argument("-n", type=int, default=1000, help="messages")
    ap.add_argument("-s", type=int, default=1024, help="bytes per message")
    ap.add_argument("-c", type=int, default=10, help="concurrent sessions")
    ap.add_argument("--rcpt", default="bench@localhost")
    ap.add_argument("--maildir", help="wait for delivery into this Maildir")
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()
    run = f"{os.getpid()}.{time.time():.0f}"
    before = set(listdir(os.path.join(args.maildir, "new"))) if args.maildir else set()
    start, end, accepted, failed = asyncio.run(
        load(args.host, args.port, args.n, args.s, args.c, args.rcpt, run))
    result = {"messages": args.n, "size": args.s, "sessions": args.c, "accepted": len(accepted),
              "failed": len(failed), "accept_seconds": round(end - start, 3),
              "accept_rate": round(len(accepted) / (end - start), 1)}
    if args.maildir:
        delivered = wait_delivered(args.maildir, set(accepted), run, args.timeout, before)
        lat = [(delivered[i] - accepted[i]) * 1000 for i in delivered if i in accepted]
        last = max(delivered.values(), default=end)
        result.update({"delivered": len(delivered),
                       "end_to_end_rate": round(len(delivered) / max(1e-9, last - start), 1),
                       "latency_ms_p50": round(percentile(lat, 50), 1),
                       "latency_ms_p90": round(percentile(lat, 90), 1),
                       "latency_ms_p99": round(percentile(lat, 99), 1)})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
