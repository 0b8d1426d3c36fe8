"""Gateway-added latency on the Deepgram path, against the local fake answering instantly.

Three processes on loopback: the fake Deepgram (tests/fakes/deepgram.py, one interim per 20 ms
of audio), the gateway (``stt-gateway`` with ``DEEPGRAM_URL`` pointing at the fake), and this
load generator. N sessions stream a shared WAV in 20 ms frames at real-time pace. Latency is
taken per interim: the time from sending the frame whose end the interim reaches (its
``end``) to receiving the interim. The same load is then run straight against the fake; the
difference of the two is what the gateway adds.

Run: ``.venv/bin/python bench/deepgram_overhead.py [--sessions 100] [--seconds 10]``
Prints a table and one JSON line. No assertions: numbers only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import cpu_s, free_port, pct_ms, wait_up  # noqa: E402
from tests.audio_files import clip  # noqa: E402
from tests.fakes.deepgram import FakeDeepgram  # noqa: E402

KEY = "bench-key"
FRAME_S = 0.02
RATE = 16_000
FRAME_BYTES = int(RATE * FRAME_S) * 2
CLIP = clip("librivox-sns-0870")


def serve_fake(port: int) -> None:
    fake = FakeDeepgram(api_keys=frozenset({KEY}), interim_interval_ms=20, inactivity_timeout_s=60)
    fake.add_clip(CLIP.pcm, CLIP.reference)
    web.run_app(fake.app(), host="127.0.0.1", port=port, print=None, access_log=None)


async def one_stream(
    ws: aiohttp.ClientWebSocketResponse, seconds: float, parse: str, latencies: list[float]
) -> None:
    """Send ``seconds`` of audio at real-time pace; time each interim from its frame's send."""
    n = int(seconds / FRAME_S)
    audio = (CLIP.pcm * (int(seconds / CLIP.seconds) + 1))[: n * FRAME_BYTES]
    sent_at: list[float] = []

    async def receive() -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            now = time.perf_counter()
            event = json.loads(msg.data)
            if parse == "gateway":
                if event.get("event_type") != "token":
                    continue
                end = event["data"]["end"]
            else:
                if event.get("type") != "Results" or event.get("is_final"):
                    continue
                if not event["channel"]["alternatives"][0]["transcript"]:
                    continue  # the gateway passes no empty interims on: compare like with like
                end = event["start"] + event["duration"]
            frame = round(end / FRAME_S) - 1
            if 0 <= frame < len(sent_at):
                latencies.append(now - sent_at[frame])

    reader = asyncio.create_task(receive())
    start = time.perf_counter()
    for i in range(n):
        delay = start + i * FRAME_S - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent_at.append(time.perf_counter())
        await ws.send_bytes(audio[i * FRAME_BYTES : (i + 1) * FRAME_BYTES])
    await asyncio.sleep(0.3)  # the last interims
    await ws.close()
    reader.cancel()


async def via_gateway(base: str, sessions: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    async with aiohttp.ClientSession() as http:

        async def run() -> None:
            async with http.post(f"{base}/sessions", json={"config": {"engine": "deepgram"}}) as r:
                created = await r.json()
            ws = await http.ws_connect(created["ws_url"])
            await one_stream(ws, seconds, "gateway", latencies)
            async with http.delete(f"{base}/sessions/{created['session_id']}"):
                pass

        await asyncio.gather(*(run() for _ in range(sessions)))
    return latencies


async def direct(fake_url: str, sessions: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    query = (
        "model=nova-3&language=ko&encoding=linear16&sample_rate=16000&channels=1"
        "&interim_results=true&vad_events=true&endpointing=300"
    )
    async with aiohttp.ClientSession() as http:

        async def run() -> None:
            ws = await http.ws_connect(
                f"{fake_url}/v1/listen?{query}", headers={"Authorization": f"Token {KEY}"}
            )
            await one_stream(ws, seconds, "deepgram", latencies)

        await asyncio.gather(*(run() for _ in range(sessions)))
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    fake_port, gw_port = free_port(), free_port()
    fake = multiprocessing.get_context("spawn").Process(
        target=serve_fake, args=(fake_port,), daemon=True
    )
    fake.start()
    env = os.environ | {
        "DEEPGRAM_API_KEY": KEY,
        "DEEPGRAM_URL": f"ws://127.0.0.1:{fake_port}",
        "STT_GATEWAY_LOG_LEVEL": "WARNING",
    }
    gateway = subprocess.Popen(
        [sys.executable, "-m", "stt_gateway", "--port", str(gw_port)], env=env, cwd=ROOT
    )
    try:
        asyncio.run(wait_up(f"http://127.0.0.1:{fake_port}/v1/listen"))
        asyncio.run(wait_up(f"http://127.0.0.1:{gw_port}/health"))
        rows: list[dict[str, Any]] = []
        jobs: tuple[tuple[str, Callable[[], Coroutine[Any, Any, list[float]]]], ...] = (
            (
                "direct to fake",
                lambda: direct(f"ws://127.0.0.1:{fake_port}", args.sessions, args.seconds),
            ),
            (
                "through gateway",
                lambda: via_gateway(f"http://127.0.0.1:{gw_port}", args.sessions, args.seconds),
            ),
        )
        for name, job in jobs:
            cpu0, gw0 = resource.getrusage(resource.RUSAGE_SELF), cpu_s(gateway.pid)
            wall0 = time.perf_counter()
            lat = asyncio.run(job())
            wall = time.perf_counter() - wall0
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            load_cpu = (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / wall
            rows.append(
                {
                    "path": name,
                    "n": len(lat),
                    "p50_ms": pct_ms(lat, 50),
                    "p95_ms": pct_ms(lat, 95),
                    "p99_ms": pct_ms(lat, 99),
                    "loadgen_cpu": load_cpu,
                    "gateway_cpu": (cpu_s(gateway.pid) - gw0) / wall,
                }
            )
    finally:
        gateway.terminate()
        gateway.wait(10)
        fake.terminate()
    print(
        f"{args.sessions} sessions × {args.seconds:g} s of 20 ms frames at real-time pace; "
        f"{os.cpu_count()} cores"
    )
    print(
        f"{'path':<16} {'interims':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
        f"{'loadgen CPU':>11} {'gateway CPU':>11}"
    )
    for r in rows:
        print(
            f"{r['path']:<16} {r['n']:>8} {r['p50_ms']:>8.2f} {r['p95_ms']:>8.2f} "
            f"{r['p99_ms']:>8.2f} {r['loadgen_cpu']:>10.0%} {r['gateway_cpu']:>10.0%}"
        )
    added = {f"added_{k}": rows[1][k] - rows[0][k] for k in ("p50_ms", "p95_ms", "p99_ms")}
    print(f"gateway added: p50 {added['added_p50_ms']:.2f} ms, p95 {added['added_p95_ms']:.2f} ms")
    print(
        json.dumps(
            {
                "bench": "deepgram_overhead",
                "sessions": args.sessions,
                "seconds": args.seconds,
                "rows": rows,
            }
            | added
        )
    )


if __name__ == "__main__":
    main()
