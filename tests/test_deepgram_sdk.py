"""Deepgram's own Python SDK (``deepgram-sdk`` 7.x) pointed at the gateway: an app written for
Deepgram runs on the embedded engine by changing its base URL only."""

from __future__ import annotations

import asyncio
import io
import wave
from typing import Any

import aiohttp
import httpx
from deepgram import AsyncDeepgramClient
from deepgram.environment import DeepgramClientEnvironment
from deepgram.listen.v1.types import ListenV1Metadata, ListenV1Results

from tests.audio_files import Clip, clip, clips, wer
from tests.conftest import Gateway, StartGateway, direct_finals
from tests.gateway_client import SDK_SPEED, frames, sessions_live
from tests.timing import budget

KEY = "sdk:" + "s" * 32


def client(gateway: Gateway, http: httpx.AsyncClient | None = None) -> AsyncDeepgramClient:
    """The SDK's client with only its base URLs changed (``http``: the HTTP client it uses,
    so the test can close it)."""
    ws_base = gateway.base.replace("http://", "ws://")
    environment = DeepgramClientEnvironment(
        base=gateway.base, production=ws_base, agent=ws_base, agent_rest=gateway.base
    )
    return AsyncDeepgramClient(
        api_key=KEY.split(":", 1)[1], environment=environment, httpx_client=http
    )


def wav(c: Clip) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(c.sample_rate)
        w.writeframes(c.pcm)
    return out.getvalue()


async def test_the_sdk_streams_live_and_reads_every_message(
    start_gateway: StartGateway,
) -> None:
    gateway = await start_gateway(api_keys=KEY)
    c = clip("goforward")
    received: list[Any] = []
    async with client(gateway).listen.v1.connect(
        model="nova-3",
        encoding="linear16",
        sample_rate="16000",
        channels="1",
        interim_results="true",
        punctuate="true",
        smart_format="true",
        utterance_end_ms="1000",
        vad_events="true",
    ) as socket:

        async def receive() -> None:
            async for message in socket:
                received.append(message)

        reader = asyncio.create_task(receive())
        for i in range(0, len(c.pcm), 3200):
            await socket.send_media(c.pcm[i : i + 3200])
        await socket.send_close_stream()
        await asyncio.wait_for(reader, budget(120))

    # Every message parsed into the SDK's own types (none skipped as unknown or invalid).
    kinds = [type(m).__name__ for m in received]
    assert "dict" not in kinds, kinds
    results = [m for m in received if isinstance(m, ListenV1Results)]
    finals = [r for r in results if r.is_final]
    assert finals
    assert any(not r.is_final for r in results)
    (metadata,) = [m for m in received if isinstance(m, ListenV1Metadata)]
    assert received[-1] is metadata
    assert abs(metadata.duration - c.seconds) < 1e-3
    text = " ".join(
        r.channel.alternatives[0].transcript for r in finals if r.channel.alternatives[0].transcript
    )
    direct = " ".join(f.text for f in direct_finals(c))
    assert abs(wer(c.reference, text) - wer(c.reference, direct)) <= 0.01


async def test_the_sdk_transcribes_a_file(start_gateway: StartGateway) -> None:
    gateway = await start_gateway(api_keys=KEY)
    c = clip("goforward")
    async with httpx.AsyncClient(timeout=120) as http:
        answer = await client(gateway, http).listen.v1.media.transcribe_file(
            request=wav(c), model="nova-3", smart_format=True
        )
    assert answer.metadata.request_id
    assert abs(answer.metadata.duration - c.seconds) < 1e-3
    transcript = answer.results.channels[0].alternatives[0].transcript
    direct = " ".join(f.text for f in direct_finals(c))
    assert abs(wer(c.reference, transcript) - wer(c.reference, direct)) <= 0.01


async def sdk_live(gateway: Gateway, c: Clip, engine: str) -> tuple[str, list[str]]:
    """Stream ``c`` through the SDK in 20 ms frames at ``SDK_SPEED``; the joined finals and the
    names of the SDK types received, in order."""
    received: list[Any] = []
    async with client(gateway).listen.v1.connect(
        model="nova-3",
        encoding="linear16",
        sample_rate=str(c.sample_rate),
        interim_results="true",
        utterance_end_ms="1000",
        vad_events="true",
        request_options={"additional_query_parameters": {"engine": engine}},
    ) as socket:

        async def receive() -> None:
            async for message in socket:
                received.append(message)

        reader = asyncio.create_task(receive())
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i, frame in enumerate(frames(c.pcm, c.sample_rate)):
            await asyncio.sleep(max(0.0, start + i * 0.02 / SDK_SPEED - loop.time()))
            await socket.send_media(frame)
        await socket.send_close_stream()
        await asyncio.wait_for(reader, budget(120))
    finals = [m for m in received if isinstance(m, ListenV1Results) and m.is_final]
    text = " ".join(
        f.channel.alternatives[0].transcript for f in finals if f.channel.alternatives[0].transcript
    )
    return text, [type(m).__name__ for m in received]


async def test_every_clip_through_the_sdk_equals_the_sessions_api_and_the_file_call(
    start_gateway: StartGateway,
) -> None:
    """Engine whisper: each shared clip live through the SDK (paced 20 ms frames) gives
    the transcript our own /sessions WebSocket gives on the same engine, and the SDK's
    pre-recorded call on the file gives it too."""
    # Finals are compared, not their timing: a busy box may take long over a Whisper pass.
    gateway = await start_gateway(api_keys=KEY, whisper_pass_timeout_s=120.0)
    headers = {"Authorization": "Bearer " + KEY.split(":", 1)[1]}
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        httpx.AsyncClient(timeout=120) as files,
    ):
        for c in clips():
            (sdk_text, kinds), ours = await asyncio.gather(
                sdk_live(gateway, c, "whisper"), sessions_live(http, gateway.base, c, "whisper")
            )
            assert "dict" not in kinds, f"{c.name}: the SDK skipped a message: {kinds}"
            assert {"ListenV1Results", "ListenV1Metadata", "ListenV1SpeechStarted"} <= set(kinds)
            assert "ListenV1UtteranceEnd" in kinds
            answer = await client(gateway, files).listen.v1.media.transcribe_file(
                request=wav(c),
                model="nova-3",
                request_options={"additional_query_parameters": {"engine": "whisper"}},
            )
            filed = answer.results.channels[0].alternatives[0].transcript
            print(f"\n{c.name}: sdk {sdk_text!r} | /sessions {ours!r} | file {filed!r}")
            assert sdk_text == ours, c.name
            assert filed == sdk_text, c.name
