"""A small client for the gateway's wire protocol, as a test's outside user sees it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.audio_convert import Converted
from tests.audio_files import Clip, clips
from tests.timing import budget, pace

FRAME_MS = 20


@dataclass
class Received:
    """Events one subscriber received, with the monotonic time each arrived."""

    events: list[dict[str, Any]] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)

    def add(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self.arrived.append(time.monotonic())

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event_type"] == event_type]

    @property
    def seqs(self) -> list[int]:
        return [e["seq"] for e in self.events if "seq" in e]

    @property
    def logged(self) -> list[dict[str, Any]]:
        """Every event that carries a seq (heartbeats have none)."""
        return [e for e in self.events if "seq" in e]

    def finals_text(self) -> str:
        return " ".join(e["data"]["text"] for e in self.of_type("final"))


async def sse_messages(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> AsyncGenerator[tuple[str | None, dict[str, Any]], None]:
    """Parse a text/event-stream into (id, JSON data) pairs, per the WHATWG SSE format.

    The stream may last as long as its session (minutes on a loaded box): it is bounded by
    silence (no byte for 120 s; heartbeats come every 15 s), not by the client's total."""
    timeout = aiohttp.ClientTimeout(total=None, sock_read=budget(120))
    async with http.get(url, headers=headers, timeout=timeout) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        async for message in sse_parse(resp):
            yield message


async def sse_parse(
    resp: aiohttp.ClientResponse,
) -> AsyncGenerator[tuple[str | None, dict[str, Any]], None]:
    """The (id, JSON data) messages of an open text/event-stream response, per the WHATWG SSE
    format (``data:`` lines joined, ``retry:`` and comment lines skipped)."""
    event_id: str | None = None
    data: list[str] = []
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield event_id, json.loads("\n".join(data))
            event_id, data = None, []
        elif line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
        else:
            assert line.startswith(("retry:", ":")), f"unexpected SSE line {line!r}"


async def follow_sse(
    http: aiohttp.ClientSession,
    url: str,
    into: Received,
    connected: asyncio.Event | None = None,
    first_final: asyncio.Event | None = None,
) -> None:
    """Collect SSE events until ``session_end``; ``id:`` must equal each event's seq.
    ``first_final`` is set when the first final arrives."""
    if connected is not None:
        connected.set()
    # aclosing: leaving at session_end closes the response now, not when the generator is
    # collected (an unclosed connection warns in whichever test the collector runs).
    async with contextlib.aclosing(sse_messages(http, url)) as messages:
        async for event_id, event in messages:
            if "seq" in event:
                assert event_id == str(event["seq"])
            else:
                assert event_id is None
            into.add(event)
            if first_final is not None and event["event_type"] == "final":
                first_final.set()
            if event["event_type"] == "session_end":
                return


async def follow_ws(ws: aiohttp.ClientWebSocketResponse, into: Received) -> None:
    """Collect a WebSocket's JSON events until the server closes it."""
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            into.add(json.loads(msg.data))


def frames(pcm: bytes, sample_rate: int, frame_ms: int = FRAME_MS) -> list[bytes]:
    """Cut PCM16 into frames of ``frame_ms`` (the last may be shorter)."""
    step = sample_rate * frame_ms // 1000 * 2
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]


async def paced(chunks: list[bytes], chunk_s: float, speed: float) -> AsyncIterator[bytes]:
    """Yield chunks on an absolute schedule, ``speed`` times real time (0: no pacing),
    slowed by ``STT_TEST_SLOWDOWN`` (:func:`tests.timing.pace`)."""
    speed = pace(speed) if speed else 0.0
    start = time.monotonic()
    for i, chunk in enumerate(chunks):
        if speed:
            delay = start + i * chunk_s / speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        yield chunk


async def create_session(
    http: aiohttp.ClientSession, base: str, config: dict[str, Any] | None = None
) -> dict[str, Any]:
    async with http.post(f"{base}/sessions", json={"config": config or {}}) as resp:
        body: dict[str, Any] = await resp.json()
        assert resp.status == 201, body
        return body


async def transcribe_ws(
    http: aiohttp.ClientSession, base: str, pcm: bytes, sample_rate: int = 16_000
) -> Received:
    """Create a session, stream ``pcm`` unpaced in 20 ms WS frames, send ``close`` and return
    every event the socket received (the gateway closes it after ``session_end``)."""
    session = await create_session(http, base, {"sample_rate": sample_rate})
    ws = await http.ws_connect(session["ws_url"])
    received = Received()
    reader = asyncio.create_task(follow_ws(ws, received))
    for frame in frames(pcm, sample_rate):
        await ws.send_bytes(frame)
    await ws.send_json({"type": "close"})
    await asyncio.wait_for(reader, budget(120))
    return received


async def session_info(http: aiohttp.ClientSession, base: str, session_id: str) -> dict[str, Any]:
    """``GET /sessions/{id}``: the session's info as a client sees it."""
    async with http.get(f"{base}/sessions/{session_id}") as resp:
        info: dict[str, Any] = await resp.json()
        return info


async def wait_for_info(
    http: aiohttp.ClientSession,
    base: str,
    session_id: str,
    ready: Callable[[dict[str, Any]], bool],
    timeout_s: float = 30,
) -> dict[str, Any]:
    """Poll ``GET /sessions/{id}`` (as a client would) until ``ready(info)``; that info."""
    async with asyncio.timeout(timeout_s):
        while True:
            info = await session_info(http, base, session_id)
            if ready(info):
                return info
            await asyncio.sleep(0.01)


async def wait_for_audio(
    http: aiohttp.ClientSession, base: str, session_id: str, seconds: float
) -> None:
    """Wait until the gateway has taken ``seconds`` of a session's audio: WS frames still in
    flight on one connection can be overtaken by a DELETE on another."""
    async with asyncio.timeout(budget(30)):
        while True:
            async with http.get(f"{base}/sessions/{session_id}") as resp:
                if (await resp.json())["audio_seconds"] >= seconds - 1e-3:
                    return
            await asyncio.sleep(0.01)


SDK_SPEED = pace(4.0)
"""Times real time the SDK tests stream at (the SDK clients and our own ``/sessions`` run
they are held to alike; tests/js and tests/clients read it as ``STREAM_SPEED``). What they
check is the protocol and the finals, not timing; streaming 4x keeps frames paced, as a live
client sends them, at a quarter of the wait."""


async def sessions_live_every_clip(base: str, key: str, engine: str) -> dict[str, str]:
    """Every shared clip through :func:`sessions_live` with API key ``key``, one after
    another: clip name → transcript (what an SDK's run of the same clips is held to)."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
        return {c.name: await sessions_live(http, base, c, engine) for c in clips()}


async def sessions_live(http: aiohttp.ClientSession, base: str, c: Clip, engine: str) -> str:
    """Stream ``c`` through a new ``/sessions`` WebSocket on ``engine`` in 20 ms frames at
    :data:`SDK_SPEED` times real time, then ``close``; the transcript (its finals joined)."""
    session = await create_session(http, base, {"engine": engine, "sample_rate": c.sample_rate})
    ws = await http.ws_connect(session["ws_url"])
    received = Received()
    reader = asyncio.create_task(follow_ws(ws, received))
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i, frame in enumerate(frames(c.pcm, c.sample_rate)):
        await asyncio.sleep(max(0.0, start + i * 0.02 / SDK_SPEED - loop.time()))
        await ws.send_bytes(frame)
    await ws.send_json({"type": "close"})
    await asyncio.wait_for(reader, budget(120))
    return received.finals_text()


def cut(data: bytes, seed: int, frame_bytes: int = 1, most: int = 6000) -> list[bytes]:
    """``data`` in random-sized pieces (multiples of ``frame_bytes``)."""
    rnd = random.Random(seed)
    pieces, i = [], 0
    while i < len(data):
        n = rnd.randint(1, most // frame_bytes) * frame_bytes
        pieces.append(data[i : i + n])
        i += n
    return pieces


async def over_ws(http: aiohttp.ClientSession, base: str, audio: Converted, seed: int) -> Received:
    """One session: ``audio`` in random-sized binary frames as fast as the gateway reads
    them, then ``close``; every event the socket got."""
    session = await create_session(http, base, audio.config)
    ws = await http.ws_connect(session["ws_url"])
    received = Received()
    reader = asyncio.create_task(follow_ws(ws, received))
    for piece in cut(audio.data, seed, audio.frame_bytes):
        await ws.send_bytes(piece)
    await ws.send_json({"type": "close"})
    await asyncio.wait_for(reader, budget(120))
    return received


async def post_chunk(http: aiohttp.ClientSession, url: str, piece: bytes) -> dict[str, Any]:
    """POST one chunk, again after ``Retry-After`` while the engine is behind (429)."""
    while True:
        async with http.post(
            url, data=piece, headers={"Content-Type": "application/octet-stream"}
        ) as resp:
            body: dict[str, Any] = await resp.json()
            if resp.status != 429:
                assert resp.status == 202, body
                return body
            await asyncio.sleep(float(resp.headers["Retry-After"]) / 4)


async def over_post(http: aiohttp.ClientSession, base: str, audio: Converted, seed: int) -> str:
    """One session: ``audio`` POSTed in random-sized chunks, then ``DELETE``; its transcript."""
    session = await create_session(http, base, audio.config)
    for piece in cut(audio.data, seed, audio.frame_bytes):
        await post_chunk(http, session["audio_url"], piece)
    async with http.delete(f"{base}/sessions/{session['session_id']}") as resp:
        assert resp.status == 200
        text: str = (await resp.json())["transcript"]
        return text
