"""Sessions at once finish with the same transcripts as one at a time."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.audio_files import Clip, clips
from tests.conftest import Gateway
from tests.gateway_client import transcribe_ws


async def transcribe_over_ws(http: aiohttp.ClientSession, gw: Gateway, clip: Clip) -> str:
    """Stream ``clip`` unpaced in 20 ms frames; return the transcript after close."""
    received = await transcribe_ws(http, gw.base, clip.pcm, clip.sample_rate)
    sid = received.events[0]["session_id"]
    async with http.get(f"{gw.base}/sessions/{sid}/transcript") as resp:
        text: str = (await resp.json())["text"]
    assert text == received.finals_text()
    return text


async def test_four_sessions_at_once_match_one_at_a_time(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    four = clips()[1:5]
    alone = [await transcribe_over_ws(http, gateway, c) for c in four]
    together = await asyncio.gather(*(transcribe_over_ws(http, gateway, c) for c in four))
    assert all(alone)
    assert list(together) == alone
