"""Soak: one long session with subscribers; the replay ring stays at its bound, RSS flat.

Starts the gateway (``bench/gateway.py``: the instant engine by default, one interim per 20 ms
frame; ``--engine local`` for the embedded one), streams a shared WAV looped to ``--minutes``
of audio over one WebSocket at ``--speed`` × real time in 20 ms frames, with ``--subscribers``
subscribers reading along (half SSE, half WS), and prints a series every ``--every`` s: audio
fed, events published, events and bytes in the ring, gateway RSS. Flat is the goal.

Run: ``.venv/bin/python bench/soak.py [--minutes 60] [--speed 15] [--subscribers 10]``
Numbers only, no assertions. (The local engine decodes at ~7× real time on one core: give it
``--speed 5`` or less.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import free_port, rss_mb, start_gateway, stop  # noqa: E402
from tests.audio_files import clip  # noqa: E402

FRAME_BYTES = 640  # 20 ms at 16 kHz
BYTES_PER_S = 32_000
CLIP = clip("librivox-sns-0870")


async def drain_sse(http: aiohttp.ClientSession, url: str) -> None:
    async with http.get(url) as resp:
        async for _ in resp.content:
            pass


async def drain_ws(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for _ in ws:
        pass


async def run(base: str, pid: int, args: argparse.Namespace) -> list[dict[str, float]]:
    series: list[dict[str, float]] = []
    # No total time limit: a long session outlives aiohttp's 5-minute default.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http:
        async with http.post(f"{base}/sessions", json={"config": {}}) as resp:
            session = await resp.json()
        sid = session["session_id"]
        sse = [drain_sse(http, session["stream_url"]) for _ in range(args.subscribers // 2)]
        ws_subs = [
            drain_ws(await http.ws_connect(session["ws_url"]))
            for _ in range(args.subscribers - len(sse))
        ]
        readers = [asyncio.create_task(c) for c in (*sse, *ws_subs)]
        # The producer's socket reads only what comes after it joined (it is a subscriber too).
        ws = await http.ws_connect(session["ws_url"] + "?since=999999999")
        sink = asyncio.create_task(drain_ws(ws))
        total = int(args.minutes * 60 * BYTES_PER_S)
        start = time.monotonic()

        async def report() -> None:
            async with http.get(f"{base}/sessions/{sid}") as resp:
                info = await resp.json()
            row = {
                "t_s": round(time.monotonic() - start, 1),
                "audio_min": round(info["audio_seconds"] / 60, 2),
                "last_seq": info["last_seq"],
                "ring_events": info["replay_events"],
                "ring_kb": round(info["replay_bytes"] / 1024, 1),
                "subscribers": info["subscribers"],
                "rss_mb": round(rss_mb(pid), 1),
            }
            series.append(row)
            print(
                f"{row['t_s']:>7} {row['audio_min']:>9} {row['last_seq']:>8} "
                f"{row['ring_events']:>11} {row['ring_kb']:>8} {row['subscribers']:>4} "
                f"{row['rss_mb']:>8}",
                flush=True,
            )

        async def reporter() -> None:
            while True:
                await report()
                await asyncio.sleep(args.every)

        ticker = asyncio.create_task(reporter())
        sent = 0
        while sent < total:
            # Paced at `speed` x real time on an absolute schedule, so the engine keeps up and
            # every interim is published (a stream far behind gets its interims collapsed).
            delay = start + sent / BYTES_PER_S / args.speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            offset = sent % len(CLIP.pcm)
            chunk = CLIP.pcm[offset : offset + FRAME_BYTES]
            await ws.send_bytes(chunk)
            sent += len(chunk)
        ticker.cancel()
        await wait_fed(http, base, sid, sent / BYTES_PER_S)
        await report()
        async with http.delete(f"{base}/sessions/{sid}"):
            pass
        await asyncio.gather(*readers, sink)
    return series


async def wait_fed(http: aiohttp.ClientSession, base: str, sid: str, seconds: float) -> None:
    """Until the gateway has taken every byte (it reads the socket at the engine's pace)."""
    while True:
        async with http.get(f"{base}/sessions/{sid}") as resp:
            if (await resp.json())["audio_seconds"] >= seconds - 1e-3:
                return
        await asyncio.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="audio to stream")
    parser.add_argument("--speed", type=float, default=15.0, help="× real time")
    parser.add_argument("--subscribers", type=int, default=10, help="half SSE, half WS")
    parser.add_argument("--engine", choices=("instant", "local"), default="instant")
    parser.add_argument(
        "--ring-events", type=int, help="replay ring bound (default: the gateway's)"
    )
    parser.add_argument("--every", type=float, default=20.0, help="report interval (s)")
    args = parser.parse_args()
    port = free_port()
    env = {"STT_GATEWAY_REPLAY_EVENTS": str(args.ring_events)} if args.ring_events else {}
    gateway = start_gateway(port, env, engine=args.engine)
    print(
        f"{args.minutes:g} min of audio at {args.speed:g}× real time in 20 ms frames, engine "
        f"{args.engine}, {args.subscribers} subscribers; {os.cpu_count()} cores"
    )
    print(
        f"{'t (s)':>7} {'audio min':>9} {'last_seq':>8} {'ring events':>11} "
        f"{'ring KB':>8} {'subs':>4} {'RSS MB':>8}"
    )
    try:
        series = asyncio.run(run(f"http://127.0.0.1:{port}", gateway.pid, args))
    finally:
        stop(gateway)
    first, last = series[0], series[-1]
    full = next(r for r in series if r["ring_events"] == last["ring_events"])
    ring = (
        f"the ring held {last['ring_events']} events from {full['audio_min']} min "
        f"(RSS then {full['rss_mb']} MB)"
        if full is not last
        else "the ring was still filling"
    )
    print(f"RSS {first['rss_mb']} → {last['rss_mb']} MB over {last['audio_min']} min; {ring}")
    print(
        json.dumps(
            {
                "bench": "soak",
                "minutes": args.minutes,
                "speed": args.speed,
                "engine": args.engine,
                "subscribers": args.subscribers,
                "series": series,
            }
        )
    )


if __name__ == "__main__":
    main()
