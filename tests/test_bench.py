"""The benchmark scripts run at a tiny size, so they cannot rot (numbers are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_deepgram_overhead_bench_prints_its_table_and_json() -> None:
    done = subprocess.run(
        [sys.executable, "bench/deepgram_overhead.py", "--sessions", "2", "--seconds", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert [r["path"] for r in result["rows"]] == ["direct to fake", "through gateway"]
    assert all(r["n"] > 0 for r in result["rows"])
    assert "gateway added: p50" in done.stdout


def test_ring_memory_bench_prints_its_series() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "bench/ring_memory.py",
            "--minutes",
            "0.2",
            "--every",
            "1",
            "--ring-events",
            "20",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["series"]
    assert "RSS" in done.stdout


def test_engine_bench_prints_its_table() -> None:
    done = subprocess.run(
        [sys.executable, "bench/engine.py", "--speed", "4", "--clips", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["rows"][0]["clip"] == "goforward"
    assert "RTF direct" in done.stdout
