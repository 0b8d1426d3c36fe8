"""What authentication costs: session creations, WebSocket connects and per-frame latency, with
and without API keys, in one run.

Two gateways (``bench/gateway.py``, instant engine) side by side on loopback: one in open mode,
one with a key (every request carries it; every WebSocket its session's publish token as a
subprotocol, as the mic page does). For each, alternately:

- ``POST /sessions`` then ``DELETE`` by ``--workers`` concurrent clients for ``--seconds``:
  pairs per second (with keys, each creation also mints the session's two tokens);
- WebSocket connect + close on one session by ``--workers`` clients: connects per second
  (with keys, each handshake checks a token);
- ``--sessions`` sessions streaming 20 ms frames at real time for ``--seconds``: frame sent →
  its interim received, p50 / p95 (credentials are checked per connection, never per frame,
  so this should not move).

Target (issue 16): auth costs < 10 % on connects and nothing measurable per frame. Numbers
only, no assertions. Run: ``.venv/bin/python bench/auth.py`` (~1 min).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import free_port, start_gateway, stop  # noqa: E402

KEY = "bench-key-0123456789abcdef"
FRAME = bytes(640)  # 20 ms of 16 kHz PCM16


def headers(auth: bool) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"} if auth else {}


async def creations(base: str, auth: bool, workers: int, seconds: float) -> float:
    """Create-and-delete pairs per second."""
    done = 0
    end = time.perf_counter() + seconds
    async with aiohttp.ClientSession(headers=headers(auth)) as http:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < end:
                async with http.post(f"{base}/sessions", json={}) as resp:
                    sid = (await resp.json())["session_id"]
                async with http.delete(f"{base}/sessions/{sid}") as resp:
                    await resp.read()
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        return done / (time.perf_counter() - start)


async def connects(base: str, auth: bool, workers: int, seconds: float) -> float:
    """WebSocket handshakes (then close) per second on one session."""
    done = 0
    end = time.perf_counter() + seconds
    async with aiohttp.ClientSession(headers=headers(auth)) as http:
        async with http.post(f"{base}/sessions", json={}) as resp:
            created = await resp.json()
        protocols = ("bearer", created["tokens"]["publish"]) if auth else ()

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < end:
                ws = await http.ws_connect(f"{created['ws_url']}?events=false", protocols=protocols)
                await ws.close()
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        return done / (time.perf_counter() - start)


async def frames(base: str, auth: bool, sessions: int, seconds: float) -> list[float]:
    """Frame sent → the interim covering it received (ms), every frame of every session."""
    latencies: list[float] = []
    async with aiohttp.ClientSession(headers=headers(auth)) as http:

        async def one(index: int) -> None:
            async with http.post(f"{base}/sessions", json={}) as resp:
                created = await resp.json()
            protocols = ("bearer", created["tokens"]["publish"]) if auth else ()
            ws = await http.ws_connect(created["ws_url"], protocols=protocols)
            sent: list[float] = []

            async def receive() -> None:
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    event = json.loads(msg.data)
                    if event["event_type"] == "token":
                        i = round(event["data"]["end"] / 0.02) - 1
                        if 0 <= i < len(sent):
                            latencies.append((time.perf_counter() - sent[i]) * 1000)

            reader = asyncio.create_task(receive())
            await asyncio.sleep(index * 0.02 / sessions)  # spread over the frame period
            start = time.perf_counter()
            for n in range(int(seconds / 0.02)):
                await asyncio.sleep(max(0.0, start + n * 0.02 - time.perf_counter()))
                sent.append(time.perf_counter())
                await ws.send_bytes(FRAME)
            await ws.send_json({"type": "close"})
            await asyncio.wait_for(reader, 30)

        await asyncio.gather(*(one(i) for i in range(sessions)))
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--workers", type=int, default=8, help="concurrent clients")
    parser.add_argument("--sessions", type=int, default=100, help="real-time streams")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the two")
    args = parser.parse_args()
    env = {
        "STT_GATEWAY_MAX_SESSIONS": str(args.sessions + 100),
        "STT_GATEWAY_KEY_SESSIONS_PER_MINUTE": "1000000",
        "STT_GATEWAY_ENGINE_PROCESSES": "1",
    }
    ports = {False: free_port(), True: free_port()}
    gateways = {
        auth: start_gateway(port, env | ({"STT_GATEWAY_API_KEYS": f"bench:{KEY}"} if auth else {}))
        for auth, port in ports.items()
    }
    rows: dict[bool, dict[str, Any]] = {
        a: {"creates": [], "connects": [], "frame_ms": []} for a in ports
    }
    try:
        for auth, port in ports.items():  # warm-up, not counted: imports, pools, connections
            base = f"http://127.0.0.1:{port}"
            asyncio.run(creations(base, auth, args.workers, 1.0))
            asyncio.run(connects(base, auth, args.workers, 1.0))
        for r in range(args.rounds):
            order = list(ports.items())
            for auth, port in order if r % 2 == 0 else order[::-1]:  # neither always first
                base = f"http://127.0.0.1:{port}"
                row = rows[auth]
                row["creates"].append(
                    asyncio.run(creations(base, auth, args.workers, args.seconds))
                )
                row["connects"].append(
                    asyncio.run(connects(base, auth, args.workers, args.seconds))
                )
                row["frame_ms"] += asyncio.run(frames(base, auth, args.sessions, args.seconds))
    finally:
        for proc in gateways.values():
            stop(proc)
    print(
        f"{os.cpu_count()} cores; {args.workers} clients; {args.sessions} real-time sessions; "
        f"{args.rounds} alternations of {args.seconds:g} s each"
    )
    print(f"{'gateway':<8} {'creates/s':>10} {'connects/s':>11} {'frame p50 ms':>13} {'p95 ms':>8}")
    summary: dict[str, dict[str, float]] = {}
    for auth, row in rows.items():
        name = "keys" if auth else "open"
        lat = np.array(row["frame_ms"])
        summary[name] = {
            "creates_per_s": float(np.mean(row["creates"])),
            "connects_per_s": float(np.mean(row["connects"])),
            "frame_p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
            "frame_p95_ms": float(np.percentile(lat, 95)) if lat.size else float("nan"),
            "frames": int(lat.size),
        }
        s = summary[name]
        print(
            f"{name:<8} {s['creates_per_s']:>10.0f} {s['connects_per_s']:>11.0f} "
            f"{s['frame_p50_ms']:>13.2f} {s['frame_p95_ms']:>8.2f}"
        )
    o, k = summary["open"], summary["keys"]
    print(
        f"auth costs: creates {1 - k['creates_per_s'] / o['creates_per_s']:+.1%}, connects "
        f"{1 - k['connects_per_s'] / o['connects_per_s']:+.1%}, frame p50 "
        f"{k['frame_p50_ms'] - o['frame_p50_ms']:+.2f} ms (target: connects < 10 %)"
    )
    print(json.dumps({"bench": "auth", "summary": summary}))


if __name__ == "__main__":
    main()
