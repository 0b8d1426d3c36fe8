"""One session, many subscribers: time from publish to the last subscriber's receipt.

For each N (default 10, 100, 1,000, 10,000) and each transport (SSE, then WS): a fresh gateway
with the instant engine (``bench/gateway.py``; fresh, so that RSS per subscriber is not blurred
by heap an earlier stage freed), one session, N subscribers spread over
``--processes`` subscriber processes, then a producer sending one ``--chunk-ms`` chunk per
chunk period at real-time pace for ``--seconds``. The instant engine publishes one interim per
chunk at once, so a chunk's send is its publish (plus a loopback hop, which the N = 10 row
shows). Per event: the receipt time at the first and at the last subscriber holding it;
``perf_counter`` is CLOCK_MONOTONIC, one clock across processes. Printed: p50/p95 of
publish → last receipt, events delivered per second over all subscribers, subscribers cut off
as too slow, and gateway RSS per subscriber (RSS with N connected minus before, / N).

The open-file limit is raised to its hard limit in every process (10,000 subscribers are
10,000 sockets on each side).

Run: ``.venv/bin/python bench/fanout.py [--subscribers 10,100,1000,10000] [--seconds 10]``
Prints a table and one JSON line. No assertions: numbers only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import free_port, raise_fd_limit, rss_mb, start_gateway, stop  # noqa: E402

RATE = 16_000
CONNECT_TIMEOUT_S = 120.0
READ_TIMEOUT_S = 240.0


class Receipts:
    """Per chunk index: how many subscribers got its event, first and last receipt time."""

    def __init__(self, chunks: int, chunk_s: float) -> None:
        self.chunk_s = chunk_s
        self.count = np.zeros(chunks, dtype=np.int64)
        self.first = np.full(chunks, np.inf)
        self.last = np.full(chunks, -np.inf)
        self.cut = 0  # subscribers told they were cut off (slow_consumer)
        self.failed = 0  # subscriber connections that failed
        self.cpu_s = 0.0

    def record(self, event: bytes | str, now: float, seen: int) -> int:
        """Count one subscriber's receipt of ``event``; ``seen`` is the newest chunk index it
        had (a later result for the same chunk, e.g. the final a close flushes, is not a
        second receipt). Returns the new ``seen``."""
        parsed = json.loads(event)
        if parsed.get("event_type") == "error":
            self.cut += 1
            return seen
        if parsed.get("event_type") not in ("token", "final"):
            return seen
        i: int = round(parsed["data"]["end"] / self.chunk_s) - 1
        if seen < i < len(self.count):
            self.count[i] += 1
            self.first[i] = min(self.first[i], now)
            self.last[i] = max(self.last[i], now)
            return i
        return seen


async def _sse(http: aiohttp.ClientSession, url: str, out: Receipts) -> None:
    seen = -1
    async with http.get(url) as resp:
        async for line in resp.content:
            if line.startswith(b"data:"):
                seen = out.record(line[5:], time.perf_counter(), seen)


async def _ws(http: aiohttp.ClientSession, url: str, out: Receipts) -> None:
    seen = -1
    async with http.ws_connect(url) as ws:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                seen = out.record(msg.data, time.perf_counter(), seen)


async def _subscribe(transport: str, url: str, n: int, chunks: int, chunk_s: float) -> Receipts:
    """Open ``n`` subscribers and read until the session ends (its ``session_end`` ends every
    stream) or ``READ_TIMEOUT_S`` passes."""
    out = Receipts(chunks, chunk_s)
    connector = aiohttp.TCPConnector(limit=0)  # no pool cap: every subscriber is a connection
    timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_S)
    follow = _sse if transport == "sse" else _ws
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        tasks = [asyncio.create_task(follow(http, url, out)) for _ in range(n)]
        _, pending = await asyncio.wait(tasks, timeout=READ_TIMEOUT_S)
        for task in pending:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        out.failed = sum(isinstance(r, Exception) for r in results)
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    out.cpu_s = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    return out


def _subscriber_main(
    transport: str, url: str, n: int, chunks: int, chunk_s: float, out: Connection
) -> None:
    raise_fd_limit()
    out.send(asyncio.run(_subscribe(transport, url, n, chunks, chunk_s)))
    out.close()


async def _wait_subscribed(http: aiohttp.ClientSession, info_url: str, n: int) -> None:
    """Until the session counts ``n`` subscribers. Raises RuntimeError after the timeout."""
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while time.monotonic() < deadline:
        async with http.get(info_url) as resp:
            if (await resp.json())["subscribers"] >= n:
                return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{n} subscribers did not connect in {CONNECT_TIMEOUT_S:g} s")


async def _produce(
    http: aiohttp.ClientSession, audio_url: str, chunks: int, chunk_s: float
) -> np.ndarray:
    """POST ``chunks`` chunks of silence at real-time pace (the producer is no subscriber);
    the send time of each."""
    chunk = bytes(int(RATE * chunk_s) * 2)
    headers = {"Content-Type": "application/octet-stream"}
    sent_at = np.full(chunks, np.nan)
    start = time.perf_counter()
    for i in range(chunks):
        await asyncio.sleep(max(0.0, start + i * chunk_s - time.perf_counter()))
        sent_at[i] = time.perf_counter()
        async with http.post(audio_url, data=chunk, headers=headers) as resp:
            if resp.status != 202:
                raise RuntimeError(f"POST audio: {resp.status} {await resp.text()}")
    return sent_at


async def _stage(
    base: str, transport: str, n: int, args: argparse.Namespace, pid: int
) -> dict[str, Any]:
    chunk_s = args.chunk_ms / 1000
    chunks = int(args.seconds / chunk_s)
    ctx = multiprocessing.get_context("spawn")
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/sessions", json={"config": {}}) as resp:
            session = await resp.json()
        url = session["stream_url"] if transport == "sse" else session["ws_url"]
        info_url = f"{base}/sessions/{session['session_id']}"
        rss_before = rss_mb(pid)
        procs, pipes = [], []
        k = max(1, min(args.processes, n))
        for p in range(k):
            share = n // k + (1 if p < n % k else 0)
            receive, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=_subscriber_main, args=(transport, url, share, chunks, chunk_s, send)
            )
            proc.start()
            procs.append(proc)
            pipes.append(receive)
        t_connect = time.perf_counter()
        await _wait_subscribed(http, info_url, n)
        connect_s = time.perf_counter() - t_connect
        rss_connected = rss_mb(pid)
        t0 = time.perf_counter()
        sent_at = await _produce(http, session["audio_url"], chunks, chunk_s)
        rss_end = rss_mb(pid)
        async with http.delete(info_url):
            pass
        parts: list[Receipts] = [
            await asyncio.get_running_loop().run_in_executor(None, pipe.recv) for pipe in pipes
        ]
        wall = time.perf_counter() - t0
        for proc in procs:
            proc.join(10)
    count = np.sum([r.count for r in parts], axis=0)
    last = np.max([r.last for r in parts], axis=0)
    first = np.min([r.first for r in parts], axis=0)
    full = count == n  # events every subscriber got (the others' last receipt is unknown)
    to_last = (last[full] - sent_at[full]) * 1000
    to_first = (first[count > 0] - sent_at[count > 0]) * 1000
    return {
        "transport": transport,
        "subscribers": n,
        "events": chunks,
        "events_to_all": int(full.sum()),
        "first_p50_ms": float(np.percentile(to_first, 50)) if len(to_first) else float("nan"),
        "last_p50_ms": float(np.percentile(to_last, 50)) if len(to_last) else float("nan"),
        "last_p95_ms": float(np.percentile(to_last, 95)) if len(to_last) else float("nan"),
        # Over the span from the first publish to the last receipt anywhere.
        "delivered_per_s": float(count.sum()) / (np.max(last) - sent_at[0]),
        "cut": sum(r.cut for r in parts),
        "failed": sum(r.failed for r in parts),
        "connect_s": connect_s,
        "rss_kb_per_subscriber": (rss_connected - rss_before) * 1024 / n,
        "rss_mb_end": rss_end,
        "subscriber_cpu": sum(r.cpu_s for r in parts) / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", default="10,100,1000,10000", help="comma-separated")
    parser.add_argument("--transports", default="sse,ws", help="comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio per stage")
    parser.add_argument("--chunk-ms", type=float, default=100.0, help="one event per chunk")
    parser.add_argument("--processes", type=int, default=2, help="subscriber processes")
    parser.add_argument("--uvloop", action="store_true", help="gateway on uvloop")
    args = parser.parse_args()
    raise_fd_limit()
    rows = []
    print(
        f"one session, {1000 / args.chunk_ms:g} events/s for {args.seconds:g} s; "
        f"{os.cpu_count()} cores; {args.processes} subscriber processes; gateway loop: "
        f"{'uvloop' if args.uvloop else 'asyncio'}; open-file limit {raise_fd_limit()}"
    )
    print(
        f"{'sub':>4} {'N':>6} {'to all':>6} {'first p50':>9} {'last p50':>9} {'last p95':>9} "
        f"{'events/s':>9} {'cut':>5} {'connect s':>9} {'KB/sub':>7} {'sub CPU':>7}"
    )
    for transport in args.transports.split(","):
        for n in (int(x) for x in args.subscribers.split(",")):
            port = free_port()
            env = {
                "STT_GATEWAY_ENGINE_PROCESSES": "1",
                "STT_GATEWAY_MAX_SUBSCRIBERS": str(n + 10),  # above the default per session
            }
            gateway = start_gateway(port, env, uvloop=args.uvloop)
            try:
                r = asyncio.run(_stage(f"http://127.0.0.1:{port}", transport, n, args, gateway.pid))
            finally:
                stop(gateway)
            rows.append(r)
            print(
                f"{r['transport']:>4} {n:>6} {r['events_to_all']:>6} "
                f"{r['first_p50_ms']:>9.2f} {r['last_p50_ms']:>9.2f} {r['last_p95_ms']:>9.2f} "
                f"{r['delivered_per_s']:>9.0f} {r['cut'] + r['failed']:>5} "
                f"{r['connect_s']:>9.1f} {r['rss_kb_per_subscriber']:>7.1f} "
                f"{r['subscriber_cpu']:>6.0%}",
                flush=True,
            )
    print(json.dumps({"bench": "fanout", "chunk_ms": args.chunk_ms, "rows": rows}))


if __name__ == "__main__":
    main()
