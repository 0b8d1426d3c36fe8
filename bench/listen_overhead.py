"""What Deepgram's front costs: frame → interim latency through ``/v1/listen`` vs ``/sessions``.

One gateway (``bench/gateway.py``, the instant engine: one interim per 20 ms frame, at once, so
what is measured is the gateway) and, in one invocation, ``--sessions`` real-time streams of
``--seconds`` of 20 ms frames down each path, the paths taking turns over ``--rounds`` rounds:

- ``/sessions`` with aiohttp (our own protocol: the floor);
- ``/v1/listen`` with aiohttp (the same client, Deepgram's protocol: the front's own cost);
- ``/v1/listen`` with Deepgram's Python SDK 7.x (``deepgram-sdk``: what an app written for
  Deepgram sees; its client is the ``websockets`` library, and it parses every message into
  its pydantic types).

Latency per interim: the frame whose end the interim reaches (``end``; Deepgram's ``start +
duration``) sent → the interim received. Target (issue 17): the front adds < 0.5 ms p50.
Run: ``.venv/bin/python bench/listen_overhead.py [--sessions 50] [--seconds 10] [--rounds 2]``
(~1.5 min). Numbers only, no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from deepgram import AsyncDeepgramClient
from deepgram.environment import DeepgramClientEnvironment
from deepgram.listen.v1.types import ListenV1Results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import cpu_s, free_port, pct_ms, start_gateway, stop  # noqa: E402

FRAME_S = 0.02
FRAME = bytes(640)
QUERY = "model=nova-3&encoding=linear16&sample_rate=16000&channels=1&interim_results=true"

Send = Callable[[bytes], Awaitable[None]]


async def paced(send: Send, seconds: float, sent_at: list[float]) -> None:
    """``seconds`` of 20 ms frames at real-time pace, each send time recorded."""
    start = time.perf_counter()
    for i in range(int(seconds / FRAME_S)):
        delay = start + i * FRAME_S - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent_at.append(time.perf_counter())
        await send(FRAME)


def latencies(sent_at: list[float], got: list[tuple[float, float]]) -> list[float]:
    """Each interim's latency (s): received − sent of the frame its ``end`` (s) reaches."""
    out = []
    for received, end_s in got:
        frame = round(end_s / FRAME_S) - 1
        if 0 <= frame < len(sent_at):
            out.append(received - sent_at[frame])
    return out


async def sessions_path(base: str, seconds: float, out: list[float]) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/sessions", json={}) as resp:
            created = await resp.json()
        ws = await http.ws_connect(created["ws_url"])
        sent_at: list[float] = []
        got: list[tuple[float, float]] = []  # (received, end s)

        async def receive() -> None:
            async for msg in ws:
                now = time.perf_counter()
                event = json.loads(msg.data)
                if event["event_type"] == "token":
                    got.append((now, event["data"]["end"]))

        reader = asyncio.create_task(receive())
        await paced(ws.send_bytes, seconds, sent_at)
        await ws.send_json({"type": "close"})
        await reader
        out += latencies(sent_at, got)


async def listen_path(base: str, seconds: float, out: list[float]) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(base.replace("http://", "ws://") + "/v1/listen?" + QUERY)
        sent_at: list[float] = []
        got: list[tuple[float, float]] = []  # (received, end s)

        async def receive() -> None:
            async for msg in ws:
                now = time.perf_counter()
                m = json.loads(msg.data)
                if m["type"] == "Results" and not m["is_final"]:
                    got.append((now, m["start"] + m["duration"]))

        reader = asyncio.create_task(receive())
        await paced(ws.send_bytes, seconds, sent_at)
        await ws.send_str('{"type": "CloseStream"}')
        await reader
        out += latencies(sent_at, got)


async def sdk_path(base: str, seconds: float, out: list[float]) -> None:
    ws_base = base.replace("http://", "ws://")
    env = DeepgramClientEnvironment(base=base, production=ws_base, agent=ws_base, agent_rest=base)
    client = AsyncDeepgramClient(api_key="bench", environment=env)
    async with client.listen.v1.connect(
        model="nova-3",
        encoding="linear16",
        sample_rate="16000",
        channels="1",
        interim_results="true",
    ) as socket:
        sent_at: list[float] = []
        got: list[tuple[float, float]] = []  # (received, end s)

        async def receive() -> None:
            async for m in socket:
                now = time.perf_counter()
                if isinstance(m, ListenV1Results) and not m.is_final:
                    got.append((now, m.start + m.duration))

        reader = asyncio.create_task(receive())
        await paced(socket.send_media, seconds, sent_at)
        await socket.send_close_stream()
        await reader
        out += latencies(sent_at, got)


PATHS: dict[str, Callable[[str, float, list[float]], Awaitable[None]]] = {
    "/sessions (aiohttp)": sessions_path,
    "/v1/listen (aiohttp)": listen_path,
    "/v1/listen (deepgram-sdk)": sdk_path,
}


async def run(path: str, base: str, sessions: int, seconds: float) -> list[float]:
    out: list[float] = []
    job = PATHS[path]
    # Sessions start spread over one frame period, as real clients' frames are.
    await asyncio.gather(
        *(stagger(i * FRAME_S / sessions, job, base, seconds, out) for i in range(sessions))
    )
    return out


async def stagger(delay: float, job: Any, base: str, seconds: float, out: list[float]) -> None:
    await asyncio.sleep(delay)
    await job(base, seconds, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    gateway = start_gateway(port, {"STT_GATEWAY_MAX_SESSIONS": str(args.sessions * 2 + 10)})
    latencies: dict[str, list[float]] = {p: [] for p in PATHS}
    cpu: dict[str, float] = dict.fromkeys(PATHS, 0.0)
    try:
        for round_ in range(args.rounds):
            order = list(PATHS) if round_ % 2 == 0 else list(reversed(PATHS))
            for path in order:
                cpu0, wall0 = cpu_s(gateway.pid), time.perf_counter()
                latencies[path] += asyncio.run(run(path, base, args.sessions, args.seconds))
                cpu[path] += (cpu_s(gateway.pid) - cpu0) / (time.perf_counter() - wall0)
    finally:
        stop(gateway)
    print(
        f"{args.sessions} sessions x {args.seconds:g} s of 20 ms frames at real time, "
        f"{args.rounds} rounds; instant engine; {os.cpu_count()} cores"
    )
    print(f"{'path':<27} {'interims':>8} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'gw CPU':>7}")
    rows = {}
    for path, xs in latencies.items():
        rows[path] = {
            "interims": len(xs),
            "p50_ms": pct_ms(xs, 50),
            "p95_ms": pct_ms(xs, 95),
            "p99_ms": pct_ms(xs, 99),
            "gateway_cpu": cpu[path] / args.rounds,
        }
        r = rows[path]
        print(
            f"{path:<27} {r['interims']:>8} {r['p50_ms']:>7.2f} {r['p95_ms']:>7.2f} "
            f"{r['p99_ms']:>7.2f} {r['gateway_cpu']:>6.0%}"
        )
    floor = rows["/sessions (aiohttp)"]["p50_ms"]
    front = rows["/v1/listen (aiohttp)"]["p50_ms"] - floor
    sdk = rows["/v1/listen (deepgram-sdk)"]["p50_ms"] - floor
    print(f"front adds p50 {front:+.2f} ms (target < 0.5); with the SDK's client {sdk:+.2f} ms")
    print(json.dumps({"rows": rows, "front_added_p50_ms": front, "sdk_added_p50_ms": sdk}))


if __name__ == "__main__":
    main()
