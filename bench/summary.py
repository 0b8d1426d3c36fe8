"""Time to a summary: from ``DELETE`` to the first ``summary_token`` and to the ``summary``,
beside the LLM server's own time to first token and to its last, in the same run.

Three processes on loopback: an OpenAI-compatible LLM server, the gateway (``stt-gateway``
on its embedded ``local`` engine, ``STT_GATEWAY_LLM_URL`` pointing at the server) and this
client. Each run (sequential, ``--runs``) creates a session with ``summary: true``, streams
a shared WAV into it over an audio-only WebSocket, waits for the final that covers its end
(``finalize``), then sends ``DELETE`` and times, on the session's SSE stream, the first
``summary_token`` and the ``summary``. Then the same prompt (the gateway's own prompt
builder, on the finals the stream gave) goes straight to the LLM server, timed the same way.
The difference is what the gateway adds.

``--llm fake`` (default): tests/fakes/openai_chat.py, with ``--first-token-ms`` standing in
for a model reading its prompt and ``--piece-ms`` between pieces. ``--llm-url URL
--llm-model NAME``: any endpoint you run (Ollama, llama.cpp's server, vLLM).

Run: ``.venv/bin/python bench/summary.py [--runs 10] [--llm-url http://127.0.0.1:8080/v1]``
Prints a table and one JSON line. No assertions: numbers only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import free_port, pct_ms, wait_up  # noqa: E402
from stt_gateway.events import FinalData  # noqa: E402
from stt_gateway.llm import OpenAIChat  # noqa: E402
from stt_gateway.models import SummaryOptions  # noqa: E402
from stt_gateway.summary import build_prompt  # noqa: E402
from tests.audio_files import clip  # noqa: E402
from tests.fakes.openai_chat import KEY, FakeChat  # noqa: E402
from tests.gateway_client import frames, sse_messages  # noqa: E402

CLIP = clip("librivox-sns-0870")


def serve_fake(port: int, first_token_s: float, piece_s: float) -> None:
    chat = FakeChat(piece_delay_s=piece_s, first_token_delay_s=first_token_s)
    web.run_app(chat.app(), host="127.0.0.1", port=port, print=None, access_log=None)


async def through_gateway(base: str) -> dict[str, Any]:
    """One session: its timings (s) from DELETE, and its finals."""
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/sessions", json={"config": {"summary": True}}) as resp:
            session = await resp.json()
        marks: dict[str, float] = {}
        finals: list[FinalData] = []
        covered = asyncio.Event()

        async def follow() -> None:
            async with contextlib.aclosing(sse_messages(http, session["stream_url"])) as events:
                async for _, event in events:
                    kind = event["event_type"]
                    if kind == "final":
                        finals.append(FinalData.model_validate(event["data"]))
                        if event["data"]["end"] >= CLIP.seconds - 0.5:
                            covered.set()
                    elif kind in ("summary_token", "summary", "error") and kind not in marks:
                        marks[kind] = time.perf_counter()
                    if kind == "session_end":
                        return

        follower = asyncio.create_task(follow())
        async with http.ws_connect(session["ws_url"] + "?events=false") as ws:
            for frame in frames(CLIP.pcm, CLIP.sample_rate):
                await ws.send_bytes(frame)
            await ws.send_str(json.dumps({"type": "finalize"}))
            await asyncio.wait_for(covered.wait(), 60)
            deleted = time.perf_counter()
            async with http.delete(f"{base}/sessions/{session['session_id']}"):
                pass
        await follower
    if "error" in marks:
        raise RuntimeError("the gateway published an error: is the LLM server up?")
    return {
        "first_token_s": marks["summary_token"] - deleted,
        "summary_s": marks["summary"] - deleted,
        "finals": finals,
    }


async def direct(url: str, model: str, finals: list[FinalData]) -> tuple[float, float]:
    """The same prompt straight to the LLM server: (time to first piece, to the last) in s."""
    chat = OpenAIChat(url, model, KEY, timeout_s=120, context_tokens=4096, max_tokens=400)
    prompt = build_prompt(finals, SummaryOptions(), None, chat)
    try:
        start = time.perf_counter()
        first = None
        async for _ in chat.stream(prompt.instructions, prompt.transcript):
            first = first or time.perf_counter() - start
        return first or float("nan"), time.perf_counter() - start
    finally:
        await chat.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--llm-url", help="an OpenAI-compatible base URL (default: the fake)")
    parser.add_argument("--llm-model", default="fake-model")
    parser.add_argument("--first-token-ms", type=float, default=300.0, help="the fake's")
    parser.add_argument("--piece-ms", type=float, default=20.0, help="the fake's")
    args = parser.parse_args()

    fake = None
    url = args.llm_url
    if url is None:
        port = free_port()
        fake = multiprocessing.get_context("spawn").Process(
            target=serve_fake,
            args=(port, args.first_token_ms / 1000, args.piece_ms / 1000),
            daemon=True,
        )
        fake.start()
        url = f"http://127.0.0.1:{port}/v1"
        asyncio.run(wait_up(url))
    gw_port = free_port()
    env = os.environ | {
        "STT_GATEWAY_LLM_URL": url,
        "STT_GATEWAY_LLM_MODEL": args.llm_model,
        "STT_GATEWAY_LLM_API_KEY": KEY,
        "STT_GATEWAY_LLM_TIMEOUT_S": "300",
        "STT_GATEWAY_LOG_LEVEL": "WARNING",
    }
    gateway = subprocess.Popen(
        [sys.executable, "-m", "stt_gateway", "--port", str(gw_port)], env=env, cwd=ROOT
    )
    measures = ("gw_first", "gw_summary", "llm_ttft", "llm_all")
    rows: dict[str, list[float]] = {k: [] for k in measures}
    try:
        asyncio.run(wait_up(f"http://127.0.0.1:{gw_port}/health"))
        for _ in range(args.runs):
            run = asyncio.run(through_gateway(f"http://127.0.0.1:{gw_port}"))
            ttft, whole = asyncio.run(direct(url, args.llm_model, run["finals"]))
            rows["gw_first"].append(run["first_token_s"])
            rows["gw_summary"].append(run["summary_s"])
            rows["llm_ttft"].append(ttft)
            rows["llm_all"].append(whole)
    finally:
        gateway.terminate()
        gateway.wait(10)
        if fake is not None:
            fake.terminate()
    names = {
        "gw_first": "DELETE → first summary_token",
        "gw_summary": "DELETE → summary",
        "llm_ttft": "LLM direct: first piece",
        "llm_all": "LLM direct: last piece",
    }
    server = "fake (tests/fakes/openai_chat.py)" if fake else url
    print(f"{args.runs} sessions of {CLIP.seconds:.1f} s speech, one at a time; LLM: {server}")
    print(f"{'measure':<30} {'p50 ms':>9} {'p95 ms':>9}")
    for key, name in names.items():
        print(f"{name:<30} {pct_ms(rows[key], 50):>9.1f} {pct_ms(rows[key], 95):>9.1f}")
    added = pct_ms(rows["gw_first"], 50) - pct_ms(rows["llm_ttft"], 50)
    print(f"gateway added to the first token (p50): {added:.1f} ms")
    print(
        json.dumps(
            {
                "bench": "summary",
                "runs": args.runs,
                "llm": server,
                **{f"{k}_p50_ms": pct_ms(v, 50) for k, v in rows.items()},
                **{f"{k}_p95_ms": pct_ms(v, 95) for k, v in rows.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
