"""Gateway-added latency per frame, with an instant engine, beside a bare aiohttp WS echo.

For each session count: N sessions send 20 ms PCM16 frames at real-time pace over their
WebSocket to the gateway (``bench/gateway.py``: its engine answers every frame at once with an
interim), each with an SSE subscriber too. Latency is frame sent → its interim received, on the
producer's WebSocket (a WS subscriber) and on the SSE stream. The engine's time is ~zero, so the
latency is what the gateway adds. The floor is the same N streams against a bare aiohttp WS
echo that answers every frame with a message of the same kind; gateway minus floor is what our
code adds over aiohttp itself. The load generator runs in its own processes
(``bench/loadgen.py``); its CPU use is printed beside the gateway's.

Run: ``.venv/bin/python bench/overhead.py [--sessions 1,100,1000] [--seconds 10]``
Prints a table and one JSON line. No assertions: numbers only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import cpu_s, free_port, start_gateway, stop, wait_up  # noqa: E402
from bench.loadgen import Load, LoadResult, pct, run_load, serve_echo  # noqa: E402


def row(
    path: str, sessions: int, kind: str, result: LoadResult, server_cpu: float
) -> dict[str, Any]:
    """One table row: latency percentiles of one subscriber kind, and who used how much CPU."""
    lat = result.latency_ms[kind]
    return {
        "path": path,
        "sessions": sessions,
        "subscriber": kind,
        "results": len(lat),
        "delivered": len(lat) / result.frames_due if result.frames_due else 0.0,
        "p50_ms": pct(lat, 50),
        "p95_ms": pct(lat, 95),
        "p99_ms": pct(lat, 99),
        "send_lag_p99_ms": pct(result.send_lag_ms, 99),
        "loadgen_cpu": result.cpu_s / result.wall_s,
        "server_cpu": server_cpu,
    }


def measure(load: Load, processes: int, server_pid: int) -> tuple[LoadResult, float]:
    """Run ``load``; its result and the server's CPU use (cores) over the run."""
    cpu0, t0 = cpu_s(server_pid), time.perf_counter()
    result = run_load(load, processes)
    return result, (cpu_s(server_pid) - cpu0) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", default="1,100,1000", help="comma-separated counts")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio per session")
    parser.add_argument("--processes", type=int, default=2, help="load generator processes")
    parser.add_argument("--uvloop", action="store_true", help="gateway on uvloop")
    args = parser.parse_args()
    counts = [int(n) for n in args.sessions.split(",")]

    echo_port, gw_port = free_port(), free_port()
    echo = multiprocessing.get_context("spawn").Process(
        target=serve_echo, args=(echo_port,), daemon=True
    )
    echo.start()
    env = {
        "STT_GATEWAY_MAX_SESSIONS": str(max(counts) + 10),
        "STT_GATEWAY_ENGINE_PROCESSES": "1",  # the instant engine runs in the event loop
    }
    gateway = start_gateway(gw_port, env, uvloop=args.uvloop)
    rows: list[dict[str, Any]] = []
    try:
        asyncio.run(wait_up(f"http://127.0.0.1:{echo_port}/"))
        assert echo.pid is not None
        for n in counts:
            floor, echo_cpu = measure(
                Load("echo", f"ws://127.0.0.1:{echo_port}/", n, args.seconds),
                args.processes,
                echo.pid,
            )
            rows.append(row("aiohttp echo", n, "ws", floor, echo_cpu))
            through, gw_cpu = measure(
                Load("gateway", f"http://127.0.0.1:{gw_port}", n, args.seconds, sse=True),
                args.processes,
                gateway.pid,
            )
            rows.append(row("gateway", n, "ws", through, gw_cpu))
            rows.append(row("gateway", n, "sse", through, gw_cpu))
            if through.closed_early:
                print(f"note: {through.closed_early} subscriber streams were cut at {n} sessions")
    finally:
        stop(gateway)
        echo.terminate()
    print(
        f"20 ms frames at real-time pace for {args.seconds:g} s; {os.cpu_count()} cores; "
        f"load generator: {args.processes} processes; gateway loop: "
        f"{'uvloop' if args.uvloop else 'asyncio'}"
    )
    head = (
        f"{'path':<13} {'sessions':>8} {'sub':>4} {'results':>8} {'deliv':>6} {'p50 ms':>7} "
        f"{'p95 ms':>7} {'p99 ms':>7} {'send lag p99':>12} {'loadgen CPU':>11} {'server CPU':>10}"
    )
    print(head)
    for r in rows:
        print(
            f"{r['path']:<13} {r['sessions']:>8} {r['subscriber']:>4} {r['results']:>8} "
            f"{r['delivered']:>6.1%} {r['p50_ms']:>7.2f} {r['p95_ms']:>7.2f} {r['p99_ms']:>7.2f} "
            f"{r['send_lag_p99_ms']:>12.2f} {r['loadgen_cpu']:>10.0%} {r['server_cpu']:>9.0%}"
        )
    print(
        json.dumps(
            {
                "bench": "overhead",
                "seconds": args.seconds,
                "uvloop": args.uvloop,
                "cores": os.cpu_count(),
                "rows": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
