"""engine "deepgram" against a protocol-faithful local fake (tests/fakes/deepgram.py)."""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestServer

from tests.audio_files import Clip, clip, clips, spoken_wer, wer
from tests.conftest import Gateway, ServerFactory, StartGateway
from tests.fakes.deepgram import FakeDeepgram, Fault
from tests.gateway_client import Received, create_session, follow_sse, follow_ws, frames
from tests.timing import budget

KEY = "dg-secret-key-0123456789"
DG = {"engine": "deepgram"}


@pytest.fixture
async def fake(aiohttp_server: ServerFactory) -> FakeDeepgram:
    fake = FakeDeepgram(api_keys=frozenset({KEY}))
    for c in clips():
        fake.add_clip(c.pcm, c.reference)
    server: TestServer = await aiohttp_server(fake.app())
    fake.url = str(server.make_url("")).rstrip("/").replace("http://", "ws://")
    return fake


StartDG = Callable[..., Awaitable[Gateway]]


@pytest.fixture
def start_dg(start_gateway: StartGateway, fake: FakeDeepgram) -> StartDG:
    async def start(**overrides: Any) -> Gateway:
        settings: dict[str, Any] = {
            "deepgram_api_key": KEY,
            "deepgram_url": fake.url,
            "deepgram_backoff_s": 0.02,
            "deepgram_backoff_max_s": 0.1,
        }
        return await start_gateway(**(settings | overrides))

    return start


def same_words(a: str, b: str) -> bool:
    return wer(a, b) == 0.0


async def stream_ws(
    http: aiohttp.ClientSession,
    url: str,
    c: Clip,
    pause_at_s: float = 0.0,
    pause_s: float = 0.0,
    pace: float = 0.0,
) -> None:
    ws = await http.ws_connect(url)
    sink = asyncio.create_task(follow_ws(ws, Received()))
    for i, frame in enumerate(frames(c.pcm, c.sample_rate)):
        if pause_s and i == int(pause_at_s * 50):
            await asyncio.sleep(pause_s)
        await ws.send_bytes(frame)
        if pace:
            await asyncio.sleep(0.02 / pace)
    await ws.close()
    await sink


async def run_session(
    http: aiohttp.ClientSession,
    gw: Gateway,
    c: Clip,
    transport: str,
    config: dict[str, Any] | None = None,
    **stream: Any,
) -> Received:
    session = await create_session(http, gw.base, DG | (config or {}))
    events = Received()
    reader = asyncio.create_task(follow_sse(http, session["stream_url"], events))
    if transport == "ws":
        await stream_ws(http, session["ws_url"], c, **stream)
    else:
        for chunk in frames(c.pcm, c.sample_rate, 100):
            async with http.post(
                session["audio_url"], json={"audio_data": base64.b64encode(chunk).decode()}
            ) as r:
                assert r.status == 202
    async with http.delete(f"{gw.base}/sessions/{session['session_id']}") as resp:
        closed = await resp.json()
    await asyncio.wait_for(reader, budget(30))
    assert closed["transcript"] == events.finals_text()
    return events


@pytest.mark.parametrize("transport", ["ws", "post"])
@pytest.mark.parametrize("c", clips(), ids=lambda c: c.name)
async def test_deepgram_finals_equal_the_fakes_text_and_korean_is_the_default(
    start_dg: StartDG, fake: FakeDeepgram, http: aiohttp.ClientSession, c: Clip, transport: str
) -> None:
    gw = await start_dg()
    events = await run_session(http, gw, c, transport)
    assert same_words(events.finals_text(), c.reference), events.finals_text()
    assert events.of_type("token")
    assert events.of_type("speech_start")
    assert events.of_type("speech_end")
    assert events.seqs == list(range(1, len(events.seqs) + 1))
    assert events.logged[-1]["data"]["reason"] == "client_closed"
    assert not events.of_type("error")
    (conn,) = fake.connections
    assert conn.query == {
        "model": "nova-3",
        "language": "ko",
        "encoding": "linear16",
        "sample_rate": "16000",
        "channels": "1",
        "interim_results": "true",
        "vad_events": "true",
        "punctuate": "true",
        "smart_format": "true",
        "endpointing": "300",
        "utterance_end_ms": "1000",
    }
    assert conn.closestreams == 1
    assert conn.audio_bytes == len(c.pcm)


async def test_deepgram_query_carries_what_the_session_config_asked_for(
    start_dg: StartDG, fake: FakeDeepgram, http: aiohttp.ClientSession, gateway: Gateway
) -> None:
    gw = await start_dg()
    config = {
        "language": "en-US",
        "model": "nova-2",
        "endpointing_ms": 500,
        "utterance_end_ms": 1500,
        "sample_rate": 16000,
    }
    created = await create_session(http, gw.base, DG | config)
    assert created["config"] | config == created["config"]
    async with http.get(f"{gw.base}/sessions/{created['session_id']}") as resp:
        info = await resp.json()
    assert info["request_id"] == fake.connections[0].request_id
    q = fake.connections[0].query
    assert (q["language"], q["model"], q["endpointing"], q["utterance_end_ms"]) == (
        "en-US",
        "nova-2",
        "500",
        "1500",
    )
    no_interims = await create_session(http, gw.base, DG | {"interim_results": False})
    assert no_interims["config"]["utterance_end_ms"] is None
    assert fake.connections[1].query["interim_results"] == "false"
    assert "utterance_end_ms" not in fake.connections[1].query


async def test_deepgram_config_refused_upstream_is_422_with_its_reason(
    start_dg: StartDG, http: aiohttp.ClientSession
) -> None:
    gw = await start_dg()
    async with http.post(
        f"{gw.base}/sessions", json={"config": DG | {"model": "nova-2-phonecall"}}
    ) as resp:
        assert resp.status == 422
        error = (await resp.json())["error"]
    assert error["code"] == "upstream_rejected"
    assert "nova-2-phonecall/ko" in error["message"]


async def test_deepgram_without_a_key_is_unavailable(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{gateway.base}/sessions", json={"config": DG}) as resp:
        assert resp.status == 422
        error = (await resp.json())["error"]
    assert error["code"] == "engine_unavailable"
    assert "DEEPGRAM_API_KEY" in error["message"]
    async with http.get(f"{gateway.base}/info") as resp:
        engines = (await resp.json())["engines"]
    assert engines["deepgram"]["available"] is False
    assert engines["deepgram"]["languages"][0] == "ko"


async def test_deepgram_pause_of_three_idle_limits_mid_session_is_kept_alive(
    start_dg: StartDG, fake: FakeDeepgram, http: aiohttp.ClientSession
) -> None:
    """Deepgram closes a socket idle for 10 s and the gateway sends KeepAlive after 4 s
    without audio; both scaled by 1/5 here (the property is their ratio, not the seconds):
    a pause of three idle limits keeps the socket."""
    fake.inactivity_timeout_s = 2.0
    gw = await start_dg(deepgram_keepalive_s=0.8)
    c = clip("librivox-sns-0880")
    events = await run_session(http, gw, c, "ws", pause_at_s=1.5, pause_s=6.0)
    (conn,) = fake.connections
    print(f"\nKeepAlive frames during a 6 s pause: {conn.keepalives}")
    assert conn.keepalives >= 6  # every ~0.8 s; the fake closes after 2 s without a frame
    assert conn.closed_with == 1000
    assert not events.of_type("error")
    assert same_words(events.finals_text(), c.reference)


async def test_deepgram_three_drops_mid_utterance_lose_and_duplicate_nothing(
    start_dg: StartDG, fake: FakeDeepgram, http: aiohttp.ClientSession
) -> None:
    gw = await start_dg()
    c = clip("librivox-sns-0870")  # one 6.5 s utterance: every drop is mid-speech
    clean = await run_session(http, gw, c, "ws", pace=4.0)
    fake.connections.clear()
    second = 32_000
    fake.faults.extend(
        [
            Fault(drop_after_bytes=int(1.5 * second)),
            Fault(drop_after_bytes=int(2.5 * second)),
            Fault(drop_after_bytes=int(4.6 * second)),
        ]
    )
    faulty = await run_session(http, gw, c, "ws", pace=4.0)
    assert len(fake.connections) == 4
    assert faulty.finals_text() == clean.finals_text()
    assert same_words(faulty.finals_text(), c.reference)
    codes = [e["data"]["code"] for e in faulty.of_type("error")]
    assert codes.count("upstream_closed") == 3
    assert codes.count("upstream_reconnecting") == 3
    reconnected = [
        e for e in faulty.of_type("error") if e["data"]["code"] == "upstream_reconnected"
    ]
    assert len(reconnected) == 3
    assert all(e["data"]["gap_ms"] > 0 for e in reconnected)
    ends = [e["data"]["end"] for e in faulty.of_type("final")]
    assert ends == sorted(ends)
    words = [w["start"] for e in faulty.of_type("final") for w in e["data"]["words"]]
    assert words == sorted(words)
    print(
        f"\nfinals after 3 drops: {faulty.finals_text()!r}; gaps (ms): "
        f"{[e['data']['gap_ms'] for e in reconnected]}"
    )


async def test_deepgram_1011_reconnects_and_keeps_the_transcript_and_others_stream_on(
    start_dg: StartDG, fake: FakeDeepgram, http: aiohttp.ClientSession
) -> None:
    gw = await start_dg()
    c, other_clip = clip("librivox-sns-0920"), clip("librivox-sns-0930")
    fake.faults.append(Fault(close_1011_after_bytes=64_000))
    faulty = asyncio.create_task(run_session(http, gw, c, "post"))
    await asyncio.wait_for(fake.connected.wait(), budget(5))  # the faulty one took the fault
    other = await run_session(http, gw, other_clip, "ws", pace=4.0)
    events = await faulty
    codes = [e["data"]["code"] for e in events.of_type("error")]
    assert codes == ["upstream_timeout", "upstream_reconnecting", "upstream_reconnected"]
    assert "1011" in events.of_type("error")[0]["data"]["message"]
    assert same_words(events.finals_text(), c.reference)
    assert not other.of_type("error")
    assert same_words(other.finals_text(), other_clip.reference)


async def test_deepgram_401_and_429_fail_creation_clearly_and_others_stream_on(
    start_dg: StartDG, fake: FakeDeepgram, http: aiohttp.ClientSession
) -> None:
    gw = await start_dg()
    c = clip("librivox-sns-0890")
    other = asyncio.create_task(run_session(http, gw, c, "ws", pace=8.0))
    await asyncio.wait_for(fake.connected.wait(), budget(5))
    fake.faults.append(Fault(reject=401))
    async with http.post(f"{gw.base}/sessions", json={"config": DG}) as resp:
        assert resp.status == 502
        error = (await resp.json())["error"]
    assert error["code"] == "upstream_auth"
    assert "Invalid credentials" in error["message"]
    fake.faults.append(Fault(reject=429))
    async with http.post(f"{gw.base}/sessions", json={"config": DG}) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "2"
        assert (await resp.json())["error"]["code"] == "upstream_busy"
    events = await other
    assert not events.of_type("error")
    assert same_words(events.finals_text(), c.reference)


async def test_deepgram_key_refused_on_reconnect_ends_the_session_with_upstream_error(
    start_dg: StartDG, fake: FakeDeepgram, http: aiohttp.ClientSession
) -> None:
    gw = await start_dg()
    fake.faults.extend([Fault(drop_after_bytes=32_000), Fault(reject=401)])
    session = await create_session(http, gw.base, DG)
    events = Received()
    reader = asyncio.create_task(follow_sse(http, session["stream_url"], events))
    await stream_ws(http, session["ws_url"], clip("librivox-sns-0930"))
    await asyncio.wait_for(reader, budget(10))
    codes = [e["data"]["code"] for e in events.of_type("error")]
    assert codes == ["upstream_closed", "upstream_reconnecting", "upstream_auth", "upstream_error"]
    assert events.logged[-1]["data"]["reason"] == "upstream_error"
    async with http.post(
        session["audio_url"], data=b"\0\0", headers={"Content-Type": "application/octet-stream"}
    ) as resp:
        assert resp.status == 409


async def test_deepgram_key_never_appears_in_logs_errors_or_info(
    start_dg: StartDG,
    fake: FakeDeepgram,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    gw = await start_dg()
    fake.faults.extend([Fault(close_1011_after_bytes=20_000), Fault(reject=503)])
    events = await run_session(http, gw, clip("goforward"), "ws")
    fake.faults.append(Fault(reject=401))
    async with http.post(f"{gw.base}/sessions", json={"config": DG}) as resp:
        refused = await resp.text()
    async with http.get(f"{gw.base}/info") as resp:
        info = await resp.text()
    everything = caplog.text + refused + info + "".join(str(e) for e in events.events)
    assert "upstream_unavailable" in everything  # the 503 retry was reported
    assert KEY not in everything
    assert KEY[:8] not in everything


async def test_deepgram_slow_reconnect_handshake_buffers_audio_and_loses_nothing(
    start_dg: StartDG, fake: FakeDeepgram, http: aiohttp.ClientSession
) -> None:
    gw = await start_dg()
    c = clip("librivox-sns-0920")
    # The first connection drops after 1.5 s of audio; the next handshake takes 1 s.
    fake.faults.extend([Fault(drop_after_bytes=48_000), Fault(handshake_delay_s=1.0)])
    events = await run_session(http, gw, c, "ws", pace=2.0)
    reconnected = [
        e for e in events.of_type("error") if e["data"]["code"] == "upstream_reconnected"
    ]
    assert len(reconnected) == 1
    assert reconnected[0]["data"]["gap_ms"] >= 1000  # audio kept coming while it waited
    assert same_words(events.finals_text(), c.reference)


async def test_deepgram_handshake_slower_than_the_connect_timeout_fails_creation_with_503(
    start_dg: StartDG, fake: FakeDeepgram, http: aiohttp.ClientSession
) -> None:
    """STT_GATEWAY_DEEPGRAM_CONNECT_TIMEOUT_S bounds the upstream handshake (it was read by
    nothing, and aiohttp's own bound is 300 s); the next creation, answered quickly, works."""
    gw = await start_dg(deepgram_connect_timeout_s=0.5)
    fake.faults.append(Fault(handshake_delay_s=30.0))
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with http.post(f"{gw.base}/sessions", json={"config": DG}) as resp:
        assert resp.status == 503
        error = (await resp.json())["error"]
    assert loop.time() - started < 10.0
    assert error["code"] == "upstream_unavailable"
    assert "within 0.5 s" in error["message"]
    async with http.post(f"{gw.base}/sessions", json={"config": DG}) as resp:
        assert resp.status == 201


async def test_deepgram_finalize_settles_the_utterance_in_progress(
    start_dg: StartDG, fake: FakeDeepgram, http: aiohttp.ClientSession
) -> None:
    gw = await start_dg()
    c = clip("librivox-sns-0870")
    session = await create_session(http, gw.base, DG)
    ws = await http.ws_connect(session["ws_url"])
    half = frames(c.pcm, c.sample_rate)[:150]  # 3 s: mid-utterance, before any final
    for frame in half:
        await ws.send_bytes(frame)
    await ws.send_json({"type": "finalize"})
    async with asyncio.timeout(budget(5)):
        event = await ws.receive_json()
        while event["event_type"] != "final":
            event = await ws.receive_json()
    first = event["data"]
    assert first["end"] <= 3.0 + 1e-6
    assert c.reference.startswith(" ".join(w["word"].lower().rstrip(".") for w in first["words"]))
    await ws.send_json({"type": "close"})
    await asyncio.wait_for(follow_ws(ws, Received()), budget(10))
    assert fake.connections[0].finalizes == 1


async def test_ready_checks_that_deepgram_is_reachable(
    start_dg: StartDG, http: aiohttp.ClientSession
) -> None:
    gw = await start_dg()
    async with http.get(f"{gw.base}/ready") as resp:
        assert resp.status == 200
        assert (await resp.json())["engines"]["deepgram"] is True
    # A port bound but not listening: refused, and kept bound so that no server started
    # meanwhile (the gateway below) can be given it.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
        down = await start_dg(deepgram_url=f"ws://127.0.0.1:{closed_port}")
        async with http.get(f"{down.base}/ready") as resp:
            assert resp.status == 503
            body = await resp.json()
    assert "cannot reach 127.0.0.1" in body["engines"]["deepgram"]
    assert body["engines"]["local"] is True


async def test_deepgram_holds_more_upstream_streams_than_aiohttps_default_pool(
    start_dg: StartDG, fake: FakeDeepgram, http: aiohttp.ClientSession
) -> None:
    """Each session holds one upstream WebSocket for its whole life: aiohttp's default
    connector (100 connections) made the 101st session's creation wait for another to end."""
    gw = await start_dg(max_sessions=130)
    sessions = await asyncio.wait_for(
        asyncio.gather(*(create_session(http, gw.base, DG) for _ in range(120))), 30
    )
    assert fake.active == 120
    async with http.get(f"{gw.base}/sessions/{sessions[-1]['session_id']}") as resp:
        assert (await resp.json())["state"] == "created"
    for s in sessions:
        async with http.delete(f"{gw.base}/sessions/{s['session_id']}") as resp:
            assert resp.status == 200


async def test_deepgram_refusing_every_reconnect_hands_the_session_to_whisper(
    start_dg: StartDG, fake: FakeDeepgram, http: aiohttp.ClientSession
) -> None:
    gw = await start_dg(deepgram_reconnect_attempts=2)
    second = 32_000
    first, then = clip("librivox-sns-0930"), clip("librivox-sns-0880")
    # Two utterances, a second apart; quiet noise first, so the fake places this stream in
    # this clip and no other (it matches the first 100 ms).
    noise = (np.random.default_rng(7).normal(0, 20, 8_000).astype("<i2")).tobytes()
    pcm = noise + first.pcm + bytes(second) + then.pcm + bytes(second)
    fake.add_clip(pcm, f"{first.reference} {then.reference}")
    switch_at_s = (len(noise) + len(first.pcm) + 1.5 * second) / second  # into `then`
    fake.faults.extend(
        [Fault(drop_after_bytes=int(switch_at_s * second)), Fault(reject=503), Fault(reject=503)]
    )
    session = await create_session(http, gw.base, DG | {"language": "en-US"})
    assert session["config"]["fallback_engine"] == "whisper"
    events = Received()
    reader = asyncio.create_task(follow_sse(http, session["stream_url"], events))
    await stream_ws(http, session["ws_url"], Clip("both", pcm, 16_000, ""), pace=4.0)
    async with http.delete(f"{gw.base}/sessions/{session['session_id']}") as resp:
        transcript = (await resp.json())["transcript"]
    await asyncio.wait_for(reader, budget(60))

    codes = [e["data"]["code"] for e in events.of_type("error")]
    assert codes[:2] == ["upstream_closed", "upstream_reconnecting"]
    assert codes[-1] == "engine_fallback"
    assert "upstream_error" not in codes
    switch = next(
        i for i, e in enumerate(events.logged) if e["data"].get("code") == "engine_fallback"
    )
    before = [e["data"] for e in events.logged[:switch] if e["event_type"] == "final"]
    after = [e["data"] for e in events.logged[switch:] if e["event_type"] == "final"]
    print(f"\nDeepgram (fake) before the switch: {[f['text'] for f in before]}")
    print(f"whisper after it: {[f['text'] for f in after]}")
    # The fake's words (the reference of the first utterance) before; whisper's of the
    # second after, later in session time; all of it in the transcript.
    assert same_words(" ".join(f["text"] for f in before), first.reference)
    assert after
    assert after[0]["start"] >= before[-1]["end"]
    assert spoken_wer(then.reference, " ".join(f["text"] for f in after)) <= 0.25
    assert transcript == " ".join(f["text"] for f in before + after)
    assert events.logged[-1]["data"]["reason"] == "client_closed"


async def test_deepgram_session_in_a_language_no_embedded_engine_has_gets_no_fallback(
    start_dg: StartDG, http: aiohttp.ClientSession
) -> None:
    gw = await start_dg()
    session = await create_session(http, gw.base, DG)  # Korean: tiny.en cannot take over
    assert session["config"]["fallback_engine"] == "none"
    async with http.post(
        f"{gw.base}/sessions", json={"config": DG | {"fallback_engine": "whisper"}}
    ) as resp:
        assert resp.status == 422
        assert "fallback_engine" in (await resp.json())["error"]["message"]
    async with http.post(
        f"{gw.base}/sessions", json={"config": {"fallback_engine": "whisper"}}
    ) as resp:
        assert resp.status == 422  # an embedded engine does not fall back


async def test_a_deepgram_client_on_the_front_with_engine_deepgram_never_sees_upstream_drops(
    start_dg: StartDG, fake: FakeDeepgram, http: aiohttp.ClientSession
) -> None:
    """/v1/listen?engine=deepgram: Deepgram's messages come through our event log (an SSE
    follower sees the same transcript), and two upstream drops mid-utterance are invisible to
    the client: no close, no lost or doubled words."""
    gw = await start_dg()
    c = clip("librivox-sns-0870")
    second = 32_000
    fake.faults.extend(
        [Fault(drop_after_bytes=int(1.5 * second)), Fault(drop_after_bytes=int(4.0 * second))]
    )
    url = gw.base.replace("http://", "ws://") + (
        "/v1/listen?engine=deepgram&model=nova-3&language=ko&encoding=linear16"
        "&sample_rate=16000&interim_results=true&vad_events=true"
    )
    ws = await http.ws_connect(url)
    request_id = ws._response.headers["dg-request-id"]  # the 101's headers
    sse = Received()
    follower = asyncio.create_task(follow_sse(http, f"{gw.base}/sessions/{request_id}/stream", sse))
    messages: list[dict[str, Any]] = []

    async def receive() -> None:
        async for msg in ws:
            messages.append(msg.json())

    reader = asyncio.create_task(receive())
    for frame in frames(c.pcm, c.sample_rate):
        await ws.send_bytes(frame)
        await asyncio.sleep(0.005)  # 4x real time
    await ws.send_str('{"type":"CloseStream"}')
    await asyncio.wait_for(reader, budget(60))
    await asyncio.wait_for(follower, budget(60))

    assert ws.close_code == 1000
    assert [m["type"] for m in messages].count("Metadata") == 1
    assert {m["type"] for m in messages} <= {"Results", "SpeechStarted", "Metadata"}
    finals = [m for m in messages if m["type"] == "Results" and m["is_final"]]
    text = " ".join(
        r["channel"]["alternatives"][0]["transcript"]
        for r in finals
        if r["channel"]["alternatives"][0]["transcript"]
    )
    assert text == sse.finals_text()
    assert same_words(text, c.reference)
    assert finals[0]["metadata"]["model_info"]["name"] == "nova-3"
    assert finals[0]["metadata"]["model_info"]["arch"] == "deepgram"
    assert len(fake.connections) == 3  # the drops happened, upstream
    assert all(conn.query["model"] == "nova-3" for conn in fake.connections)
    assert all(conn.query["language"] == "ko" for conn in fake.connections)
    codes = [e["data"]["code"] for e in sse.of_type("error")]
    assert codes.count("upstream_reconnected") == 2
