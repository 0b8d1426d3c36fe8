"""One session, many subscribers: time from publish to the last subscriber's receipt.

For each N (default 10, 100, 1,000, 10,000), each transport (SSE, then WS) and each path — the
floor first (``bench/fanout_floor.py``: a bare aiohttp server writing one pre-framed event to every
subscriber's transport, nothing else), then the gateway with the instant engine
(``bench/gateway.py``) — a fresh server (so that RSS per subscriber is not blurred by heap an
earlier stage freed), one session, N subscribers spread over ``--processes`` subscriber processes,
then a producer sending one ``--chunk-ms`` chunk per chunk period at real-time pace for
``--seconds``. The instant engine publishes one interim per chunk at once, so a chunk's send is its
publish (plus a loopback hop, which the N = 10 row shows). The subscribers are bare sockets that
scan the byte stream for each result's audio end (see ``_Subscriber``): a parsing client would
spend more CPU than the server it measures. Per event: the receipt time at the first and at the
last subscriber holding it; with ``redis2`` the subscribers connect to the one port and the kernel
spreads them over two gateway processes sharing the session on Redis (the producer's process owns
it, the other follows its stream); ``perf_counter`` is CLOCK_MONOTONIC, one clock across processes.
Printed: p50/p95 of publish → last receipt, events delivered per second over all subscribers,
subscribers cut off as too slow, server RSS per subscriber (RSS with N connected minus before, / N,
over every server process), and the server's and the subscribers' CPU.

The open-file limit is raised to its hard limit in every process (10,000 subscribers are
10,000 sockets on each side).

Run: ``.venv/bin/python bench/fanout.py [--subscribers 10,100,1000,10000] [--seconds 10]
[--paths floor,gateway,redis2]``
Prints a table and one JSON line. No assertions: numbers only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import re
import resource
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    cpu_s,
    free_port,
    raise_fd_limit,
    rss_mb,
    start_gateway,
    start_gateways,
    start_redis,
    start_server,
    stop,
)

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

    def record(self, end_s: float, now: float, seen: int) -> int:
        """Count one subscriber's receipt of the result ending at ``end_s`` (s of audio);
        ``seen`` is the newest chunk index it had (a later result for the same chunk, e.g. the
        final a close flushes, is not a second receipt). Returns the new ``seen``."""
        i = round(end_s / self.chunk_s) - 1
        if seen < i < len(self.count):
            self.count[i] += 1
            self.first[i] = min(self.first[i], now)
            self.last[i] = max(self.last[i], now)
            return i
        return seen


# A result's audio end in the event JSON; the events end with "}}" (envelope and data).
_END = re.compile(rb'"end":([0-9.]+)')
_WS_KEY = base64.b64encode(b"stt-gw-bench-key").decode()  # 16 bytes (RFC 6455 §4.1)


class _Subscriber(asyncio.Protocol):
    """One subscriber on a bare socket: the request written by hand, the stream scanned for
    each result's ``"end"`` (no HTTP, SSE or WebSocket parsing). At 100,000 events/s a
    parsing client (aiohttp's reader, ``json.loads`` per event) takes more of this 2-core box
    than the gateway does, and its own lag would be measured as the gateway's. WebSocket frames
    from a server are unmasked, so the event JSON is plain in the byte stream too."""

    def __init__(self, request: bytes, out: Receipts, done: asyncio.Future[None]) -> None:
        self._request = request
        self._out = out
        self._done = done
        self._tail = b""
        self._seen = -1
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        buf = self._tail + data if self._tail else data
        cut = buf.rfind(b"}}") + 2  # up to the end of the last whole event
        self._tail = buf[cut:] if cut > 1 else buf
        if cut < 2:
            return
        region = buf[:cut]
        for match in _END.finditer(region):
            self._seen = self._out.record(float(match[1]), now, self._seen)
        if b'"slow_consumer"' in region:
            self._out.cut += 1
        if b'"session_end"' in region and self._transport is not None:
            self._transport.close()  # an SSE response ends but its connection stays open

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._done.set_result(None)


def _request(transport: str, url: str) -> tuple[str, int, bytes]:
    """Host, port and the GET that opens an SSE stream or a WebSocket at ``url``."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = f"GET {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    if transport == "sse":
        head += "Accept: text/event-stream\r\n"
    else:
        head += (
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {_WS_KEY}\r\nSec-WebSocket-Version: 13\r\n"
        )
    return host, port, (head + "\r\n").encode()


async def _follow(
    host: str, port: int, request: bytes, out: Receipts, gate: asyncio.Semaphore
) -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    async with gate:  # connects in waves: the gateway's listen backlog is finite
        transport, _ = await asyncio.wait_for(
            loop.create_connection(lambda: _Subscriber(request, out, done), host, port),
            CONNECT_TIMEOUT_S,
        )
    try:
        await done
    finally:
        transport.close()


async def _subscribe(transport: str, url: str, n: int, chunks: int, chunk_s: float) -> Receipts:
    """Open ``n`` subscribers and read until the session ends (its ``session_end`` ends every
    stream) or ``READ_TIMEOUT_S`` passes."""
    out = Receipts(chunks, chunk_s)
    host, port, request = _request(transport, url)
    gate = asyncio.Semaphore(500)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    tasks = [asyncio.create_task(_follow(host, port, request, out, gate)) for _ in range(n)]
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


def _rss_mb(pids: list[int]) -> float:
    return sum(rss_mb(pid) for pid in pids)


def _cpu_s(pids: list[int]) -> float:
    return sum(cpu_s(pid) for pid in pids)


async def _stage(
    base: str, transport: str, n: int, args: argparse.Namespace, pids: list[int]
) -> dict[str, Any]:
    chunk_s = args.chunk_ms / 1000
    chunks = int(args.seconds / chunk_s)
    ctx = multiprocessing.get_context("spawn")
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/sessions", json={"config": {}}) as resp:
            session = await resp.json()
        url = session["stream_url"] if transport == "sse" else session["ws_url"]
        info_url = f"{base}/sessions/{session['session_id']}"
        rss_before = _rss_mb(pids)
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
        rss_connected = _rss_mb(pids)
        t0 = time.perf_counter()
        cpu0 = _cpu_s(pids)
        sent_at = await _produce(http, session["audio_url"], chunks, chunk_s)
        rss_end = _rss_mb(pids)
        async with http.delete(info_url):
            pass
        parts: list[Receipts] = [
            await asyncio.get_running_loop().run_in_executor(None, pipe.recv) for pipe in pipes
        ]
        wall = time.perf_counter() - t0
        server_cpu = (_cpu_s(pids) - cpu0) / wall
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
        "server_cpu": server_cpu,
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
    parser.add_argument(
        "--paths",
        default="floor,gateway,redis2",
        help="comma-separated: floor, gateway (one process), redis2 (two gateway processes "
        "on one port sharing the session on a local redis-server)",
    )
    args = parser.parse_args()
    raise_fd_limit()
    rows = []
    paths = args.paths.split(",")
    redis_server, redis_url = start_redis() if "redis2" in paths else (None, "")
    print(
        f"one session, {1000 / args.chunk_ms:g} events/s for {args.seconds:g} s; "
        f"{os.cpu_count()} cores; {args.processes} subscriber processes; gateway loop: "
        f"{'uvloop' if args.uvloop else 'asyncio'}; open-file limit {raise_fd_limit()}"
    )
    print(
        f"{'path':>7} {'sub':>4} {'N':>6} {'to all':>6} {'first p50':>9} {'last p50':>9} "
        f"{'last p95':>9} {'events/s':>9} {'cut':>5} {'connect s':>9} {'KB/sub':>7} "
        f"{'srv CPU':>7} {'sub CPU':>7}"
    )
    for transport in args.transports.split(","):
        for n in (int(x) for x in args.subscribers.split(",")):
            for path in paths:
                port = free_port()
                env = {
                    "STT_GATEWAY_ENGINE_PROCESSES": "1",
                    "STT_GATEWAY_MAX_SUBSCRIBERS": str(n + 10),  # above the default
                    # The subscribers answer no pings: none during a stage.
                    "STT_GATEWAY_WS_PING_S": "3600",
                }
                if path == "floor":
                    servers = [start_server("fanout_floor.py", port)]
                elif path == "redis2":
                    servers = start_gateways(port, env, 2, redis_url)
                else:
                    servers = [start_gateway(port, env, uvloop=args.uvloop)]
                try:
                    r = asyncio.run(
                        _stage(
                            f"http://127.0.0.1:{port}",
                            transport,
                            n,
                            args,
                            [server.pid for server in servers],
                        )
                    )
                finally:
                    for server in servers:
                        stop(server)
                r["path"] = path
                rows.append(r)
                print(
                    f"{path:>7} {r['transport']:>4} {n:>6} {r['events_to_all']:>6} "
                    f"{r['first_p50_ms']:>9.2f} {r['last_p50_ms']:>9.2f} "
                    f"{r['last_p95_ms']:>9.2f} {r['delivered_per_s']:>9.0f} "
                    f"{r['cut'] + r['failed']:>5} {r['connect_s']:>9.1f} "
                    f"{r['rss_kb_per_subscriber']:>7.1f} {r['server_cpu']:>6.0%} "
                    f"{r['subscriber_cpu']:>6.0%}",
                    flush=True,
                )
    if redis_server is not None:
        stop(redis_server)
    print(json.dumps({"bench": "fanout", "chunk_ms": args.chunk_ms, "rows": rows}))


if __name__ == "__main__":
    main()
