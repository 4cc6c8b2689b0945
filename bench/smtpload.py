#!/usr/bin/env python3
"""smtpload - send N messages of S bytes over C concurrent SMTP sessions and measure.

    python3 bench/smtpload.py --port 2525 -n 2000 -s 1024 -c 10 [--maildir DIR]

Pure Python (asyncio, no extra dependency).  Each session sends its share of the
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


async def reply(reader: asyncio.StreamReader) -> bytes:
    """Read one (possibly multi-line) reply; return its code."""
    while True:
        line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
        if not line:
            raise ConnectionError("server closed the connection")
        if line[3:4] != b"-":
            return line[:3]


async def session(host: str, port: int, ids: list[int], size: int, rcpt: str, run: str,
                  accepted: dict[int, float], failed: list[int]) -> None:
    """One connection sending ``ids`` in turn; on a dead connection the rest count as failed."""
    try:
        await asyncio.wait_for(transactions(host, port, ids, size, rcpt, run, accepted, failed),
                               READ_TIMEOUT * (len(ids) + 2))
    except (OSError, ConnectionError, asyncio.TimeoutError):
        done = set(accepted) | set(failed)
        failed.extend(i for i in ids if i not in done)


async def transactions(host: str, port: int, ids: list[int], size: int, rcpt: str, run: str,
                       accepted: dict[int, float], failed: list[int]) -> None:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), READ_TIMEOUT)
    try:
        if await reply(reader) != b"220":
            raise ConnectionError("no greeting")
        writer.write(b"HELO bench.localhost\r\n")
        await reply(reader)
        for i in ids:
            writer.write(b"MAIL FROM:<bench@localhost>\r\n")
            if await reply(reader) != b"250":
                failed.append(i)
                continue
            writer.write(f"RCPT TO:<{rcpt}>\r\n".encode())
            if await reply(reader) != b"250":
                failed.append(i)
                writer.write(b"RSET\r\n")
                await reply(reader)
                continue
            writer.write(b"DATA\r\n")
            if await reply(reader) != b"354":
                failed.append(i)
                continue
            writer.write(message(i, size, run) + b".\r\n")
            code = await reply(reader)
            if code == b"250":
                accepted[i] = time.time()
            else:
                failed.append(i)
        writer.write(b"QUIT\r\n")
        await writer.drain()
        try:
            await asyncio.wait_for(reply(reader), 5)
        except (asyncio.TimeoutError, ConnectionError):
            pass
    finally:
        writer.close()


async def load(host: str, port: int, n: int, size: int, c: int, rcpt: str, run: str):
    accepted: dict[int, float] = {}
    failed: list[int] = []
    shares = [list(range(k, n, c)) for k in range(c)]
    start = time.time()
    await asyncio.gather(*(session(host, port, ids, size, rcpt, run, accepted, failed)
                           for ids in shares if ids))
    return start, time.time(), accepted, failed


def wait_delivered(maildir: str, want: set[int], run: str, timeout: float) -> dict[int, float]:
    """Poll maildir/new until every id in ``want`` of this run is there; id → ctime."""
    seen: dict[int, float] = {}
    names: set[str] = set()
    deadline = time.time() + timeout
    new = os.path.join(maildir, "new")
    tag = f"X-Bench-Run: {run}".encode()
    while time.time() < deadline and not want <= set(seen):
        for entry in os.scandir(new):
            if entry.name in names:
                continue
            names.add(entry.name)
            with open(entry.path, "rb") as f:
                head = f.read(4096)
            m = ID.search(head)
            if m and tag in head:
                seen[int(m.group(1))] = entry.stat().st_ctime
        time.sleep(0.01)
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
    start, end, accepted, failed = asyncio.run(
        load(args.host, args.port, args.n, args.s, args.c, args.rcpt, run))
    result = {"messages": args.n, "size": args.s, "sessions": args.c, "accepted": len(accepted),
              "failed": len(failed), "accept_seconds": round(end - start, 3),
              "accept_rate": round(len(accepted) / (end - start), 1)}
    if args.maildir:
        delivered = wait_delivered(args.maildir, set(accepted), run, args.timeout)
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
