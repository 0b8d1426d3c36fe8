"""Real speech streams beside hostile clients: does the abuse cost the real streams anything?

One gateway (``stt-gateway`` on the embedded ``local`` engine, a subprocess) and ``--rounds``
rounds of two phases in one invocation (which phase goes first alternates; each condition's
interim latencies are pooled over its phases, as one phase's p95 moves by 2x run to run on a
2-core box). Each phase streams ``--streams`` shared WAVs (each followed by 1 s of silence)
at real time, in 20 ms WebSocket frames, on their own sessions, and measures each stream's WER
(numbers spelled out, as in the tests) and interim latency (the frame holding a token's end
sent → the token received). The clean phase does only that; the abuse phase runs
``--abusers`` hostile clients at the same time, in a separate process (at niceness +19: on a
real network their CPU is not the gateway's box's), cycling through:

- garbage: a second socket on a real stream's session (``?events=false``) sending random
  binary (odd and even lengths, i.e. audio from a non-producer) and non-JSON text until the
  gateway closes it (1008), then again;
- slowloris: a raw TCP connection trickling request headers a byte at a time;
- oversized: WebSocket frames past the chunk limit on sessions of its own;
- bad POSTs: bad base64, odd byte counts and oversized bodies to the real streams' sessions.

Each real stream sends ``LEAD_IN_S`` of silence before its speech, in both phases. The
hostile clients start once every real stream holds its session's audio (its first frame was
taken), and the speech starts once the gateway has answered one of them (so a slow start of
their process on a busy box does not leave the speech unabused): the first socket to send
audio is a session's producer, so a stranger who knows a
session id before its producer connects can take it — API keys and publish tokens (issue 16)
are the answer to that, not this benchmark.

Target (issue 15): WER identical, interim p95 within 1.5× of the clean phase. Loopback only;
every loop ends with its phase. Run: ``.venv/bin/python bench/abuse.py [--streams 10]
[--abusers 200] [--rounds 3]`` (~4 min). Numbers only, no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import free_port, stop, tree_cpu_s, wait_up  # noqa: E402
from tests.audio_files import Clip, clips, spoken_wer  # noqa: E402

FRAME_BYTES = 640  # 20 ms at 16 kHz
LEAD_IN_S = 3.0
"""Silence each real stream sends before its speech, in both phases alike (the abusers start
meanwhile)."""
MAX_CHUNK_BYTES = 64_000


async def real_stream(
    http: aiohttp.ClientSession,
    session: dict[str, Any],
    c: Clip,
    producing: asyncio.Event,
    go: asyncio.Event,
) -> dict[str, Any]:
    """Stream silence, then ``c`` + 1 s of silence, at real time to ``session``; its WER and
    interim latencies.

    ``producing`` is set once the gateway has taken the first frames (this socket holds the
    session's audio); silence goes on until ``go`` is set, then the clip follows."""
    pcm = c.pcm + bytes(32_000)
    ws = await http.ws_connect(session["ws_url"])
    got: list[tuple[float, dict[str, Any]]] = []

    async def receive() -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                got.append((time.perf_counter(), json.loads(msg.data)))

    reader = asyncio.create_task(receive())
    start = time.perf_counter()
    sent_at: list[float] = []  # one per 20 ms frame, lead-in included: index = session time

    async def send(frame: bytes) -> None:
        await asyncio.sleep(max(0.0, start + len(sent_at) * 0.02 - time.perf_counter()))
        sent_at.append(time.perf_counter())
        await ws.send_bytes(frame)

    for _ in range(10):
        await send(bytes(FRAME_BYTES))
    await wait_for_audio(http, session, 0.1)
    producing.set()
    # Speech starts on a 160 ms boundary of session time (8 frames; 5 of the VAD's 32 ms
    # windows), however long the lead-in took: the VAD and the decoder then see the speech cut
    # the same way in every phase, so a difference in words is the abuse's doing.
    while not go.is_set() or len(sent_at) % 8:
        await send(bytes(FRAME_BYTES))
    for i in range(0, len(pcm), FRAME_BYTES):
        await send(pcm[i : i + FRAME_BYTES])
    await ws.send_json({"type": "close"})
    await asyncio.wait_for(reader, 60)
    text = " ".join(e["data"]["text"] for _, e in got if e["event_type"] == "final" and "seq" in e)
    interim = [
        t - sent_at[min(len(sent_at) - 1, int(e["data"]["end"] / 0.02))]
        for t, e in got
        if e["event_type"] == "token"
    ]
    errors = [e["data"]["code"] for _, e in got if e["event_type"] == "error"]
    return {"wer": spoken_wer(c.reference, text), "interim": interim, "errors": errors}


async def wait_for_audio(http: aiohttp.ClientSession, session: dict[str, Any], s: float) -> None:
    """Until the gateway has taken ``s`` seconds of the session's audio."""
    url = session["ws_url"].replace("ws://", "http://").removesuffix("/ws")
    async with asyncio.timeout(30):
        while True:
            async with http.get(url) as resp:
                if (await resp.json())["audio_seconds"] >= s:
                    return
            await asyncio.sleep(0.02)


async def phase(base: str, n: int, abusers: int, pid: int) -> dict[str, Any]:
    """One phase: ``n`` real streams, with ``abusers`` hostile clients beside them if > 0."""
    corpus = clips()
    async with aiohttp.ClientSession() as http:
        sessions = []
        for _ in range(n):
            async with http.post(f"{base}/sessions", json={"config": {}}) as resp:
                sessions.append(await resp.json())
        producing = [asyncio.Event() for _ in sessions]
        go = asyncio.Event()
        cpu0, t0 = tree_cpu_s(pid), time.perf_counter()
        streams = asyncio.gather(
            *(
                real_stream(http, s, corpus[i % len(corpus)], producing[i], go)
                for i, s in enumerate(sessions)
            )
        )
        lead_in = asyncio.create_task(asyncio.sleep(LEAD_IN_S))
        await asyncio.gather(*(p.wait() for p in producing))
        abuse: Any = None
        if abusers:
            ctx = multiprocessing.get_context("spawn")  # no state forked from a running loop
            ids = [s["session_id"] for s in sessions]
            answered = ctx.Event()
            abuse = ctx.Process(target=run_abusers, args=(base, ids, abusers, answered))
            abuse.daemon = True
            abuse.start()
            # The speech starts only once the abuse is under way (a busy box may take a while
            # to start the abusers' process).
            await asyncio.to_thread(answered.wait, 120)
        await lead_in
        go.set()
        try:
            rows = await streams
        finally:
            if abuse is not None:
                abuse.terminate()
                abuse.join()
        cpu = (tree_cpu_s(pid) - cpu0) / (time.perf_counter() - t0)
        stats: dict[str, int] = {}
        async with http.get(f"{base}/metrics") as resp:
            for line in (await resp.text()).splitlines():
                if line.startswith("stt_errors_total{"):
                    code = line.split('code="')[1].split('"')[0]
                    stats[code] = int(float(line.rsplit(" ", 1)[1]))
    return {
        "abusers": abusers,
        "streams": n,
        "wers": [round(r["wer"], 3) for r in rows],
        "interim": [x for r in rows for x in r["interim"]],
        "errors_seen_by_real_streams": sum(len(r["errors"]) for r in rows),
        "gateway_cpu": cpu,
        "errors_total": stats,
    }


def pooled(phases: list[dict[str, Any]]) -> dict[str, Any]:
    """One condition's phases taken together: interim latencies pooled (ms), WER per stream of
    the first phase (the same audio every time), CPU averaged, errors summed."""
    interim = [x for p in phases for x in p["interim"]]
    return {
        "abusers": phases[0]["abusers"],
        "streams": phases[0]["streams"],
        "phases": len(phases),
        "wer": float(np.mean(phases[0]["wers"])),
        "wers": phases[0]["wers"],
        "wers_every_phase_same": all(p["wers"] == phases[0]["wers"] for p in phases),
        "interims": len(interim),
        "interim_p50_ms": float(np.percentile(interim, 50)) * 1000,
        "interim_p95_ms": float(np.percentile(interim, 95)) * 1000,
        "interim_p95_ms_by_phase": [
            round(float(np.percentile(p["interim"], 95)) * 1000, 1) for p in phases
        ],
        "errors_seen_by_real_streams": sum(p["errors_seen_by_real_streams"] for p in phases),
        "gateway_cpu": float(np.mean([p["gateway_cpu"] for p in phases])),
        "errors_total": phases[-1]["errors_total"],
    }


def run_abusers(base: str, session_ids: list[str], n: int, answered: Any) -> None:
    """The hostile clients (a process of their own, niceness +19), until terminated;
    ``answered`` (an Event) is set once the gateway has refused one of them."""
    os.nice(19)
    asyncio.run(_abusers(base, session_ids, n, answered))


async def _abusers(base: str, session_ids: list[str], n: int, answered: Any) -> None:
    rng = random.Random(20261203)
    port = int(base.rsplit(":", 1)[1])
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        kinds = [garbage_ws, slowloris, oversized_ws, bad_posts]
        tasks = [
            asyncio.create_task(
                forever(
                    kinds[i % len(kinds)], http, base, port, rng.choice(session_ids), i, answered
                )
            )
            for i in range(n)
        ]
        await asyncio.gather(*tasks)


async def forever(
    kind: Any, http: aiohttp.ClientSession, base: str, port: int, sid: str, i: int, answered: Any
) -> None:
    rng = random.Random(i)
    while True:
        try:
            await kind(http, base, port, sid, rng)
        except (aiohttp.ClientError, OSError, TimeoutError):
            await asyncio.sleep(0.1)
        if kind is bad_posts:
            answered.set()  # its request was answered (with a 4xx): the abuse is under way


async def garbage_ws(
    http: aiohttp.ClientSession, base: str, port: int, sid: str, rng: random.Random
) -> None:
    ws = await http.ws_connect(f"{base}/sessions/{sid}/ws?events=false")
    while not ws.closed:
        if rng.random() < 0.3:
            await ws.send_str(rng.choice(["hello", "{", '{"type": "pause"}', "[1, 2]"]))
        else:
            await ws.send_bytes(os.urandom(rng.randrange(1, 1280)))
        await asyncio.sleep(0.01)
    await ws.close()


async def slowloris(
    http: aiohttp.ClientSession, base: str, port: int, sid: str, rng: random.Random
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        while not reader.at_eof():
            writer.write(b"X")
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.read(1024), 1.0)
    finally:
        writer.close()


async def oversized_ws(
    http: aiohttp.ClientSession, base: str, port: int, sid: str, rng: random.Random
) -> None:
    async with http.post(f"{base}/sessions", json={}) as resp:
        own = await resp.json()
    if "ws_url" not in own:
        await asyncio.sleep(1.0)  # at the session limit
        return
    ws = await http.ws_connect(own["ws_url"] + "?events=false")
    for size in (MAX_CHUNK_BYTES + 2, 2 * MAX_CHUNK_BYTES, 5 * MAX_CHUNK_BYTES):
        if ws.closed:
            break
        await ws.send_bytes(bytes(size))
        await asyncio.sleep(0.2)
    await ws.close()
    async with http.delete(f"{base}/sessions/{own['session_id']}"):
        pass


async def bad_posts(
    http: aiohttp.ClientSession, base: str, port: int, sid: str, rng: random.Random
) -> None:
    url = f"{base}/sessions/{sid}/audio"
    bodies: list[dict[str, Any]] = [
        {"json": {"audio_data": "not base64!!"}},
        {"data": b"\x01\x02\x03", "headers": {"Content-Type": "application/octet-stream"}},
        {
            "data": bytes(MAX_CHUNK_BYTES + 2),
            "headers": {"Content-Type": "application/octet-stream"},
        },
        {"data": b"{oops", "headers": {"Content-Type": "application/json"}},
    ]
    async with http.post(url, **rng.choice(bodies)) as resp:
        await resp.read()
    await asyncio.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=10, help="real speech streams")
    parser.add_argument("--abusers", type=int, default=200, help="hostile clients")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of one clean and one abused phase (one phase's p95 moves 2x run to run)",
    )
    args = parser.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = os.environ | {
        "STT_GATEWAY_LOG_LEVEL": "ERROR",
        "STT_GATEWAY_MAX_SESSIONS": str(args.streams + args.abusers + 10),
        "STT_GATEWAY_MAX_CHUNK_BYTES": str(MAX_CHUNK_BYTES),
        "STT_GATEWAY_HEADER_TIMEOUT_S": "5",
    }
    gateway = subprocess.Popen(
        [sys.executable, "-m", "stt_gateway", "--port", str(port), "--default-engine", "local"],
        env=env,
    )
    try:
        asyncio.run(wait_up(f"{base}/health"))
        # Warm the engine workers: every stream's decoder built once, as both phases find them.
        asyncio.run(phase(base, args.streams, 0, gateway.pid))
        runs: dict[int, list[dict[str, Any]]] = {0: [], args.abusers: []}
        for round_ in range(args.rounds):
            # Alternate which goes first, so neither condition always follows the other.
            order = (0, args.abusers) if round_ % 2 == 0 else (args.abusers, 0)
            for abusers in order:
                runs[abusers].append(asyncio.run(phase(base, args.streams, abusers, gateway.pid)))
    finally:
        stop(gateway)
    clean, abused = pooled(runs[0]), pooled(runs[args.abusers])
    print(
        f"{args.streams} real-time speech streams (local engine), {args.rounds} rounds of a "
        f"clean and an abused phase; {os.cpu_count()} cores"
    )
    print(
        f"{'phase':>8} {'abusers':>7} {'WER':>6} {'interims':>8} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p95 ms by round':>24} {'errors':>6} {'gw CPU':>7}"
    )
    for name, r in (("clean", clean), ("abused", abused)):
        by_round = " ".join(f"{x:.0f}" for x in r["interim_p95_ms_by_phase"])
        print(
            f"{name:>8} {r['abusers']:>7} {r['wer']:>6.3f} {r['interims']:>8} "
            f"{r['interim_p50_ms']:>8.1f} {r['interim_p95_ms']:>8.1f} {by_round:>24} "
            f"{r['errors_seen_by_real_streams']:>6} {r['gateway_cpu'] * 100:>6.0f}%"
        )
    ratio = abused["interim_p95_ms"] / clean["interim_p95_ms"]
    same = clean["wers_every_phase_same"] and abused["wers_every_phase_same"]
    same = same and abused["wers"] == clean["wers"]
    print(
        f"WER identical in every phase: {same}; interim p95 abused / clean, pooled: {ratio:.2f} "
        "(target ≤ 1.5)"
    )
    print(f"errors answered to the abusers, by code: {abused['errors_total']}")
    for r in (clean, abused):
        r.pop("interim", None)
    print(json.dumps({"clean": clean, "abused": abused, "p95_ratio": ratio, "wer_identical": same}))


if __name__ == "__main__":
    main()
