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


def test_soak_bench_prints_its_series() -> None:
    out, result = run_bench(
        "soak.py", "--minutes", "0.5", "--speed", "30", "--every", "0.3", "--ring-events", "20"
    )
    assert result["series"][-1]["ring_events"] == 20
    assert result["series"][-1]["subscribers"] == 11
    assert "the ring held 20 events" in out


def test_capacity_bench_runs_a_trial_per_engine() -> None:
    out, result = run_bench(
        "capacity.py",
        "--engines",
        "echo,instant,redis,redis2,deepgram,local,whisper",
        "--seconds",
        "1",
        "--start",
        "2",
        "--max",
        "2",
        "--processes",
        "1",
        "--uvloop",
    )
    # Each engine's first trial is at --start; whether it passes is the machine's verdict (a
    # busy box bisects down to 1), so only that every engine was tried and heard is asserted.
    firsts: dict[str, int] = {}
    for t in result["trials"]:
        firsts.setdefault(t["engine"], t["sessions"])
    assert firsts == {
        "echo": 2,
        "instant": 2,
        "redis": 2,
        "redis2": 2,
        "deepgram": 2,
        "local": 2,
        "whisper": 2,
    }
    assert all(t["results"] > 0 for t in result["trials"])
    assert set(result["capacity"]) == set(firsts)
    assert "capacity deepgram:" in out
    assert result["uvloop"] is True


def test_fanout_bench_reaches_every_subscriber_over_sse_and_ws_beside_the_floor() -> None:
    out, result = run_bench("fanout.py", "--subscribers", "3", "--seconds", "1")
    assert [(r["path"], r["transport"], r["subscribers"]) for r in result["rows"]] == [
        ("floor", "sse", 3),
        ("gateway", "sse", 3),
        ("redis2", "sse", 3),
        ("floor", "ws", 3),
        ("gateway", "ws", 3),
        ("redis2", "ws", 3),
    ]
    assert all(r["events_to_all"] == r["events"] for r in result["rows"])
    assert "last p95" in out


def test_abuse_bench_compares_a_clean_and_an_abused_phase() -> None:
    out, result = run_bench("abuse.py", "--streams", "1", "--abusers", "8", "--rounds", "1")
    assert (result["clean"]["abusers"], result["abused"]["abusers"]) == (0, 8)
    assert result["abused"]["errors_total"], "the abusers were answered with errors"
    assert result["abused"]["errors_seen_by_real_streams"] == 0
    assert "WER identical" in out


def test_auth_bench_measures_both_gateways() -> None:
    out, result = run_bench("auth.py", "--seconds", "0.5", "--sessions", "2", "--rounds", "1")
    assert set(result["summary"]) == {"open", "keys"}
    assert all(r["creates_per_s"] > 0 and r["frames"] > 0 for r in result["summary"].values())
    assert "auth costs" in out


def test_flood_bench_prints_coverage_and_memory() -> None:
    out, result = run_bench(
        "flood.py", "--producers", "1", "--seconds", "1", "--after", "0.5", "--idle-release", "0.5"
    )
    (row,) = result["rows"]
    assert row["accepted_s"] > 0
    assert row["identical"], "the transcript covers exactly the audio accepted"
    assert "RSS MB" in out


def test_engine_bench_prints_its_table() -> None:
    out, result = run_bench("engine.py", "--speed", "4", "--clips", "1", "--max-streams", "1")
    assert [(r["engine"], r["clip"]) for r in result["rows"]] == [
        ("local", "goforward"),
        ("whisper", "goforward"),
    ]
    assert [(s["engine"], s["streams"]) for s in result["concurrency"]] == [
        ("local", 1),
        ("whisper", 1),
    ]
    assert "RTF direct" in out
    assert "real-time streams that hold" in out


def test_overhead_bench_prints_gateway_beside_the_echo_floor() -> None:
    out, result = run_bench("overhead.py", "--sessions", "2", "--seconds", "1")
    paths = [(r["path"], r["subscriber"]) for r in result["rows"]]
    assert paths == [("aiohttp echo", "ws"), ("gateway", "ws"), ("gateway", "sse")]
    assert all(r["results"] > 0 for r in result["rows"])
    assert "send lag p99" in out


def test_listen_overhead_bench_times_every_path() -> None:
    out, result = run_bench(
        "listen_overhead.py", "--sessions", "2", "--seconds", "1", "--rounds", "1"
    )
    counts = {path: row["interims"] for path, row in result["rows"].items()}
    assert set(counts) == {
        "/sessions (aiohttp)",
        "/v1/listen (aiohttp)",
        "/v1/listen (deepgram-sdk)",
    }
    # One interim per frame at most (a loaded box may coalesce some): 2 sessions x 50 frames.
    assert all(0 < n <= 100 for n in counts.values()), counts
    assert "front adds" in out


def test_decode_bench_times_every_format_and_both_sessions() -> None:
    out, result = run_bench("decode.py", "--repeat", "1", "--rounds", "1", "--clips", "1")
    formats = [r["format"] for r in result["decode"]]
    assert formats[0] == "linear16"
    assert {"webm-opus", "mp3", "mulaw", "stereo-raw-right"} <= set(formats)
    # Every format decodes to the clip's length (MP3 adds its encoder's padding, ~25 ms).
    assert all(abs(r["pcm_out_s"] - result["audio_s"]) < 0.05 for r in result["decode"])
    assert set(result["sessions"]) == {"PCM16", "WebM/Opus"}
    assert all(s["finals"] > 0 for s in result["sessions"].values())
    assert "µs per audio s" in out


def test_summary_bench_times_the_gateway_beside_the_llm_server() -> None:
    out, result = run_bench("summary.py", "--runs", "1", "--first-token-ms", "50")
    assert "DELETE → first summary_token" in out
    assert result["runs"] == 1
    # The gateway's first token cannot come before the server's own.
    assert result["gw_first_p50_ms"] >= 50
    assert result["llm_ttft_p50_ms"] >= 50
