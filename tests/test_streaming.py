"""Real speech through a real gateway: WS frames and POST chunks in, SSE and WS events out."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import aiohttp
import pytest

from tests.audio_files import Clip, clip, clips, wer
from tests.conftest import Gateway, direct_finals
from tests.gateway_client import (
    FRAME_MS,
    Received,
    create_session,
    follow_sse,
    follow_ws,
    frames,
    paced,
    wait_for_audio,
)
from tests.timing import budget

SPEED = 2.0
"""Audio is sent at twice real time: fast enough for CI, slow enough that results arrive
while it streams."""
POST_CHUNK_MS = 100


async def wait_for_subscribers(http: aiohttp.ClientSession, base: str, sid: str, n: int) -> None:
    async with asyncio.timeout(budget(10)):
        while True:
            async with http.get(f"{base}/sessions/{sid}") as resp:
                if (await resp.json())["subscribers"] >= n:
                    return
            await asyncio.sleep(0.01)


async def send_ws(http: aiohttp.ClientSession, url: str, clip: Clip, into: Received) -> None:
    """Stream ``clip`` as 20 ms binary frames over a producer socket, then ``DELETE`` the
    session. The producer's socket receives events too: they go to ``into``."""
    producer = await http.ws_connect(url)
    reader = asyncio.create_task(follow_ws(producer, into))
    async for frame in paced(frames(clip.pcm, clip.sample_rate), FRAME_MS / 1000, SPEED):
        await producer.send_bytes(frame)
    sid = url.rsplit("/", 2)[-2]
    base = url.replace("ws://", "http://").removesuffix(f"/sessions/{sid}/ws")
    await wait_for_audio(http, base, sid, clip.seconds)
    async with http.delete(f"{base}/sessions/{sid}") as resp:
        assert resp.status == 200
    await asyncio.wait_for(reader, budget(60))  # the gateway closes the socket after session_end


async def send_posts(http: aiohttp.ClientSession, url: str, clip: Clip) -> None:
    """Stream ``clip`` as base64 JSON POSTs of 100 ms."""
    chunks = frames(clip.pcm, clip.sample_rate, POST_CHUNK_MS)
    async for chunk in paced(chunks, POST_CHUNK_MS / 1000, SPEED):
        body = {"audio_data": base64.b64encode(chunk).decode()}
        async with http.post(url, json=body) as resp:
            assert resp.status == 202, await resp.text()
            accepted = await resp.json()
            assert accepted == {"bytes": len(chunk), "audio_ms": len(chunk) / 2 / 16}


@pytest.mark.parametrize("transport", ["ws", "post"])
@pytest.mark.parametrize("clip", clips(), ids=lambda c: c.name)
async def test_stream_gives_interims_finals_and_the_same_seqs_to_every_subscriber(
    gateway: Gateway, http: aiohttp.ClientSession, clip: Clip, transport: str
) -> None:
    session = await create_session(http, gateway.base)
    sid = session["session_id"]
    sse, ws_sub, producer_view = Received(), Received(), Received()
    subscriber = await http.ws_connect(session["ws_url"])
    tasks = [
        asyncio.create_task(follow_sse(http, session["stream_url"], sse)),
        asyncio.create_task(follow_ws(subscriber, ws_sub)),
    ]
    await wait_for_subscribers(http, gateway.base, sid, 2)

    if transport == "ws":
        await send_ws(http, session["ws_url"], clip, producer_view)
    else:
        await send_posts(http, session["audio_url"], clip)
    async with http.delete(f"{gateway.base}/sessions/{sid}") as resp:
        assert resp.status == 200  # the second DELETE for WS: idempotent
        closed = await resp.json()
    await asyncio.wait_for(asyncio.gather(*tasks), budget(60))

    async with http.get(f"{gateway.base}/sessions/{sid}/transcript") as resp:
        transcript: dict[str, Any] = await resp.json()

    for received in (sse, ws_sub):
        types = [e["event_type"] for e in received.logged]
        tokens = received.of_type("token")
        assert tokens, "no interim results"
        # Interims lead to their final (seq order). Whether they also arrive while the audio
        # still flows is the machine's speed, measured in bench/ (a loaded box lags).
        finals = received.of_type("final")
        assert finals
        assert tokens[0]["seq"] < finals[0]["seq"], "no interim before the final"
        assert types.index("speech_start") < types.index("token")
        assert "speech_end" in types
        assert types[-1] == "session_end"
        assert received.seqs == list(range(1, len(received.seqs) + 1))
        assert received.logged[-1]["data"]["audio_seconds"] == pytest.approx(clip.seconds, abs=1e-3)
    assert sse.logged == ws_sub.logged, "SSE and WS subscribers saw different events"
    if transport == "ws":
        assert producer_view.logged == sse.logged
    assert closed == {"session_id": sid, "transcript": transcript["text"]}
    assert transcript["text"] == sse.finals_text()
    assert [s["text"] for s in transcript["segments"]] == [
        e["data"]["text"] for e in sse.of_type("final")
    ]

    direct = " ".join(f.text for f in direct_finals(clip))
    gateway_wer, direct_wer = wer(clip.reference, transcript["text"]), wer(clip.reference, direct)
    print(
        f"\n{clip.name} via {transport}: WER gateway {gateway_wer:.3f} direct {direct_wer:.3f}"
        f" | {transcript['text']!r}"
    )
    assert abs(gateway_wer - direct_wer) <= 0.01


async def test_an_audio_only_socket_gets_no_events_and_closes_when_the_session_ends(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    c = clip("librivox-sns-0870")
    session = await create_session(http, gateway.base)
    sid = session["session_id"]
    producer = await http.ws_connect(session["ws_url"] + "?events=false")
    watcher = Received()
    watching = asyncio.create_task(follow_sse(http, session["stream_url"], watcher))
    await wait_for_subscribers(http, gateway.base, sid, 1)
    for frame in frames(c.pcm, 16_000):
        await producer.send_bytes(frame)
    async with http.get(f"{gateway.base}/sessions/{sid}") as resp:
        assert (await resp.json())["subscribers"] == 1  # the SSE reader, not the producer
    await producer.send_json({"type": "close"})
    # Everything the producer's socket gets: no event, then the close after session_end.
    msg = await asyncio.wait_for(producer.receive(), budget(30))
    assert msg.type == aiohttp.WSMsgType.CLOSE
    await asyncio.wait_for(watching, budget(10))
    assert watcher.finals_text() == " ".join(f.text for f in direct_finals(c))
    assert watcher.logged[-1]["event_type"] == "session_end"
    for query in ("events=false&since=1", "events=maybe"):
        async with http.get(f"{gateway.base}/sessions/{sid}/ws?{query}") as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == "bad_request"
