"""Producers far faster than real time: is every accepted second transcribed, and does memory
come back?

One gateway (``stt-gateway`` on the embedded ``local`` engine, a subprocess) and
``--producers`` WebSocket producers pushing the shared clips (each + 0.5 s of silence, looped)
as fast as the gateway reads them for ``--seconds`` (at least: a held-back send returns late);
then each stops, takes its session's info and ``DELETE``s it. Printed: audio accepted (s, and
× real time: the producers are held to ``STT_GATEWAY_MAX_AUDIO_LEAD_S`` ahead of the engine),
how long each ``DELETE`` took, whether its transcript equals the engine's own on exactly the
accepted audio (recognised here, in-process), and the RSS of the gateway and of its engine
workers before, at the peak, and ``--after`` seconds after the last session ended
(``STT_GATEWAY_ENGINE_IDLE_RELEASE_S`` is set to ``--idle-release``).

Run: ``.venv/bin/python bench/flood.py [--producers 4] [--seconds 30]`` (~1.5 min). Numbers
only, no assertions.
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
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import free_port, rss_mb, stop, wait_up  # noqa: E402
from stt_gateway.engines.local import LocalRecognizer, local_resources  # noqa: E402
from stt_gateway.events import FinalData  # noqa: E402
from tests.audio_files import clips  # noqa: E402

LOOP = b"".join(c.pcm + bytes(16_000) for c in clips())
FRAME_BYTES = 3_200  # 100 ms


def children_rss_mb(pid: int) -> float:
    """RSS (MB) of ``pid``'s child processes (the engine workers and their helpers)."""
    kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return sum(rss_mb(int(k)) for k in kids.split())


def direct_transcript(seconds: float) -> str:
    """The local engine's finals on the first ``seconds`` of the looped clips, in 100 ms
    chunks as the producers sent them."""
    n = int(seconds * 32_000) // 2 * 2
    pcm = (LOOP * (n // len(LOOP) + 1))[:n]
    rec = LocalRecognizer(
        input_rate=16_000, endpointing_ms=500, interim_results=False, resources=local_resources(1)
    )
    out = []
    for i in range(0, len(pcm), FRAME_BYTES):
        out += rec.process(pcm[i : i + FRAME_BYTES])
    out += rec.close()
    return " ".join(r.text for r in out if isinstance(r, FinalData))


async def producer(base: str, until: float) -> dict[str, Any]:
    """Push the loop unpaced until ``until``; then info, DELETE (timed) and its transcript."""
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/sessions", json={}) as resp:
            session = await resp.json()
        ws = await http.ws_connect(session["ws_url"] + "?events=false")
        sent = 0
        began = time.monotonic()
        # A send returns once the frame is buffered; held back, the last one waits for the
        # gateway to read: the push lasts longer than asked, and is timed as it was.
        while time.monotonic() < until:
            start = sent * FRAME_BYTES % len(LOOP)
            await ws.send_bytes((LOOP + LOOP)[start : start + FRAME_BYTES])
            sent += 1
        pushed_s = time.monotonic() - began
        url = f"{base}/sessions/{session['session_id']}"
        async with http.get(url) as resp:
            accepted = (await resp.json())["audio_seconds"]
        t0 = time.monotonic()
        async with http.delete(url) as resp:
            transcript = (await resp.json())["transcript"]
        await ws.close()
        return {
            "accepted_s": accepted,
            "pushed_s": pushed_s,
            "delete_s": time.monotonic() - t0,
            "text": transcript,
        }


async def flood(base: str, pid: int, producers: int, seconds: float) -> list[dict[str, Any]]:
    until = time.monotonic() + seconds
    task = asyncio.gather(*(producer(base, until) for _ in range(producers)))
    peak = [0.0, 0.0]
    while not task.done():
        peak = [max(peak[0], rss_mb(pid)), max(peak[1], children_rss_mb(pid))]
        await asyncio.sleep(0.5)
    rows = await task
    for row in rows:
        row["peak"] = peak
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--producers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0, help="how long they push")
    parser.add_argument("--idle-release", type=float, default=5.0, help="engine idle release s")
    parser.add_argument("--after", type=float, default=15.0, help="RSS taken this long after")
    args = parser.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = os.environ | {
        "STT_GATEWAY_LOG_LEVEL": "WARNING",
        "STT_GATEWAY_ENGINE_IDLE_RELEASE_S": str(args.idle_release),
    }
    gateway = subprocess.Popen(
        [sys.executable, "-m", "stt_gateway", "--port", str(port), "--default-engine", "local"],
        env=env,
    )
    try:
        asyncio.run(wait_up(f"{base}/ready", 60))
        time.sleep(3)  # the workers' warm-up decoders are built
        before = (rss_mb(gateway.pid), children_rss_mb(gateway.pid))
        rows = asyncio.run(flood(base, gateway.pid, args.producers, args.seconds))
        time.sleep(args.after)
        after = (rss_mb(gateway.pid), children_rss_mb(gateway.pid))
    finally:
        stop(gateway)
    print(
        f"{args.producers} producers pushing as fast as they may for {args.seconds:g} s "
        f"(local engine); {os.cpu_count()} cores"
    )
    print(
        f"{'pushed s':>8} {'accepted s':>10} {'× real time':>11} {'DELETE s':>8} "
        f"{'= engine alone':>15}"
    )
    for row in rows:
        row["identical"] = row["text"] == direct_transcript(row["accepted_s"])
        print(
            f"{row['pushed_s']:>8.1f} {row['accepted_s']:>10.1f} "
            f"{row['accepted_s'] / row['pushed_s']:>11.1f} {row['delete_s']:>8.2f} "
            f"{row['identical']!s:>15}"
        )
    peak = rows[0]["peak"]
    print(
        f"RSS MB, gateway / engine workers: before {before[0]:.0f} / {before[1]:.0f}, peak "
        f"{peak[0]:.0f} / {peak[1]:.0f}, {args.after:g} s after {after[0]:.0f} / {after[1]:.0f}"
    )
    for row in rows:
        del row["text"], row["peak"]
    print(
        json.dumps(
            {
                "bench": "flood",
                "rows": rows,
                "rss_mb": {"before": before, "peak": peak, "after": after},
            }
        )
    )


if __name__ == "__main__":
    main()
