"""The embedded engines (``local``, ``whisper``) side by side, through the gateway and direct.

For each engine and each shared WAV (followed by 1 s of silence, so its last utterance ends at
an endpoint): WER (numbers spelled out, as in the tests) and real-time factor (RTF = processing
time / audio time) of the engine driven in this process, and through a gateway (``stt-gateway``
subprocess, one WebSocket session, 20 ms frames sent as fast as the gateway takes them); then,
streaming at ``--speed`` × real time, time to first interim (TTFT) after speech onset (onset
from the engine's Silero VAD, as ``speech_start`` reports it) and final latency (the frame
holding a final's last word sent → the final received).

Then concurrency: N sessions per engine at real time (starts spread over 2 s), each streaming
two clips with silence after each, for N = 1, 2, 3, 4, 6, 8, … up to ``--max-streams``,
stopping after the first N that fails. N holds real time when interim p95 < 500 ms, final
p95 is within ``--final-slack`` × its value at N = 1 (finals keep pace: a saturated engine's
final latency grows without bound) and, for ``whisper``, no Whisper pass was refused (a
refused pass means its pool was saturated and the streaming engine's final went out instead).

Run: ``.venv/bin/python bench/engine.py [--engines local,whisper] [--speed 1] [--clips N]
[--max-streams 8]`` (~4 min). Numbers only, no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import free_port, tree_cpu_s, wait_up  # noqa: E402
from stt_gateway.engines.local import LocalEngineProvider  # noqa: E402
from stt_gateway.engines.recognizer import Recognizer, RecognizerOutput  # noqa: E402
from stt_gateway.engines.whisper import (  # noqa: E402
    WhisperEngineProvider,
    WhisperRecognizerSpec,
    finals_in_process,
)
from stt_gateway.engines.whisper_model import WhisperPass  # noqa: E402
from stt_gateway.engines.workers import WorkerPool  # noqa: E402
from stt_gateway.events import FinalData  # noqa: E402
from stt_gateway.models import SessionConfig  # noqa: E402
from stt_gateway.settings import Settings  # noqa: E402
from tests.audio_files import Clip, clips, spoken_wer  # noqa: E402

FRAME_BYTES = 640  # 20 ms at 16 kHz
SILENCE = bytes(32_000)  # 1 s
STEPS = (1, 2, 3, 4, 6, 8, 10, 12, 16)
INTERIM_P95_MS = 500


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q))) if values else None


class Direct:
    """An engine driven in this process: the gateway's recogniser, and for ``whisper`` the
    gateway's Whisper passes run inline (the early ones that end up unused are not run)."""

    def __init__(self, engine: str) -> None:
        self.settings = Settings(_env_file=None)
        self.whisper: WhisperPass | None = None
        if engine == "whisper":
            provider = WhisperEngineProvider(WorkerPool(1), WorkerPool(1), self.settings)
            self.whisper = provider.whisper_pass("en")
            self.whisper(np.zeros(16_000, np.int16), 0.0, True)  # load the model untimed

    def recognizer(self) -> Recognizer:
        if self.whisper is None:
            return LocalEngineProvider.spec(SessionConfig()).build()
        early_pass_ms = self.settings.whisper_early_pass_ms
        return WhisperRecognizerSpec(16_000, 500, True, early_pass_ms).build()

    def run(self, pcm: bytes, seconds: float) -> tuple[str, float]:
        """Transcript and RTF (the recogniser is built first, as the gateway builds it at
        session creation, outside its timing too)."""
        recognizer = self.recognizer()
        start = time.perf_counter()
        outputs: list[RecognizerOutput] = recognizer.process(pcm) + recognizer.close()
        if self.whisper is not None:
            finals = finals_in_process(outputs, self.whisper)
        else:
            finals = [o for o in outputs if isinstance(o, FinalData)]
        elapsed = time.perf_counter() - start
        return " ".join(f.text for f in finals), elapsed / seconds


async def stream(
    http: aiohttp.ClientSession, base: str, engine: str, pcm: bytes, speed: float
) -> dict[str, Any]:
    """Stream ``pcm`` on a new session (speed 0: as fast as taken); transcript, elapsed s,
    TTFT, interim latency and final latency (s)."""
    async with http.post(f"{base}/sessions", json={"config": {"engine": engine}}) as resp:
        session = await resp.json()
    ws = await http.ws_connect(session["ws_url"])
    got: list[tuple[float, dict[str, Any]]] = []

    async def receive() -> None:
        async for msg in ws:
            got.append((time.perf_counter(), json.loads(msg.data)))

    reader = asyncio.create_task(receive())
    start = time.perf_counter()
    sent_at: list[float] = []
    for i in range(0, len(pcm), FRAME_BYTES):
        if speed:
            await asyncio.sleep(max(0.0, start + i / 32_000 / speed - time.perf_counter()))
        sent_at.append(time.perf_counter())
        await ws.send_bytes(pcm[i : i + FRAME_BYTES])
    await ws.send_json({"type": "close"})
    await reader
    elapsed = time.perf_counter() - start

    def sent(audio_s: float) -> float:  # when the frame holding audio time audio_s was sent
        return sent_at[min(len(sent_at) - 1, int(audio_s / 0.02))]

    text = " ".join(e["data"]["text"] for _, e in got if e["event_type"] == "final")
    ttft, interim, final = [], [], []
    onset = None
    for t, e in got:
        kind = e["event_type"]
        if kind == "speech_start":
            onset = e["data"]["timestamp"]
        elif kind == "token":
            interim.append(t - sent(e["data"]["end"]))
            if onset is not None:
                ttft.append(t - sent(onset))
                onset = None
        elif kind == "final" and e["data"]["speech_final"]:
            final.append(t - sent(e["data"]["end"]))
    return {"text": text, "elapsed": elapsed, "ttft": ttft, "interim": interim, "final": final}


async def refused_passes(http: aiohttp.ClientSession, base: str) -> float:
    """Whisper passes refused so far (the pool was saturated)."""
    async with http.get(f"{base}/metrics") as resp:
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "stt_second_pass_jobs_ended_total" and s.labels == {
                "engine": "whisper",
                "outcome": "refused",
            }:
                return s.value
    return 0.0


async def single_streams(
    base: str, engine: str, chosen: list[Clip], speed: float
) -> list[dict[str, Any]]:
    direct = Direct(engine)
    rows = []
    async with aiohttp.ClientSession() as http:
        for c in chosen:
            pcm = c.pcm + SILENCE
            seconds = len(pcm) / 32_000
            text, rtf = direct.run(pcm, seconds)
            fast = await stream(http, base, engine, pcm, 0.0)
            live = await stream(http, base, engine, pcm, speed)
            rows.append(
                {
                    "engine": engine,
                    "clip": c.name,
                    "audio_s": round(seconds, 2),
                    "wer_direct": round(spoken_wer(c.reference, text), 3),
                    "wer_gateway": round(spoken_wer(c.reference, fast["text"]), 3),
                    "rtf_direct": round(rtf, 3),
                    "rtf_gateway": round(fast["elapsed"] / seconds, 3),
                    "ttft_ms": [round(x * 1000) for x in live["ttft"]],
                    "final_ms": [round(x * 1000) for x in live["final"]],
                    "ref": c.reference,
                    "hyp": fast["text"],
                }
            )
    return rows


async def concurrent(
    base: str, pid: int, engine: str, n: int, chosen: list[Clip], final_p95_ms: float | None
) -> dict[str, Any]:
    """``n`` sessions at real time, two clips each; latency percentiles and verdict.

    ``final_p95_ms``: the bound on final p95 (``None``: none, the first step)."""
    rng = random.Random(n)

    async def one(i: int, http: aiohttp.ClientSession) -> dict[str, Any]:
        await asyncio.sleep(rng.uniform(0.0, 2.0))
        pcm = b"".join(chosen[(i + k) % len(chosen)].pcm + SILENCE for k in range(2))
        return await stream(http, base, engine, pcm, 1.0)

    async with aiohttp.ClientSession() as http:
        refused_before = await refused_passes(http, base)
        cpu_before, t0 = tree_cpu_s(pid), time.perf_counter()
        runs = await asyncio.gather(*(one(i, http) for i in range(n)))
        refused = await refused_passes(http, base) - refused_before
        cpu = (tree_cpu_s(pid) - cpu_before) / (time.perf_counter() - t0) / (os.cpu_count() or 1)
    interim = [x * 1000 for r in runs for x in r["interim"]]
    final = [x * 1000 for r in runs for x in r["final"]]
    interim_p95, final_p95 = pct(interim, 95), pct(final, 95)
    row: dict[str, Any] = {
        "engine": engine,
        "streams": n,
        "interims": len(interim),
        "interim_p50_ms": pct(interim, 50),
        "interim_p95_ms": interim_p95,
        "finals": len(final),
        "final_p50_ms": pct(final, 50),
        "final_p95_ms": final_p95,
        "final_max_ms": round(max(final)) if final else None,
        "final_bound_ms": round(final_p95_ms) if final_p95_ms is not None else None,
        "refused": int(refused),
        "gateway_cpu": round(cpu, 2),  # gateway + engine workers, share of the box
    }
    row["holds"] = (
        final_p95 is not None
        and (final_p95_ms is None or final_p95 <= final_p95_ms)
        and (interim_p95 is None or interim_p95 < INTERIM_P95_MS)
        and refused == 0
    )
    return row


def print_single(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'engine':<8} {'clip':<18} {'audio s':>7} {'WER dir':>7} {'WER gw':>7} "
        f"{'RTF dir':>7} {'RTF gw':>7} {'TTFT ms':>10} {'final ms':>12}"
    )
    for r in rows:
        print(
            f"{r['engine']:<8} {r['clip']:<18} {r['audio_s']:>7} {r['wer_direct']:>7} "
            f"{r['wer_gateway']:>7} {r['rtf_direct']:>7} {r['rtf_gateway']:>7} "
            f"{r['ttft_ms']!s:>10} {r['final_ms']!s:>12}"
        )


def summarise(engine: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    mine = [r for r in rows if r["engine"] == engine]
    audio = sum(r["audio_s"] for r in mine)
    rtf_dir = sum(r["rtf_direct"] * r["audio_s"] for r in mine) / audio
    rtf_gw = sum(r["rtf_gateway"] * r["audio_s"] for r in mine) / audio
    ttft = [x for r in mine for x in r["ttft_ms"]]
    final = [x for r in mine for x in r["final_ms"]]
    return {
        "engine": engine,
        "wer": round(
            spoken_wer(" ".join(r["ref"] for r in mine), " ".join(r["hyp"] for r in mine)), 3
        ),
        "rtf_direct": round(rtf_dir, 3),
        "rtf_gateway": round(rtf_gw, 3),
        "rtf_ratio": round(rtf_gw / rtf_dir, 2),
        "ttft_p50_ms": pct(ttft, 50),
        "final_p50_ms": pct(final, 50),
        "final_max_ms": max(final) if final else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="local,whisper", help="comma-separated")
    parser.add_argument("--speed", type=float, default=1.0, help="× real time for latencies")
    parser.add_argument("--clips", type=int, default=len(clips()), help="how many shared WAVs")
    parser.add_argument("--max-streams", type=int, default=8, help="largest N tried")
    parser.add_argument(
        "--final-slack", type=float, default=1.5, help="final p95 bound, × its 1-stream value"
    )
    args = parser.parse_args()
    engines = args.engines.split(",")
    chosen = list(clips()[: args.clips])
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = os.environ | {"STT_GATEWAY_LOG_LEVEL": "WARNING"}
    gateway = subprocess.Popen(
        [sys.executable, "-m", "stt_gateway", "--port", str(port)], env=env, cwd=ROOT
    )
    rows: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    try:
        asyncio.run(wait_up(f"{base}/health"))
        for engine in engines:
            rows += asyncio.run(single_streams(base, engine, chosen, args.speed))
        for engine in engines:
            bound: float | None = None
            for n in (s for s in STEPS if s <= args.max_streams):
                step = asyncio.run(concurrent(base, gateway.pid, engine, n, chosen, bound))
                steps.append(step)
                if not step["holds"]:
                    break
                if bound is None:
                    bound = step["final_p95_ms"] * args.final_slack
    finally:
        gateway.terminate()
        gateway.wait(10)
    print_single(rows)
    summaries = [summarise(e, rows) for e in engines]
    print()
    for s in summaries:
        print(
            f"{s['engine']}: WER {s['wer']}; RTF direct {s['rtf_direct']}, through gateway "
            f"{s['rtf_gateway']} (ratio {s['rtf_ratio']}); TTFT p50 {s['ttft_p50_ms']} ms; "
            f"final latency p50 {s['final_p50_ms']} ms, max {s['final_max_ms']} ms"
        )
    print()
    print(
        f"{'engine':<8} {'streams':>7} {'interim p50':>11} {'interim p95':>11} {'finals':>6} "
        f"{'final p50':>9} {'final p95':>9} {'(bound)':>7} {'final max':>9} {'refused':>7} "
        f"{'CPU':>4} "
        f"{'holds':>5}"
    )
    for s in steps:
        print(
            f"{s['engine']:<8} {s['streams']:>7} {s['interim_p50_ms']!s:>11} "
            f"{s['interim_p95_ms']!s:>11} {s['finals']:>6} {s['final_p50_ms']!s:>9} "
            f"{s['final_p95_ms']!s:>9} {s['final_bound_ms']!s:>7} {s['final_max_ms']!s:>9} "
            f"{s['refused']:>7} "
            f"{s['gateway_cpu']:>4.0%} {s['holds']!s:>5}"
        )
    fits = {
        e: max((s["streams"] for s in steps if s["engine"] == e and s["holds"]), default=0)
        for e in engines
    }
    cores = os.cpu_count() or 1
    print(f"real-time streams that hold on {cores} cores: {fits}")
    for r in rows:
        del r["ref"], r["hyp"]
    print(
        json.dumps(
            {"bench": "engine", "speed": args.speed, "rows": rows, "summaries": summaries}
            | {"concurrency": steps, "fits": fits, "cores": cores}
        )
    )


if __name__ == "__main__":
    main()
