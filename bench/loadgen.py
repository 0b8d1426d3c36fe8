"""A real-time load generator in separate processes, and the bare aiohttp WS echo (the floor).

:func:`run_load` splits ``sessions`` over ``processes`` spawned generator processes. Each one
opens its sessions (``POST /sessions`` then the session's WebSocket, and an SSE stream when
asked), waits for the others at a barrier, then sends 20 ms PCM16 frames at real-time pace on
an absolute schedule. Sessions are spread evenly over the 20 ms frame period, as independent
microphones would be, and share one timer per 1 ms slot, so a generator process wakes 1,000
times a second however many sessions it drives.

Latency is taken per received result: from the send of the frame whose end the result's
``data.end`` reaches to its receipt — on the producer's own WebSocket (a WS subscriber) and on
the SSE stream. ``perf_counter`` is CLOCK_MONOTONIC on Linux, one clock for all processes.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import resource
import time
from dataclasses import dataclass, field
from multiprocessing.synchronize import Barrier
from typing import Literal

import aiohttp
import numpy as np
from aiohttp import web

from bench.common import raise_fd_limit

FRAME_S = 0.02
RATE = 16_000
FRAME_BYTES = int(RATE * FRAME_S) * 2
SLOTS = 20  # 1 ms apart within a frame period
DRAIN_S = 1.0  # after the last frame, results still in flight are awaited this long
SETUP_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Load:
    """What one run drives: ``sessions`` sessions of ``seconds`` s of audio each.

    ``target`` is ``gateway`` (``base`` is its http URL; ``engine`` is the session config's
    engine) or ``echo`` (``base`` is the echo server's ws URL; no SSE there).
    """

    target: Literal["gateway", "echo"]
    base: str
    sessions: int
    seconds: float
    sse: bool = False
    engine: str = "local"
    audio: bytes = b""  # looped as the frames' content; silence when empty


@dataclass
class LoadResult:
    """Latencies in ms by subscriber kind, counts, and the generator's own CPU use."""

    latency_ms: dict[str, list[float]] = field(default_factory=lambda: {"ws": [], "sse": []})
    frames_sent: int = 0
    frames_due: int = 0
    send_lag_ms: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    wall_s: float = 0.0
    closed_early: int = 0  # subscriber streams the server ended before the run did

    def merge(self, other: LoadResult) -> None:
        for kind, xs in other.latency_ms.items():
            self.latency_ms[kind].extend(xs)
        self.frames_sent += other.frames_sent
        self.frames_due += other.frames_due
        self.send_lag_ms.extend(other.send_lag_ms)
        self.cpu_s += other.cpu_s
        self.wall_s = max(self.wall_s, other.wall_s)
        self.closed_early += other.closed_early


def pct(xs: list[float], q: float) -> float:
    """The ``q``-th percentile of ``xs`` (nan when empty)."""
    return float(np.percentile(xs, q)) if xs else float("nan")


class _Stream:
    """One session's producer socket and, optionally, its SSE stream, with their readings."""

    def __init__(self, frames: int, slot: int) -> None:
        self.slot = slot
        self.sent_at = np.full(frames, np.nan)
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.sse: aiohttp.ClientResponse | None = None
        self.session_id: str | None = None
        self.closing = False  # set when the run ends: a stream ending after that is expected

    def latency(self, event: bytes | str, now: float, out: list[float]) -> None:
        if self.closing:  # the run is over: what the close flushes is not a frame's result
            return
        parsed = json.loads(event)
        if parsed.get("event_type") not in ("token", "final"):
            return
        frame = round(parsed["data"]["end"] / FRAME_S) - 1
        if 0 <= frame < len(self.sent_at) and not np.isnan(self.sent_at[frame]):
            out.append((now - self.sent_at[frame]) * 1000)


async def _open(
    http: aiohttp.ClientSession, load: Load, stream: _Stream, gate: asyncio.Semaphore
) -> None:
    async with gate:
        if load.target == "echo":
            stream.ws = await http.ws_connect(load.base)
            return
        body = {"config": {"engine": load.engine}}
        async with http.post(f"{load.base}/sessions", json=body) as resp:
            if resp.status != 201:
                raise RuntimeError(f"POST /sessions: {resp.status} {await resp.text()}")
            created = await resp.json()
        stream.session_id = created["session_id"]
        stream.ws = await http.ws_connect(created["ws_url"])
        if load.sse:
            stream.sse = await http.get(created["stream_url"])


async def _read_ws(stream: _Stream, out: list[float], result: LoadResult) -> None:
    assert stream.ws is not None
    async for msg in stream.ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            stream.latency(msg.data, time.perf_counter(), out)
    if not stream.closing:
        result.closed_early += 1


async def _read_sse(stream: _Stream, out: list[float], result: LoadResult) -> None:
    assert stream.sse is not None
    try:
        async for line in stream.sse.content:
            if line.startswith(b"data:"):
                stream.latency(line[5:], time.perf_counter(), out)
    except aiohttp.ClientError:
        pass
    if not stream.closing:
        result.closed_early += 1


async def _send_slot(
    streams: list[_Stream], frames: list[bytes], start: float, result: LoadResult
) -> None:
    """Send every stream of one slot its frames on the real-time schedule from ``start``."""
    lags = result.send_lag_ms
    for i, frame in enumerate(frames):
        due = start + i * FRAME_S
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        lags.append((time.perf_counter() - due) * 1000)
        for stream in streams:
            assert stream.ws is not None
            if stream.ws.closed:
                continue
            stream.sent_at[i] = time.perf_counter()
            await stream.ws.send_bytes(frame)
            result.frames_sent += 1


async def _generate(load: Load, first_index: int, total: int, barrier: Barrier) -> LoadResult:
    result = LoadResult()
    n_frames = int(load.seconds / FRAME_S)
    audio = load.audio or bytes(FRAME_BYTES)
    looped = audio * (n_frames * FRAME_BYTES // len(audio) + 1)
    frames = [looped[i * FRAME_BYTES : (i + 1) * FRAME_BYTES] for i in range(n_frames)]
    streams = [_Stream(n_frames, (first_index + k) * SLOTS // total) for k in range(load.sessions)]
    connector = aiohttp.TCPConnector(limit=0)  # no pool cap: every stream is one connection
    timeout = aiohttp.ClientTimeout(total=None, connect=SETUP_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        gate = asyncio.Semaphore(64)
        await asyncio.gather(*(_open(http, load, s, gate) for s in streams))
        readers = [
            asyncio.create_task(_read_ws(s, result.latency_ms["ws"], result)) for s in streams
        ]
        readers += [
            asyncio.create_task(_read_sse(s, result.latency_ms["sse"], result))
            for s in streams
            if s.sse is not None
        ]
        await asyncio.to_thread(barrier.wait)
        # Every process starts on the same 20 ms boundary of the shared monotonic clock.
        start = (time.perf_counter() // FRAME_S + 10) * FRAME_S
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        slots: dict[int, list[_Stream]] = {}
        for s in streams:
            slots.setdefault(s.slot, []).append(s)
        await asyncio.gather(
            *(
                _send_slot(members, frames, start + slot * FRAME_S / SLOTS, result)
                for slot, members in slots.items()
            )
        )
        await asyncio.sleep(DRAIN_S)
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        result.cpu_s = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
        result.wall_s = time.perf_counter() - start
        result.frames_due = n_frames * len(streams)
        for s in streams:
            s.closing = True
        if load.target == "gateway":
            await asyncio.gather(*(_delete(http, load.base, s, gate) for s in streams))
        for s in streams:
            assert s.ws is not None
            await s.ws.close()
            if s.sse is not None:
                s.sse.close()
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    return result


async def _delete(
    http: aiohttp.ClientSession, base: str, stream: _Stream, gate: asyncio.Semaphore
) -> None:
    async with gate, http.delete(f"{base}/sessions/{stream.session_id}"):
        pass


def _process_main(
    load: Load, first_index: int, total: int, barrier: Barrier, out: multiprocessing.Queue[object]
) -> None:
    raise_fd_limit()
    try:
        out.put(asyncio.run(_generate(load, first_index, total, barrier)))
    except BaseException as exc:
        barrier.abort()
        out.put(RuntimeError(f"load generator failed: {exc!r}"))


def run_load(load: Load, processes: int) -> LoadResult:
    """Drive ``load`` from ``processes`` generator processes; their results merged.

    Raises:
        RuntimeError: a generator process failed (setup refused, a socket error).
    """
    ctx = multiprocessing.get_context("spawn")
    processes = max(1, min(processes, load.sessions))
    barrier = ctx.Barrier(processes)
    out: multiprocessing.Queue[object] = ctx.Queue()
    procs = []
    first = 0
    for p in range(processes):
        share = load.sessions // processes + (1 if p < load.sessions % processes else 0)
        part = Load(**{**load.__dict__, "sessions": share})
        proc = ctx.Process(target=_process_main, args=(part, first, load.sessions, barrier, out))
        proc.start()
        procs.append(proc)
        first += share
    merged = LoadResult()
    failures = []
    for _ in procs:
        got = out.get(timeout=SETUP_TIMEOUT_S + load.seconds + 60)
        if isinstance(got, LoadResult):
            merged.merge(got)
        else:
            failures.append(str(got))
    for proc in procs:
        proc.join(10)
    if failures:
        raise RuntimeError("; ".join(failures))
    return merged


async def _echo(request: web.Request) -> web.WebSocketResponse:
    """Answers each binary frame with a JSON text message the size of a gateway interim."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    received = 0
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.BINARY:
            received += len(msg.data)
            reply = {
                "event_type": "token",
                "seq": received // FRAME_BYTES,
                "session_id": "0" * 32,
                "timestamp": time.time(),
                "data": {"text": "the quick brown fox", "end": received / (RATE * 2)},
            }
            await ws.send_str(json.dumps(reply))
    return ws


def serve_echo(port: int) -> None:
    """Run the bare aiohttp WS echo (the floor) on ``127.0.0.1:port`` until terminated."""
    raise_fd_limit()
    app = web.Application()
    app.router.add_get("/", _echo)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, backlog=4096)
