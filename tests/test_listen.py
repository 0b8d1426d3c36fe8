"""Deepgram's ``/v1/listen`` served by the gateway: a Deepgram client on the embedded engine.

Real gateway on loopback, real speech from ``../shared/audio``; the client side is written
from ``docs/protocols/deepgram-live.md`` (what Deepgram's SDKs send and expect, appendix).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import json
import wave
from typing import Any

import aiohttp
import numpy as np
import pytest

from stt_gateway.engines.local import MODEL
from tests.audio_files import Clip, clip, wer
from tests.conftest import Gateway, StartGateway, direct_finals
from tests.gateway_client import Received, follow_sse
from tests.timing import budget

# Python SDK 7.x's query (appendix, point 4), with an odd-sized frame split below.
SDK_QUERY = (
    "channels=1&encoding=linear16&interim_results=true&model=nova-3&punctuate=true"
    "&sample_rate=16000&smart_format=true&utterance_end_ms=1000&vad_events=true"
)
NET0001 = (
    "Deepgram did not receive audio data or a text message within the timeout window. "
    "See https://dpgr.am/net0001"
)


def ws_url(gateway: Gateway, query: str = SDK_QUERY) -> str:
    return gateway.base.replace("http://", "ws://") + "/v1/listen?" + query


def wav_bytes(c: Clip, channels: int = 1) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(c.sample_rate)
        if channels == 1:
            w.writeframes(c.pcm)
        else:  # speech left, silence right
            mono = np.frombuffer(c.pcm, dtype="<i2")
            w.writeframes(np.stack([mono, np.zeros_like(mono)], axis=1).tobytes())
    return out.getvalue()


async def stream(
    ws: aiohttp.ClientWebSocketResponse, data: bytes, chunk: int = 3_199
) -> list[dict[str, Any]]:
    """Send ``data`` in ``chunk``-byte frames (odd: the server must carry a byte over), then
    CloseStream; every message until the close."""
    messages: list[dict[str, Any]] = []

    async def receive() -> None:
        async for msg in ws:
            assert msg.type == aiohttp.WSMsgType.TEXT, "Deepgram sends JSON in text frames"
            messages.append(json.loads(msg.data))

    reader = asyncio.create_task(receive())
    for i in range(0, len(data), chunk):
        await ws.send_bytes(data[i : i + chunk])
    await ws.send_str('{"type": "CloseStream"}')
    await asyncio.wait_for(reader, budget(120))
    return messages


def results(messages: list[dict[str, Any]], final: bool | None = None) -> list[dict[str, Any]]:
    return [
        m for m in messages if m["type"] == "Results" and (final is None or m["is_final"] == final)
    ]


def text_of(messages: list[dict[str, Any]]) -> str:
    return " ".join(
        r["channel"]["alternatives"][0]["transcript"]
        for r in results(messages, final=True)
        if r["channel"]["alternatives"][0]["transcript"]
    )


async def test_a_deepgram_client_streams_and_gets_deepgram_messages(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    c = clip("goforward")
    ws = await http.ws_connect(ws_url(gateway))
    request_id = ws._response.headers["dg-request-id"]  # the 101's headers
    sse = Received()
    follower = asyncio.create_task(
        follow_sse(http, f"{gateway.base}/sessions/{request_id}/stream", sse)
    )
    messages = await stream(ws, c.pcm)
    assert ws.close_code == 1000
    await asyncio.wait_for(follower, budget(60))

    # Metadata once, last, naming the session and the audio it took.
    assert [m["type"] for m in messages].count("Metadata") == 1
    meta = messages[-1]
    assert meta["type"] == "Metadata"
    assert meta["request_id"] == request_id
    assert meta["transaction_key"] == "deprecated"
    assert meta["duration"] == pytest.approx(c.seconds, abs=1e-3)
    assert meta["sha256"] == hashlib.sha256(c.pcm).hexdigest()
    assert meta["channels"] == 1
    assert meta["created"].endswith("Z")
    (model_uuid,) = meta["models"]
    assert meta["model_info"][model_uuid]["name"] == MODEL  # the engine's own model
    assert meta["model_info"][model_uuid]["arch"] == "local"

    finals, interims = results(messages, True), results(messages, False)
    assert finals
    assert interims
    for r in finals + interims:
        assert list(r) == [
            "type", "channel_index", "duration", "start", "is_final", "speech_final",
            "channel", "metadata", "from_finalize",
        ]  # fmt: skip
        assert r["channel_index"] == [0, 1]
        assert r["metadata"]["request_id"] == request_id
        assert r["metadata"]["model_info"] == meta["model_info"][model_uuid]
        assert r["metadata"]["model_uuid"] == model_uuid
    # Finals tile the stream: each starts where the last ended.
    for before, after in itertools.pairwise(finals):
        assert after["start"] == pytest.approx(before["start"] + before["duration"], abs=2e-3)
    assert any(r["speech_final"] for r in finals)
    words = [w for r in finals for w in r["channel"]["alternatives"][0]["words"]]
    assert words
    assert all({"word", "start", "end", "confidence", "punctuated_word"} <= set(w) for w in words)
    types = [m["type"] for m in messages]
    assert types.index("SpeechStarted") < types.index("Results")
    assert "UtteranceEnd" in types

    # The same session as any other: the transcript and the SSE follower agree with it.
    direct = " ".join(f.text for f in direct_finals(c))
    async with http.get(f"{gateway.base}/sessions/{request_id}/transcript") as resp:
        transcript = await resp.json()
    assert transcript["text"] == text_of(messages) == sse.finals_text()
    assert abs(wer(c.reference, transcript["text"]) - wer(c.reference, direct)) <= 0.01


async def test_a_wav_stream_with_no_encoding_is_read_by_its_header(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    c = clip("goforward")
    raw = await stream(await http.ws_connect(ws_url(gateway)), c.pcm)
    for channels in (1, 2):
        ws = await http.ws_connect(ws_url(gateway, "model=nova-3&language=en"))
        messages = await stream(ws, wav_bytes(c, channels), chunk=1_001)
        assert ws.close_code == 1000
        assert messages[-1]["duration"] == pytest.approx(c.seconds, abs=1e-3)
        if channels == 1:
            assert text_of(messages) == text_of(raw)
        else:  # mixed to mono: half the level, nearly the same words
            assert wer(c.reference, text_of(messages)) <= wer(c.reference, text_of(raw)) + 0.1


async def test_finalize_answers_from_finalize_and_keepalive_holds_the_socket(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(listen_inactivity_s=1.0)
    c = clip("goforward")
    ws = await http.ws_connect(ws_url(gateway))
    half = c.pcm[: len(c.pcm) // 2 // 2 * 2]
    for i in range(0, len(half), 3200):
        await ws.send_bytes(half[i : i + 3200])

    async def keep_alive() -> None:  # as the SDKs do, every few hundred ms here
        while True:
            await ws.send_str('{"type":"KeepAlive"}')
            await asyncio.sleep(0.3)

    keeper = asyncio.create_task(keep_alive())
    await ws.send_str('{"type":"Finalize"}')
    got: list[dict[str, Any]] = []
    while not any(m.get("from_finalize") for m in got):
        got.append(await ws.receive_json(timeout=30))
    answer = next(m for m in got if m.get("from_finalize"))
    assert answer["is_final"] is True
    assert answer["channel"]["alternatives"][0]["transcript"]
    # KeepAlive alone keeps it open well past the inactivity window (1 s) ...
    await asyncio.sleep(2.5)
    keeper.cancel()
    assert not ws.closed
    # ... and the stream goes on afterwards.
    rest = await stream(ws, c.pcm[len(half) :])
    assert ws.close_code == 1000
    assert rest[-1]["type"] == "Metadata"
    assert rest[-1]["duration"] == pytest.approx(c.seconds, abs=1e-3)


async def test_an_idle_socket_gets_metadata_and_net0001(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(listen_inactivity_s=0.5)
    ws = await http.ws_connect(ws_url(gateway))
    request_id = ws._response.headers["dg-request-id"]
    await ws.send_bytes(bytes(3200))
    meta = await ws.receive_json(timeout=30)
    assert meta["type"] == "Metadata"
    assert meta["request_id"] == request_id
    assert meta["duration"] == pytest.approx(0.1)
    close = await ws.receive(timeout=30)
    assert (close.type, close.data, close.extra) == (aiohttp.WSMsgType.CLOSE, 1011, NET0001)
    async with http.get(f"{gateway.base}/sessions/{request_id}") as resp:
        assert (await resp.json())["state"] == "closed"


async def test_bad_frames_get_errors_to_their_socket_and_bad_audio_closes_it(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    c = clip("goforward")
    neighbour = await http.ws_connect(ws_url(gateway))
    neighbour_done = asyncio.create_task(stream(neighbour, c.pcm))

    ws = await http.ws_connect(ws_url(gateway))
    for bad in ("hello", '{"type": "Configure"}', "[1]"):
        await ws.send_str(bad)
        error = await ws.receive_json(timeout=30)
        assert error["type"] == "Error"
        assert error["variant"] == "SchemaError"
    messages = await stream(ws, c.pcm[:32_000])  # the socket still works
    assert messages[-1]["type"] == "Metadata"

    # No encoding and not WAV: DATA-0000 (Metadata, then 1008), naming what it saw.
    ws = await http.ws_connect(ws_url(gateway, "model=nova-3"))
    await ws.send_bytes(b"\xde\xadBAD" + bytes(100))
    assert (await ws.receive_json(timeout=30))["type"] == "Metadata"
    close = await ws.receive(timeout=30)
    assert close.data == 1008
    reason = str(close.extra)
    assert reason.startswith("DATA-0000")
    assert "de ad 42 41 44" in reason

    neighbour_messages = await neighbour_done
    direct = " ".join(f.text for f in direct_finals(c))
    assert abs(wer(c.reference, text_of(neighbour_messages)) - wer(c.reference, direct)) <= 0.01


@pytest.mark.parametrize(
    ("query", "status", "dg_error"),
    [
        ("model=nova-3&utterance_end_ms=999", 400, "Invalid 'utterance_end_ms' value of '999'."),
        ("model=nova-3&interim_results=True", 400, "Invalid 'interim_results' value of 'True'"),
        ("model=nova-3&encoding=pcm", 400, "Invalid 'encoding' value of 'pcm'."),
        ("model=nova-3&encoding=linear16", 400, "'sample_rate' is required"),
        ("model=nova-3&encoding=opus&sample_rate=48000", 400, "not supported by this gateway"),
        ("model=nova-3&language=ko", 400, "language: 'ko' is not available on engine 'local'"),
        ("model=nova-3&engine=nope", 400, "'nope' is not an engine"),
        ("model=nova-3&bogus=1", 400, "Unknown query parameter 'bogus'."),
        ("model=nova-3&redact=pci", 400, "'redact' is not supported"),
        ("model=nova-3&multichannel=true", 400, "needs 'channels' of 2 or more"),
    ],
)
async def test_refused_handshakes_answer_as_deepgram_does(
    gateway: Gateway, http: aiohttp.ClientSession, query: str, status: int, dg_error: str
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(ws_url(gateway, query))
    assert refused.value.status == status
    headers = refused.value.headers
    assert headers is not None
    assert dg_error in headers["dg-error"]
    async with http.get(f"{gateway.base}/v1/listen?{query}") as resp:  # the body, too
        assert resp.status == status
        body = await resp.json()
    assert body["err_code"] == "INVALID_QUERY_PARAMETER"
    assert dg_error in body["err_msg"]
    assert body["request_id"] == resp.headers["dg-request-id"]


async def test_keys_are_taken_as_deepgram_sends_them(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(api_keys="app:" + "k" * 32)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(ws_url(gateway))
    assert refused.value.status == 401
    async with http.get(f"{gateway.base}/v1/listen?model=nova-3") as resp:
        assert resp.status == 401
        body = await resp.json()
    assert body["err_code"] == "INVALID_AUTH"
    assert set(body) == {"err_code", "err_msg", "request_id"}
    # Token header (SDKs on servers) and the token subprotocol pair (browsers, appendix 2).
    ws = await http.ws_connect(ws_url(gateway), headers={"Authorization": "Token " + "k" * 32})
    assert (await stream(ws, bytes(3200)))[-1]["type"] == "Metadata"
    ws = await http.ws_connect(ws_url(gateway), protocols=("token", "k" * 32))
    assert ws.protocol == "token"
    assert (await stream(ws, bytes(3200)))[-1]["type"] == "Metadata"


async def test_a_client_that_leaves_right_after_closestream_keeps_its_transcript(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    c = clip("goforward")
    ws = await http.ws_connect(ws_url(gateway))
    request_id = ws._response.headers["dg-request-id"]
    for i in range(0, len(c.pcm), 6400):
        await ws.send_bytes(c.pcm[i : i + 6400])
    await ws.send_str('{"type":"CloseStream"}')
    await ws.close()  # as SDK 3.x's finish() does 0.5 s after CloseStream
    sse = Received()
    await asyncio.wait_for(
        follow_sse(http, f"{gateway.base}/sessions/{request_id}/stream?last_event_id=0", sse), 60
    )
    direct = " ".join(f.text for f in direct_finals(c))
    async with http.get(f"{gateway.base}/sessions/{request_id}/transcript") as resp:
        transcript = await resp.json()
    assert transcript["text"] == sse.finals_text()
    assert abs(wer(c.reference, transcript["text"]) - wer(c.reference, direct)) <= 0.01


async def test_a_file_posted_gets_deepgrams_prerecorded_answer(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    c = clip("goforward")
    direct = " ".join(f.text for f in direct_finals(c))
    url = f"{gateway.base}/v1/listen?model=nova-3&smart_format=true"
    for body, headers, query in (
        (wav_bytes(c), {"Content-Type": "application/octet-stream"}, ""),
        (wav_bytes(c), {"Content-Type": "audio/wav"}, ""),
        (c.pcm, {}, "&encoding=linear16&sample_rate=16000"),
    ):
        async with http.post(url + query, data=body, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            answer = await resp.json()
        meta = answer["metadata"]
        assert meta["request_id"] == resp.headers["dg-request-id"]
        assert meta["sha256"] == hashlib.sha256(c.pcm).hexdigest()
        assert meta["duration"] == pytest.approx(c.seconds, abs=1e-3)
        assert meta["channels"] == 1
        assert set(meta) >= {"created", "models", "model_info"}
        alternative = answer["results"]["channels"][0]["alternatives"][0]
        assert abs(wer(c.reference, alternative["transcript"]) - wer(c.reference, direct)) <= 0.01
        assert alternative["words"]
        assert 0 < alternative["confidence"] <= 1

    async with http.post(url, data=b"not audio at all") as resp:
        assert resp.status == 400
        assert "no container" in resp.headers["dg-error"]
        assert (await resp.json())["err_code"] == "INVALID_QUERY_PARAMETER"


async def test_an_empty_binary_frame_ends_the_stream_as_closestream_does(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    """Deepgram's old end-of-stream signal (§2.1): the finals, Metadata, close 1000; frames
    after it are ignored."""
    c = clip("goforward")
    ws = await http.ws_connect(ws_url(gateway))
    for i in range(0, len(c.pcm), 3200):
        await ws.send_bytes(c.pcm[i : i + 3200])
    await ws.send_bytes(b"")
    await ws.send_bytes(bytes(3200))  # ignored: the stream has ended
    messages = []
    async for msg in ws:
        messages.append(json.loads(msg.data))
    assert ws.close_code == 1000
    assert messages[-1]["type"] == "Metadata"
    assert messages[-1]["duration"] == pytest.approx(c.seconds, abs=1e-3)
    direct = " ".join(f.text for f in direct_finals(c))
    assert abs(wer(c.reference, text_of(messages)) - wer(c.reference, direct)) <= 0.01


async def test_multichannel_gives_each_channel_its_own_results(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    """``multichannel=true&channels=2`` (§1.4): live, each channel's Results carry
    ``channel_index`` ``[i, 2]`` and tile that channel, and its finals are the channel's mono
    run; pre-recorded (a stereo WAV), ``results.channels`` has one entry per channel."""
    left, right = clip("goforward"), clip("librivox-sns-0880")
    n = max(len(left.pcm), len(right.pcm)) // 2
    padded = [
        Clip(
            c.name,
            np.pad(np.frombuffer(c.pcm, "<i2"), (0, n - len(c.pcm) // 2)).tobytes(),
            16_000,
            c.reference,
        )
        for c in (left, right)
    ]
    mono = [" ".join(f.text for f in direct_finals(c)) for c in padded]
    stereo = np.stack([np.frombuffer(c.pcm, "<i2") for c in padded], axis=1)

    query = SDK_QUERY.replace("channels=1", "channels=2") + "&multichannel=true"
    ws = await http.ws_connect(ws_url(gateway, query))
    messages = await stream(ws, stereo.astype("<i2").tobytes())
    for channel in (0, 1):
        mine = [m for m in results(messages) if m["channel_index"] == [channel, 2]]
        finals = [m for m in mine if m["is_final"]]
        texts = [m["channel"]["alternatives"][0]["transcript"] for m in finals]
        assert " ".join(t for t in texts if t) == mono[channel]
        ends = [round(m["start"] + m["duration"], 3) for m in finals]
        assert [m["start"] for m in finals] == [0.0, *ends[:-1]]
    assert len(results(messages)) == len(
        [m for m in results(messages) if m["channel_index"][1] == 2]
    )
    assert messages[-1]["type"] == "Metadata"
    assert messages[-1]["channels"] == 2

    wav = io.BytesIO()
    with wave.open(wav, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(stereo.astype("<i2").tobytes())
    url = f"{gateway.base}/v1/listen?model=nova-3&multichannel=true&channels=2"
    async with http.post(url, data=wav.getvalue()) as resp:
        assert resp.status == 200, await resp.text()
        answer = await resp.json()
    assert answer["metadata"]["channels"] == 2
    got = [c["alternatives"][0]["transcript"] for c in answer["results"]["channels"]]
    assert got == mono
