"""Deepgram's own Python SDK (``deepgram-sdk`` 7.x) pointed at the gateway: an app written for
Deepgram runs on the embedded engine by changing its base URL only."""

from __future__ import annotations

import asyncio
import io
import wave
from typing import Any

import httpx
from deepgram import AsyncDeepgramClient
from deepgram.environment import DeepgramClientEnvironment
from deepgram.listen.v1.types import ListenV1Metadata, ListenV1Results

from tests.audio_files import Clip, clip, wer
from tests.conftest import Gateway, StartGateway, direct_finals

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
        await asyncio.wait_for(reader, 120)

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
