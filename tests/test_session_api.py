"""The session routes beyond streaming: lifecycle, control messages, resume, heartbeats, limits."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp

from tests.audio_files import clip
from tests.conftest import Gateway, StartGateway, direct_finals
from tests.gateway_client import (
    Received,
    create_session,
    follow_sse,
    follow_ws,
    frames,
    sse_messages,
)
from tests.timing import budget

SPEECH = clip("librivox-sns-0920")


async def info(http: aiohttp.ClientSession, gw: Gateway, sid: str) -> dict[str, Any]:
    async with http.get(f"{gw.base}/sessions/{sid}") as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def test_session_moves_created_streaming_closed_and_delete_is_idempotent(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    created = await create_session(http, gateway.base, {"interim_results": False})
    sid = created["session_id"]
    assert created["config"] == {
        "engine": "local",
        "fallback_engine": None,  # an embedded engine does not fall back
        "language": "en-US",
        "model": "pocketsphinx-en-us",
        "interim_results": False,
        "sample_rate": 16000,
        "encoding": "linear16",
        "channels": 1,
        "multichannel": False,
        "endpointing_ms": 500,
        "utterance_end_ms": None,
        "summary": False,
    }
    assert created["stream_url"] == f"{gateway.base}/sessions/{sid}/stream"
    assert created["ws_url"] == f"{gateway.base.replace('http', 'ws')}/sessions/{sid}/ws"
    assert created["audio_url"] == f"{gateway.base}/sessions/{sid}/audio"
    assert (await info(http, gateway, sid))["state"] == "created"

    async with http.post(
        created["audio_url"], data=SPEECH.pcm, headers={"Content-Type": "application/octet-stream"}
    ) as resp:
        assert resp.status == 202
    streaming = await info(http, gateway, sid)
    assert streaming["state"] == "streaming"
    assert streaming["audio_seconds"] == round(SPEECH.seconds, 3)

    first, second = await asyncio.gather(
        http.delete(f"{gateway.base}/sessions/{sid}"), http.delete(f"{gateway.base}/sessions/{sid}")
    )
    bodies = [await first.json(), await second.json()]
    expected = " ".join(f.text for f in direct_finals(SPEECH))
    assert bodies == [{"session_id": sid, "transcript": expected}] * 2
    async with http.delete(f"{gateway.base}/sessions/{sid}") as resp:
        assert await resp.json() == bodies[0]
    closed = await info(http, gateway, sid)
    assert closed["state"] == "closed"
    # interim_results false: finals only.
    events = Received()
    await follow_sse(http, created["stream_url"], events)
    assert not events.of_type("token")
    assert [e["data"]["reason"] for e in events.of_type("session_end")] == ["client_closed"]
    assert events.seqs[-1] == closed["last_seq"]


async def test_ws_finalize_gives_a_final_before_the_endpoint(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    session = await create_session(http, gateway.base)
    ws = await http.ws_connect(session["ws_url"])
    received = Received()
    reader = asyncio.create_task(follow_ws(ws, received))
    half = frames(SPEECH.pcm, SPEECH.sample_rate)[: int(SPEECH.seconds * 25)]  # 2 of 4 s
    for frame in half:
        await ws.send_bytes(frame)
    await ws.send_json({"type": "finalize"})
    await ws.send_json({"type": "close"})
    await asyncio.wait_for(reader, budget(30))
    finals = received.of_type("final")
    assert len(finals) == 1
    assert finals[0]["data"]["speech_final"] is False
    assert finals[0]["data"]["end"] <= len(half) * 0.02 + 0.05
    assert finals[0]["data"]["words"]


async def test_resume_after_a_seq_replays_only_later_events_on_sse_and_ws(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    session = await create_session(http, gateway.base)
    sid = session["session_id"]
    async with http.post(
        session["audio_url"], data=SPEECH.pcm, headers={"Content-Type": "application/octet-stream"}
    ) as resp:
        assert resp.status == 202
    async with http.delete(f"{gateway.base}/sessions/{sid}"):
        pass
    full = Received()
    await follow_sse(http, session["stream_url"], full)
    n = len(full.seqs)
    assert full.seqs == list(range(1, n + 1))

    by_header = [
        e
        async for _, e in sse_messages(http, session["stream_url"], headers={"Last-Event-ID": "3"})
    ]
    by_query = [e async for _, e in sse_messages(http, session["stream_url"] + "?last_event_id=3")]
    ws = await http.ws_connect(session["ws_url"] + "?since=3")
    by_ws = Received()
    await follow_ws(ws, by_ws)
    assert by_header == by_query == by_ws.events == full.logged[3:]


async def test_idle_sse_stream_gets_heartbeats_without_seq(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(heartbeat_s=0.1)
    session = await create_session(http, gw.base)
    beats: list[tuple[str | None, dict[str, Any]]] = []
    async with contextlib.aclosing(sse_messages(http, session["stream_url"])) as messages:
        async for event_id, event in messages:
            beats.append((event_id, event))
            if len(beats) == 3:
                break
    assert [i for i, _ in beats] == [None] * 3
    assert {e["event_type"] for _, e in beats} == {"heartbeat"}
    assert all("seq" not in e and e["data"] == {"status": "alive"} for _, e in beats)
    assert (await info(http, gw, session["session_id"]))["last_seq"] == 0


async def test_past_max_sessions_create_is_503_until_one_closes(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(max_sessions=1)
    first = await create_session(http, gw.base)
    async with http.post(f"{gw.base}/sessions") as resp:
        assert resp.status == 503
        assert (await resp.json())["error"]["code"] == "too_many_sessions"
        assert int(resp.headers["Retry-After"]) >= 1
    async with http.delete(f"{gw.base}/sessions/{first['session_id']}"):
        pass
    await create_session(http, gw.base)


async def test_health_info_and_usage_describe_this_gateway(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{gateway.base}/health") as resp:
        assert await resp.json() == {"status": "ok"}
    async with http.get(f"{gateway.base}/info") as resp:
        body = await resp.json()
    assert body["engines"]["local"] == {
        "available": True,
        "reason": None,
        "model": "pocketsphinx-en-us",
        "languages": ["en-US"],
    }
    assert body["engines"]["whisper"]["model"] == "tiny.en"
    assert body["default_engine"] == "local"
    assert body["limits"]["max_chunk_bytes"] == 512 * 1024
    async with http.get(f"{gateway.base}/usage") as resp:
        guide = await resp.text()
    assert f"{gateway.base}/sessions" in guide
    assert "EventSource" in guide
    async with http.get(f"{gateway.base}/") as resp:
        assert resp.status == 200
        assert '<script type="module" src="/static/app.js">' in await resp.text()
    async with http.get(f"{gateway.base}/static/capture-worklet.js") as resp:
        assert resp.status == 200
        assert "registerProcessor" in await resp.text()


async def test_usage_python_example_transcribes_a_wav_when_copied(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    import re
    import sys

    from tests.audio_files import AUDIO_DIR

    async with http.get(f"{gateway.base}/usage") as resp:
        guide = await resp.text()
    (code,) = re.findall(r"```python\n(.*?)```", guide, re.S)
    wav = AUDIO_DIR / f"{SPEECH.name}.wav"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code.replace('"speech.wav"', repr(str(wav))),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), budget(60))
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == " ".join(f.text for f in direct_finals(SPEECH))
