"""What decoding costs: each format's decode time per second of audio, beside linear16's, and
one ``local`` session fed WebM/Opus beside one fed PCM16, in the same run.

1. In this process, every shared clip (one after another, ~28 s of audio) is converted to each
   format (``tests/audio_convert.py``: WAV, Ogg/Opus, WebM/Opus, MP3, FLAC, 8 kHz μ-law and
   A-law, stereo) and pushed through :class:`stt_gateway.audio.stream.AudioStream` in pieces of
   20 ms of audio (bytes/s of the format × 0.02), then drained. The figure is wall time per
   second of audio (µs/s; the PyAV thread's time is inside it, as the session awaits it),
   the best of ``--repeat`` runs; linear16 is the fast path (the chunk is its own PCM).
2. Through a gateway (``stt-gateway`` subprocess, engine ``local``): one WebSocket session at
   a time streams the same clips as PCM16 and as WebM/Opus, as fast as the gateway takes
   them, then ``close``; the paths take turns for ``--rounds`` rounds. RTF = wall time from
   the first frame to ``session_end`` / audio seconds; gateway CPU (its process and engine
   workers) per audio second beside it.

Run: ``.venv/bin/python bench/decode.py [--repeat 3] [--rounds 2] [--clips N]``. Numbers
only, no assertions; the last line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import free_port, tree_cpu_s, wait_up  # noqa: E402
from stt_gateway.audio.stream import AudioStream  # noqa: E402
from tests.audio_convert import FORMATS, Converted, convert  # noqa: E402
from tests.audio_files import Clip, clips  # noqa: E402

PIECE_S = 0.02


def joined(chosen: list[Clip]) -> Clip:
    """The clips one after another as one clip."""
    return Clip(
        "joined",
        b"".join(c.pcm for c in chosen),
        chosen[0].sample_rate,
        " ".join(c.reference for c in chosen),
    )


def pieces(audio: Converted, seconds: float) -> list[bytes]:
    """``audio`` in pieces of 20 ms of audio each (whole raw frames)."""
    per_piece = len(audio.data) / seconds * PIECE_S
    step = max(1, int(per_piece) // audio.frame_bytes) * audio.frame_bytes
    return [audio.data[i : i + step] for i in range(0, len(audio.data), step)]


async def decode_once(audio: Converted, chunks: list[bytes]) -> tuple[float, int]:
    """Seconds to decode ``chunks`` and drain; bytes of PCM16 out."""
    config = audio.config
    rate = config.get("sample_rate", 16_000)
    stream = AudioStream(
        config.get("encoding", "linear16"), config.get("channels", 1), rate, rate, 1 << 24
    )
    out = 0
    start = time.perf_counter()
    for chunk in chunks:
        out += len(await stream.decode(chunk))
    out += len(await stream.drain())
    return time.perf_counter() - start, out


async def decode_costs(clip: Clip, repeat: int) -> list[dict[str, Any]]:
    rows = []
    plain = Converted(clip.pcm, {}, 2)
    for name, audio in [("linear16", plain), *((f, convert(clip, f)) for f in FORMATS)]:
        chunks = pieces(audio, clip.seconds)
        runs = [await decode_once(audio, chunks) for _ in range(repeat)]
        best, out = min(runs)
        rows.append(
            {
                "format": name,
                "bytes": len(audio.data),
                "kbit_s": round(len(audio.data) * 8 / clip.seconds / 1000, 1),
                "us_per_audio_s": round(best / clip.seconds * 1e6, 1),
                "pcm_out_s": round(out / 2 / audio.config.get("sample_rate", 16_000), 2),
            }
        )
    return rows


async def one_session(base: str, pid: int, audio: Converted, seconds: float) -> dict[str, Any]:
    """Stream ``audio`` over one session's WebSocket as fast as taken; RTF and CPU/s."""
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/sessions", json={"config": audio.config}) as resp:
            session = await resp.json()
        ws = await http.ws_connect(session["ws_url"])
        cpu0, start = tree_cpu_s(pid), time.perf_counter()
        for chunk in pieces(audio, seconds):
            await ws.send_bytes(chunk)
        await ws.send_json({"type": "close"})
        finals = 0
        async for msg in ws:
            event = json.loads(msg.data)
            finals += event["event_type"] == "final"
            if event["event_type"] == "session_end":
                break
        wall, cpu = time.perf_counter() - start, tree_cpu_s(pid) - cpu0
        await ws.close()
    return {"rtf": wall / seconds, "cpu_per_audio_s": cpu / seconds, "finals": finals}


async def sessions(base: str, pid: int, clip: Clip, rounds: int) -> dict[str, dict[str, Any]]:
    paths = {"PCM16": Converted(clip.pcm, {}, 2), "WebM/Opus": convert(clip, "webm-opus")}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, audio in paths.items():  # taking turns: drift on the box hits both
            runs[name].append(await one_session(base, pid, audio, clip.seconds))
    return {
        name: {
            "rtf": round(statistics.median(r["rtf"] for r in got), 3),
            "cpu_per_audio_s": round(statistics.median(r["cpu_per_audio_s"] for r in got), 3),
            "finals": got[-1]["finals"],
        }
        for name, got in runs.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="decode runs per format (best)")
    parser.add_argument("--rounds", type=int, default=2, help="sessions per path (median)")
    parser.add_argument("--clips", type=int, default=0, help="first N shared clips (0: all)")
    args = parser.parse_args()
    chosen = list(clips())[: args.clips or None]
    clip = joined(chosen)
    print(f"{len(chosen)} clip(s), {clip.seconds:.1f} s of audio; pieces of 20 ms of audio\n")

    rows = asyncio.run(decode_costs(clip, args.repeat))
    print(f"{'format':<18}{'bytes':>9}{'kbit/s':>8}{'µs per audio s':>16}{'× linear16':>12}")
    floor = rows[0]["us_per_audio_s"] or 1.0
    for r in rows:
        print(
            f"{r['format']:<18}{r['bytes']:>9}{r['kbit_s']:>8}{r['us_per_audio_s']:>16,.1f}"
            f"{r['us_per_audio_s'] / floor:>12,.0f}"
        )

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = os.environ | {"STT_GATEWAY_LOG_LEVEL": "WARNING"}
    gateway = subprocess.Popen(
        [sys.executable, "-m", "stt_gateway", "--port", str(port)], env=env, cwd=ROOT
    )
    try:
        asyncio.run(wait_up(f"{base}/health"))
        paths = asyncio.run(sessions(base, gateway.pid, clip, args.rounds))
    finally:
        gateway.terminate()
        gateway.wait(30)
    print(f"\none local session, {args.rounds} round(s), paths taking turns (median)")
    print(f"{'fed':<12}{'RTF':>8}{'CPU s per audio s':>20}{'finals':>8}")
    for name, r in paths.items():
        print(f"{name:<12}{r['rtf']:>8.3f}{r['cpu_per_audio_s']:>20.3f}{r['finals']:>8}")
    print(json.dumps({"audio_s": round(clip.seconds, 2), "decode": rows, "sessions": paths}))


if __name__ == "__main__":
    main()
