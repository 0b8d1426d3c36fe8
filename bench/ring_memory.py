"""Memory of one long session: the replay ring stays at its bound, RSS stays flat.

Starts the gateway (``stt-gateway``, embedded engine) with a small replay ring, streams a
shared WAV looped to ``--minutes`` of audio over one WebSocket at ``--speed`` × real time,
with a few SSE subscribers reading along, and prints a series: audio fed, events published,
events and bytes in the ring, gateway RSS. Flat is the goal. Numbers only, no assertions.

Run: ``.venv/bin/python bench/ring_memory.py [--minutes 30] [--ring-events 2000]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import free_port, rss_mb, wait_up  # noqa: E402
from tests.audio_files import clip  # noqa: E402

FRAME_BYTES = 640 * 5  # 100 ms
CLIP = clip("librivox-sns-0870")


async def drain_sse(http: aiohttp.ClientSession, url: str) -> None:
    async with http.get(url) as resp:
        async for _ in resp.content:
            pass


async def run(
    base: str, pid: int, minutes: float, speed: float, every_s: float
) -> list[dict[str, float]]:
    series: list[dict[str, float]] = []
    # No total time limit: a 30-minute session outlives aiohttp's 5-minute default.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http:
        async with http.post(f"{base}/sessions", json={"config": {}}) as resp:
            session = await resp.json()
        sid = session["session_id"]
        readers = [asyncio.create_task(drain_sse(http, session["stream_url"])) for _ in range(3)]
        ws = await http.ws_connect(session["ws_url"] + "?since=999999999")
        sink = asyncio.create_task(drain_ws(ws))
        total = int(minutes * 60 * 32_000)
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
                "rss_mb": round(rss_mb(pid), 1),
            }
            series.append(row)
            print(
                f"{row['t_s']:>7} {row['audio_min']:>9} {row['last_seq']:>8} "
                f"{row['ring_events']:>11} {row['ring_kb']:>8} {row['rss_mb']:>8}",
                flush=True,
            )

        async def reporter() -> None:
            while True:
                await report()
                await asyncio.sleep(every_s)

        ticker = asyncio.create_task(reporter())
        sent = 0
        while sent < total:
            # Paced at `speed` x real time on an absolute schedule, so the engine keeps up and
            # every interim is published (a stream far behind gets its interims collapsed).
            delay = start + sent / 32_000 / speed - time.monotonic()
            await asyncio.sleep(max(0.0, delay))
            offset = sent % len(CLIP.pcm)
            chunk = CLIP.pcm[offset : offset + FRAME_BYTES]
            await ws.send_bytes(chunk)
            sent += len(chunk)
        ticker.cancel()
        await wait_fed(http, base, sid, sent / 32_000)
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


async def drain_ws(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for _ in ws:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="audio to stream")
    parser.add_argument("--ring-events", type=int, default=2000)
    parser.add_argument("--speed", type=float, default=6.0, help="× real time")
    parser.add_argument("--every", type=float, default=15.0, help="report interval (s)")
    args = parser.parse_args()
    port = free_port()
    env = os.environ | {
        "STT_GATEWAY_REPLAY_EVENTS": str(args.ring_events),
        "STT_GATEWAY_LOG_LEVEL": "WARNING",
    }
    gateway = subprocess.Popen(
        [sys.executable, "-m", "stt_gateway", "--port", str(port)], env=env, cwd=ROOT
    )
    try:
        asyncio.run(wait_up(f"http://127.0.0.1:{port}/health"))
        print(
            f"{'t (s)':>7} {'audio min':>9} {'last_seq':>8} {'ring events':>11} "
            f"{'ring KB':>8} {'RSS MB':>8}"
        )
        url = f"http://127.0.0.1:{port}"
        series = asyncio.run(run(url, gateway.pid, args.minutes, args.speed, args.every))
    finally:
        gateway.terminate()
        gateway.wait(10)
    first, last = series[0], series[-1]
    print(
        f"RSS {first['rss_mb']} → {last['rss_mb']} MB over {last['audio_min']} min of audio; "
        f"ring held {last['ring_events']} events (bound {args.ring_events})"
    )
    print(
        json.dumps(
            {
                "bench": "ring_memory",
                "minutes": args.minutes,
                "ring_bound_events": args.ring_events,
                "series": series,
            }
        )
    )


if __name__ == "__main__":
    main()
