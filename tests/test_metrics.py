"""/metrics after real speech: every histogram counted exactly as the events say; /ready."""

from __future__ import annotations

import asyncio

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.audio_files import clip
from tests.conftest import Gateway
from tests.gateway_client import Received, create_session, follow_sse, frames, paced
from tests.timing import budget


async def scrape(http: aiohttp.ClientSession, base: str) -> dict[str, float]:
    async with http.get(f"{base}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()) if k != "le")
            if "le" not in s.labels:
                samples[f"{s.name}{{{labels}}}"] = s.value
    return samples


async def test_metrics_count_what_a_streamed_file_produced(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    c = clip("librivox-sns-0890")
    session = await create_session(http, gateway.base)
    sid = session["session_id"]
    events = Received()
    reader = asyncio.create_task(follow_sse(http, session["stream_url"], events))
    ws = await http.ws_connect(session["ws_url"] + "?since=999999")
    audio = c.pcm + b"\0\0" * 16_000  # a second of silence: the utterance ends by endpoint
    async for frame in paced(frames(audio, 16_000), 0.02, 4.0):
        await ws.send_bytes(frame)
    live = await scrape(http, gateway.base)
    await ws.send_json({"type": "close"})
    await asyncio.wait_for(reader, budget(30))
    await ws.close()
    m = await scrape(http, gateway.base)

    assert live['stt_subscribers{transport="sse"}'] == 1
    assert live['stt_subscribers{transport="ws"}'] == 1
    assert live['stt_sessions{engine="local",state="streaming"}'] == 1
    assert m['stt_subscribers{transport="sse"}'] == 0
    assert m['stt_sessions{engine="local",state="closed"}'] == 1
    assert abs(m['stt_audio_seconds_total{engine="local"}'] - len(audio) / 32_000) < 1e-6
    for kind in ("token", "final", "speech_start", "speech_end", "session_end"):
        assert m[f'stt_events_total{{event_type="{kind}"}}'] == len(events.of_type(kind)), kind
    tokens, finals = events.of_type("token"), events.of_type("final")
    utterances_with_interims = sum(
        1
        for i, e in enumerate(events.logged)
        if e["event_type"] == "speech_start"
        and any(x["event_type"] == "token" for x in events.logged[i + 1 :])
    )
    assert m['stt_time_to_first_token_seconds_count{engine="local"}'] == utterances_with_interims
    endpoints = sum(1 for f in finals if f["data"]["speech_final"])
    assert endpoints >= 1
    assert m['stt_final_latency_seconds_count{engine="local"}'] == endpoints
    assert m['stt_gateway_latency_seconds_count{engine="local"}'] == len(tokens) + len(finals)
    ttft = m['stt_time_to_first_token_seconds_sum{engine="local"}'] / utterances_with_interims
    added = m['stt_gateway_latency_seconds_sum{engine="local"}'] / (len(tokens) + len(finals))
    print(
        f"\nTTFT mean {ttft * 1000:.0f} ms over {utterances_with_interims} utterance(s); "
        f"audio in -> result published mean {added * 1000:.0f} ms"
    )
    assert ttft > 0  # how small: bench/engine.py
    async with http.get(f"{gateway.base}/sessions/{sid}"):
        pass


async def test_ready_says_engines_and_workers_are_up(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{gateway.base}/ready") as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["ready"] is True
    assert body["engines"]["local"] is True
    assert body["engines"]["deepgram"] == "DEEPGRAM_API_KEY is not set"
