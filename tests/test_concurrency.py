"""Sessions at once finish with the same transcripts as one at a time."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.audio_files import Clip, clips
from tests.conftest import Gateway
from tests.gateway_client import Received, create_session, follow_ws, frames


async def transcribe_over_ws(http: aiohttp.ClientSession, gw: Gateway, clip: Clip) -> str:
    """Stream ``clip`` unpaced in 20 ms frames; return the transcript after close."""
    session = await create_session(http, gw.base)
    ws = await http.ws_connect(session["ws_url"])
    received = Received()
    reader = asyncio.create_task(follow_ws(ws, received))
    for frame in frames(clip.pcm, clip.sample_rate):
        await ws.send_bytes(frame)
    await ws.send_json({"type": "close"})
    await asyncio.wait_for(reader, 120)
    async with http.get(f"{gw.base}/sessions/{session['session_id']}/transcript") as resp:
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
