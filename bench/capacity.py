"""How many real-time sessions the gateway holds: p95 added latency < 20 ms, none behind.

A trial runs N sessions for ``--seconds``: each sends 20 ms PCM16 frames at real-time pace on
its WebSocket and reads its results on the same socket (as ``stt-gateway stream`` does). The
load generator runs in ``--processes`` separate processes (``bench/loadgen.py``). A trial
passes when

- p95 of frame sent → its result received is under ``--p95-ms`` (20 ms),
- no frame fell behind: the generator sent every frame within 20 ms of its real-time slot
  (p99 send lag) and, for the instant engine, every frame's interim arrived (a subscriber
  that falls behind gets its interims coalesced; the instant engine answers every frame).

N doubles from ``--start`` until a trial fails, then bisects to within 10 %. Engines: ``echo``, the
floor (the bare aiohttp WS echo of ``bench/loadgen.py`` under the same load and verdict: what this
box and the generator hold with no gateway at all), the instant in-process engine
(``bench/gateway.py``; its time is ~zero, so the limit is ours), ``redis`` and ``redis2``: the same
instant engine in one and in two gateway processes sharing one port and their sessions on a local
``redis-server`` (``STT_GATEWAY_REDIS_URL``; Redis's CPU is printed), and the Deepgram adapter
against the local fake (``tests/fakes/deepgram.py``, in its own process, answering every 20 ms of
audio with an interim); on request also ``local`` and ``whisper``, the speech engines on real
speech, judged against ``--local-p95-ms`` (their decoding is real work): how many real-time streams
of each this box holds.

Run: ``.venv/bin/python bench/capacity.py [--engines echo,instant,redis,redis2,deepgram,local]
[--uvloop]``
Prints every trial, the capacity per engine, and one JSON line. No assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    cpu_s,
    free_port,
    start_gateway,
    start_gateways,
    start_redis,
    stop,
    wait_up,
)
from bench.deepgram_overhead import CLIP, KEY, serve_fake  # noqa: E402
from bench.loadgen import Load, pct, run_load, serve_echo  # noqa: E402

MAX_SEND_LAG_MS = 20.0
SHARED = {"redis": 1, "redis2": 2}
"""Engines run as instant-engine gateway processes sharing sessions on Redis: how many."""
MIN_DELIVERED = 0.999


def trial(
    engine: str, sessions: int, args: argparse.Namespace, env: dict[str, str], fake_pid: int
) -> dict[str, Any]:
    """Run one trial of ``sessions`` sessions on a fresh gateway; its figures and verdict.

    Fresh, because ended sessions stay readable (``retention_s``) with their replay rings, and
    what an earlier trial left on the heap lengthens the garbage collector's pauses.
    """
    port = free_port()
    real = engine in ("local", "whisper")  # real speech engines, decoding in worker processes
    if real:  # one worker per core, the gateway's default
        env = {k: v for k, v in env.items() if k != "STT_GATEWAY_ENGINE_PROCESSES"}
    servers: list[subprocess.Popen[bytes] | multiprocessing.process.BaseProcess]
    if engine == "echo":  # the floor: the bare aiohttp WS echo, same load, same verdict
        echo = multiprocessing.get_context("spawn").Process(
            target=serve_echo, args=(port,), daemon=True
        )
        echo.start()
        asyncio.run(wait_up(f"http://127.0.0.1:{port}/"))
        servers = [echo]
    elif engine in SHARED:  # instant-engine processes on one port, sessions on Redis
        servers = list(start_gateways(port, env, SHARED[engine], args.redis_url))
    else:
        servers = [
            start_gateway(
                port, env, engine="local" if real else "instant", uvloop=args.uvloop, gc=args.gc
            )
        ]
    gateway_pids = [s.pid for s in servers if s.pid is not None]
    pids = {"fake": fake_pid} if engine == "deepgram" else {}
    if engine in SHARED:
        pids["redis"] = args.redis_pid
    audio = CLIP.pcm if engine in ("deepgram", "local", "whisper") else b""
    # instant is `local` there
    config_engine = "local" if engine == "instant" or engine in SHARED else engine
    limit_ms = args.local_p95_ms if real else args.p95_ms
    if engine == "echo":
        load = Load("echo", f"ws://127.0.0.1:{port}/", sessions, args.seconds)
    else:
        base = f"http://127.0.0.1:{port}"
        load = Load("gateway", base, sessions, args.seconds, engine=config_engine, audio=audio)
    try:
        cpu0 = {name: cpu_s(pid) for name, pid in pids.items()}
        gateway0 = sum(cpu_s(pid) for pid in gateway_pids)
        t0 = time.perf_counter()
        result = run_load(load, args.processes)
        wall = time.perf_counter() - t0
        row_cpu = {f"{name}_cpu": (cpu_s(pid) - cpu0[name]) / wall for name, pid in pids.items()}
        row_cpu["gateway_cpu"] = (sum(cpu_s(pid) for pid in gateway_pids) - gateway0) / wall
    finally:
        for server in servers:
            if isinstance(server, subprocess.Popen):
                stop(server)
            else:
                server.terminate()
                server.join(10)
    lat = result.latency_ms["ws"]
    row: dict[str, Any] = {
        "engine": engine,
        "sessions": sessions,
        "results": len(lat),
        "delivered": len(lat) / result.frames_due if result.frames_due else 0.0,
        "p50_ms": pct(lat, 50),
        "p95_ms": pct(lat, 95),
        "p99_ms": pct(lat, 99),
        "send_lag_p99_ms": pct(result.send_lag_ms, 99),
        "loadgen_cpu": result.cpu_s / result.wall_s,
    }
    row |= row_cpu
    reasons = []
    if not row["p95_ms"] < limit_ms:
        reasons.append(f"p95 {row['p95_ms']:.1f} ms")
    if not row["send_lag_p99_ms"] < MAX_SEND_LAG_MS:
        reasons.append(f"generator behind (send lag p99 {row['send_lag_p99_ms']:.1f} ms)")
    if (engine in ("instant", "echo") or engine in SHARED) and row["delivered"] < MIN_DELIVERED:
        reasons.append(f"interims delivered {row['delivered']:.1%}")
    if result.closed_early:
        reasons.append(f"{result.closed_early} streams cut")
    row["pass"] = not reasons
    row["why"] = "; ".join(reasons) or "ok"
    print(
        f"{engine:<9} {sessions:>6} {row['p50_ms']:>7.2f} {row['p95_ms']:>8.2f} "
        f"{row['delivered']:>6.1%} {row['send_lag_p99_ms']:>8.2f} {row['loadgen_cpu']:>8.0%} "
        f"{row['gateway_cpu']:>8.0%} {row.get('fake_cpu', 0):>5.0%} "
        f"{row.get('redis_cpu', 0):>5.0%}  {row['why']}",
        flush=True,
    )
    return row


def search(
    engine: str, args: argparse.Namespace, env: dict[str, str], fake_pid: int
) -> tuple[int, list[dict[str, Any]]]:
    """Largest passing session count (0 if even ``--start`` fails) and every trial run."""
    rows = []
    good, bad = 0, None
    n = args.start
    while bad is None and n <= args.max:
        rows.append(trial(engine, n, args, env, fake_pid))
        good, bad = (n, None) if rows[-1]["pass"] else (good, n)
        n *= 2
    while bad is not None and bad - good > max(1, good // 10):
        n = (good + bad) // 2
        rows.append(trial(engine, n, args, env, fake_pid))
        good, bad = (n, bad) if rows[-1]["pass"] else (good, n)
    return good, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--engines",
        default="echo,instant,deepgram",
        help="comma-separated; echo is the floor (the bare aiohttp WS echo, no gateway)",
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="audio per trial session")
    parser.add_argument("--start", type=int, default=50, help="first session count tried")
    parser.add_argument("--max", type=int, default=3200, help="largest session count tried")
    parser.add_argument("--p95-ms", type=float, default=20.0)
    parser.add_argument(
        "--local-p95-ms",
        type=float,
        default=500.0,
        help="bound for local and whisper, whose own decoding takes ~100-300 ms per result",
    )
    parser.add_argument("--processes", type=int, default=2, help="load generator processes")
    parser.add_argument("--uvloop", action="store_true", help="gateway on uvloop")
    parser.add_argument(
        "--gc",
        choices=("on", "off", "log"),
        default="on",
        help="the gateway's garbage collector: off (a counterfactual) or log its pauses",
    )
    args = parser.parse_args()

    fake_port = free_port()
    fake = multiprocessing.get_context("spawn").Process(
        target=serve_fake, args=(fake_port,), daemon=True
    )
    fake.start()
    env = {
        "STT_GATEWAY_MAX_SESSIONS": str(args.max + 10),
        "STT_GATEWAY_ENGINE_PROCESSES": "1",  # the instant engine runs in the event loop
        "DEEPGRAM_API_KEY": KEY,
        "DEEPGRAM_URL": f"ws://127.0.0.1:{fake_port}",
    }
    capacity: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    redis_server = None
    if SHARED.keys() & set(args.engines.split(",")):
        redis_server, args.redis_url = start_redis()
        args.redis_pid = redis_server.pid
    try:
        asyncio.run(wait_up(f"http://127.0.0.1:{fake_port}/v1/listen"))
        assert fake.pid is not None
        print(
            f"{args.seconds:g} s trials of 20 ms frames at real-time pace; {os.cpu_count()} cores; "
            f"load generator: {args.processes} processes; gateway loop: "
            f"{'uvloop' if args.uvloop else 'asyncio'}; gc {args.gc}; "
            f"pass: p95 < {args.p95_ms:g} ms (local, whisper: {args.local_p95_ms:g} ms), "
            "none behind"
        )
        print(
            f"{'engine':<9} {'sessions':>6} {'p50 ms':>7} {'p95 ms':>8} {'deliv':>6} "
            f"{'send lag':>8} {'loadgen':>8} {'gateway':>8} {'fake':>5} {'redis':>5}  verdict"
        )
        for engine in args.engines.split(","):
            capacity[engine], tried = search(engine, args, env, fake.pid)
            rows += tried
    finally:
        fake.terminate()
        if redis_server is not None:
            stop(redis_server)
    for engine, n in capacity.items():
        print(f"capacity {engine}: {n} real-time sessions")
    print(
        json.dumps(
            {
                "bench": "capacity",
                "uvloop": args.uvloop,
                "gc": args.gc,
                "cores": os.cpu_count(),
                "capacity": capacity,
                "trials": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
