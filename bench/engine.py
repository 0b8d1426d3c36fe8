"""The embedded engine through the gateway against the same engine driven in-process.

For each shared WAV: WER and real-time factor (RTF = processing time / audio time) of the
local engine fed the file directly in this process, and through a gateway (``stt-gateway``
subprocess, one WebSocket session, 20 ms frames sent as fast as the gateway takes them);
then, streaming at ``--speed`` × real time, time to first interim after speech onset (onset
from the engine's Silero VAD, as ``speech_start`` reports it) and final latency after the end
of speech. Ratios near 1 mean the gateway costs nothing. Numbers only, no assertions.

Run: ``.venv/bin/python bench/engine.py [--speed 1] [--clips N]``
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
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import free_port, wait_up  # noqa: E402
from stt_gateway.engines.local import LocalEngineProvider  # noqa: E402
from stt_gateway.events import FinalData  # noqa: E402
from stt_gateway.models import SessionConfig  # noqa: E402
from tests.audio_files import Clip, clips, wer  # noqa: E402

FRAME_BYTES = 640  # 20 ms at 16 kHz


def direct(c: Clip) -> tuple[str, float]:
    """Transcript and RTF of the engine fed the whole file in this process (the recogniser
    is built first: the gateway builds it at session creation, outside its timing too)."""
    recognizer = LocalEngineProvider.spec(SessionConfig()).build()
    start = time.perf_counter()
    results = recognizer.process(c.pcm) + recognizer.close()
    elapsed = time.perf_counter() - start
    return " ".join(r.text for r in results if isinstance(r, FinalData)), elapsed / c.seconds


async def through_gateway(
    http: aiohttp.ClientSession, base: str, c: Clip, speed: float
) -> dict[str, Any]:
    """Stream ``c`` (speed 0: as fast as taken); transcript, RTF, TTFT and final latency."""
    async with http.post(f"{base}/sessions", json={"config": {}}) as resp:
        session = await resp.json()
    ws = await http.ws_connect(session["ws_url"])
    got: list[tuple[float, dict[str, Any]]] = []

    async def receive() -> None:
        async for msg in ws:
            got.append((time.perf_counter(), json.loads(msg.data)))

    reader = asyncio.create_task(receive())
    start = time.perf_counter()
    sent_at: list[float] = []
    for i in range(0, len(c.pcm), FRAME_BYTES):
        if speed:
            await asyncio.sleep(max(0.0, start + i / 32_000 / speed - time.perf_counter()))
        sent_at.append(time.perf_counter())
        await ws.send_bytes(c.pcm[i : i + FRAME_BYTES])
    await ws.send_json({"type": "close"})
    await reader
    elapsed = time.perf_counter() - start

    def sent(audio_s: float) -> float:  # when the frame holding audio time audio_s was sent
        return sent_at[min(len(sent_at) - 1, int(audio_s / 0.02))]

    events = [e for _, e in got]
    text = " ".join(e["data"]["text"] for e in events if e["event_type"] == "final")
    ttft, final_lat = [], []
    onset = None
    for t, e in got:
        if e["event_type"] == "speech_start":
            onset = e["data"]["timestamp"]
        elif e["event_type"] == "token" and onset is not None:
            ttft.append(t - sent(onset))
            onset = None
        elif e["event_type"] == "final" and e["data"]["speech_final"]:
            final_lat.append(t - sent(e["data"]["end"]))
    return {"text": text, "rtf": elapsed / c.seconds, "ttft": ttft, "final": final_lat}


async def run(base: str, chosen: list[Clip], speed: float) -> list[dict[str, Any]]:
    rows = []
    async with aiohttp.ClientSession() as http:
        for c in chosen:
            text, rtf = direct(c)
            fast = await through_gateway(http, base, c, 0.0)
            live = await through_gateway(http, base, c, speed)
            rows.append(
                {
                    "clip": c.name,
                    "audio_s": round(c.seconds, 2),
                    "wer_direct": round(wer(c.reference, text), 3),
                    "wer_gateway": round(wer(c.reference, fast["text"]), 3),
                    "rtf_direct": round(rtf, 3),
                    "rtf_gateway": round(fast["rtf"], 3),
                    "ttft_ms": [round(x * 1000) for x in live["ttft"]],
                    "final_ms": [round(x * 1000) for x in live["final"]],
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", type=float, default=1.0, help="× real time for latencies")
    parser.add_argument("--clips", type=int, default=len(clips()), help="how many shared WAVs")
    args = parser.parse_args()
    port = free_port()
    env = os.environ | {"STT_GATEWAY_LOG_LEVEL": "WARNING"}
    gateway = subprocess.Popen(
        [sys.executable, "-m", "stt_gateway", "--port", str(port)], env=env, cwd=ROOT
    )
    try:
        asyncio.run(wait_up(f"http://127.0.0.1:{port}/health"))
        rows = asyncio.run(run(f"http://127.0.0.1:{port}", list(clips()[: args.clips]), args.speed))
    finally:
        gateway.terminate()
        gateway.wait(10)
    print(
        f"{'clip':<18} {'audio s':>7} {'WER dir':>7} {'WER gw':>7} {'RTF dir':>7} "
        f"{'RTF gw':>7} {'TTFT ms':>10} {'final ms':>10}"
    )
    for r in rows:
        print(
            f"{r['clip']:<18} {r['audio_s']:>7} {r['wer_direct']:>7} {r['wer_gateway']:>7} "
            f"{r['rtf_direct']:>7} {r['rtf_gateway']:>7} {r['ttft_ms']!s:>10} "
            f"{r['final_ms']!s:>10}"
        )
    audio = sum(r["audio_s"] for r in rows)
    rtf_dir = sum(r["rtf_direct"] * r["audio_s"] for r in rows) / audio
    rtf_gw = sum(r["rtf_gateway"] * r["audio_s"] for r in rows) / audio
    ttft = [x for r in rows for x in r["ttft_ms"]]
    final = [x for r in rows for x in r["final_ms"]]
    cores = os.cpu_count() or 1
    summary = {
        "rtf_direct": round(rtf_dir, 3),
        "rtf_gateway": round(rtf_gw, 3),
        "rtf_ratio": round(rtf_gw / rtf_dir, 2),
        "ttft_p50_ms": float(np.percentile(ttft, 50)) if ttft else None,
        "final_p50_ms": float(np.percentile(final, 50)) if final else None,
        # One stream per engine worker, one worker per core: streams that fit, estimated.
        "realtime_streams_estimate": int(cores / rtf_dir),
    }
    print(
        f"RTF direct {summary['rtf_direct']}, through gateway {summary['rtf_gateway']} "
        f"(ratio {summary['rtf_ratio']}); TTFT p50 {summary['ttft_p50_ms']} ms; final "
        f"latency p50 {summary['final_p50_ms']} ms; ~{summary['realtime_streams_estimate']} "
        f"real-time streams on {cores} cores (estimate: cores / RTF)"
    )
    print(json.dumps({"bench": "engine", "speed": args.speed, "rows": rows} | summary))


if __name__ == "__main__":
    main()
