"""The benchmark scripts run at a tiny size, so they cannot rot (numbers are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run_bench(script: str, *args: str) -> tuple[str, dict[str, Any]]:
    """Run ``bench/<script>`` with ``args``; its stdout and the JSON line it ends with."""
    done = subprocess.run(
        [sys.executable, f"bench/{script}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout, json.loads(done.stdout.strip().splitlines()[-1])


def test_deepgram_overhead_bench_prints_its_table_and_json() -> None:
    out, result = run_bench("deepgram_overhead.py", "--sessions", "2", "--seconds", "1")
    assert [r["path"] for r in result["rows"]] == ["direct to fake", "through gateway"]
    assert all(r["n"] > 0 for r in result["rows"])
    assert "gateway added: p50" in out


def test_ring_memory_bench_prints_its_series() -> None:
    out, result = run_bench(
        "ring_memory.py", "--minutes", "0.2", "--every", "1", "--ring-events", "20"
    )
    assert result["series"]
    assert "RSS" in out


def test_engine_bench_prints_its_table() -> None:
    out, result = run_bench("engine.py", "--speed", "4", "--clips", "1")
    assert result["rows"][0]["clip"] == "goforward"
    assert "RTF direct" in out


def test_overhead_bench_prints_gateway_beside_the_echo_floor() -> None:
    out, result = run_bench("overhead.py", "--sessions", "2", "--seconds", "1")
    paths = [(r["path"], r["subscriber"]) for r in result["rows"]]
    assert paths == [("aiohttp echo", "ws"), ("gateway", "ws"), ("gateway", "sse")]
    assert all(r["results"] > 0 for r in result["rows"])
    assert "send lag p99" in out
