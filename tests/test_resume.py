"""Sessions outlive their connections: resume without loss, producers that reconnect, idle
sessions that end by themselves."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import aiohttp
import pytest

from tests.audio_files import clip, clips
from tests.conftest import Gateway, StartGateway, direct_finals
from tests.gateway_client import (
    Received,
    create_session,
    follow_sse,
    follow_ws,
    frames,
    paced,
    sse_parse,
    wait_for_audio,
)
from tests.timing import budget

KILLS = 200


@pytest.fixture(params=["memory", "redis"])
def gateway(request: pytest.FixtureRequest) -> Gateway:
    """Each durable-session test on one in-memory gateway, and on two gateway processes
    sharing sessions on Redis behind a round-robin balancer (so a subscriber's reconnects,
    the producer's requests and the reads land on either)."""
    name = "gateway" if request.param == "memory" else "shared_gateway"
    found: Gateway = request.getfixturevalue(name)
    return found


async def read_some_sse(
    http: aiohttp.ClientSession, url: str, last: int, into: list[Any], linger_s: float
) -> None:
    """Resume with Last-Event-ID, take events for ``linger_s``, then hang up mid-stream."""
    headers = {"Last-Event-ID": str(last)} if last else {}
    try:
        async with asyncio.timeout(linger_s), http.get(url, headers=headers) as resp:
            if resp.status == 204:
                return
            async for _, event in sse_parse(resp):
                into.append(event)
    except TimeoutError:
        pass


async def read_some_ws(
    http: aiohttp.ClientSession, url: str, last: int, into: list[Any], linger_s: float
) -> None:
    """Resume with ?since=, take events for ``linger_s``, then drop the socket."""
    ws = await http.ws_connect(f"{url}?since={last}")
    try:
        async with asyncio.timeout(linger_s):
            async for msg in ws:
                into.append(json.loads(msg.data))
    except TimeoutError:
        pass
    finally:
        # A real drop, unless the server already ended the socket (the session ended).
        connection = ws._response.connection
        if connection is not None and connection.transport is not None:
            connection.transport.abort()
        await ws.close()


async def test_a_subscriber_killed_200_times_and_resumed_gets_the_whole_log_once(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    session = await create_session(http, gateway.base)
    rng = random.Random(20261124)

    async def produce() -> None:
        for c in clips():
            async for chunk in paced(frames(c.pcm, 16_000, 100), 0.1, 4.0):
                async with http.post(
                    session["audio_url"],
                    data=chunk,
                    headers={"Content-Type": "application/octet-stream"},
                ):
                    pass
        async with http.delete(f"{gateway.base}/sessions/{session['session_id']}"):
            pass

    producer = asyncio.create_task(produce())
    received: list[dict[str, Any]] = []
    kills = 0
    while not received or received[-1]["event_type"] != "session_end":
        last = max((e["seq"] for e in received if "seq" in e), default=0)
        linger = rng.uniform(0.0, 0.03) if kills < KILLS else 5.0
        if kills % 2:
            await read_some_ws(http, session["ws_url"], last, received, linger)
        else:
            await read_some_sse(http, session["stream_url"], last, received, linger)
        kills += 1
    await producer

    full = Received()
    await follow_sse(http, session["stream_url"], full)
    seqs = [e["seq"] for e in received if "seq" in e]
    print(f"\n{kills} connections, {len(seqs)} events received, log has {len(full.seqs)}")
    assert kills > KILLS
    assert seqs == list(range(1, len(full.seqs) + 1))  # 0 lost, 0 duplicated, in order
    assert [e for e in received if "seq" in e] == full.logged


async def test_producer_socket_dropped_and_reopened_mid_file_changes_nothing(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    c = clip("librivox-sns-0870")
    session = await create_session(http, gateway.base)
    sid = session["session_id"]
    parts = frames(c.pcm, 16_000)
    half = len(parts) // 2
    for attempt, part in enumerate((parts[:half], parts[half:])):
        ws = await http.ws_connect(session["ws_url"] + "?since=999999")
        for frame in part:
            await ws.send_bytes(frame)
        await wait_for_audio(
            http, gateway.base, sid, len(b"".join(parts[: half * (attempt + 1)])) / 32_000
        )
        if attempt == 0:
            # The gateway has every byte: cut the socket as a network would.
            ws._response.connection.transport.abort()  # type: ignore[union-attr]
            await ws.close()
    async with http.delete(f"{gateway.base}/sessions/{sid}") as resp:
        transcript = (await resp.json())["transcript"]
    await ws.close()
    assert transcript == " ".join(f.text for f in direct_finals(c))


async def test_an_idle_session_ends_and_a_followed_one_does_not(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(idle_timeout_s=0.3, retention_s=1.0)
    followed = await create_session(http, gw.base)
    watcher = await http.ws_connect(followed["ws_url"])
    # Created last, so its clock starts once setting up the other (engine workers starting
    # up, on a busy box seconds) is done: 0.8 s is past its idle end, short of its removal.
    idle = await create_session(http, gw.base)
    await asyncio.sleep(0.8)
    async with http.get(f"{gw.base}/sessions/{idle['session_id']}") as resp:
        assert (await resp.json())["state"] == "closed"
    ended = Received()
    await follow_sse(http, idle["stream_url"], ended)
    assert ended.logged[-1]["data"]["reason"] == "idle_timeout"
    async with http.get(f"{gw.base}/sessions/{followed['session_id']}") as resp:
        assert (await resp.json())["state"] == "created"
    await watcher.close()
    await asyncio.sleep(0.7)  # idle is judged within 2 x idle_timeout_s of the last activity
    watched = Received()
    await follow_sse(http, followed["stream_url"], watched)
    assert watched.logged[-1]["data"]["reason"] == "idle_timeout"
    await asyncio.sleep(1.2)  # past retention: the session is gone
    async with http.get(f"{gw.base}/sessions/{idle['session_id']}") as resp:
        assert resp.status == 404


async def test_a_websocket_peer_that_stops_answering_pings_is_dropped(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(ws_ping_s=0.2)
    session = await create_session(http, gw.base)
    dead = await http.ws_connect(session["ws_url"], autoping=False)  # never answers a ping
    alive = await http.ws_connect(session["ws_url"])
    reader = asyncio.create_task(follow_ws(alive, Received()))
    async with asyncio.timeout(budget(5)):
        while (msg := await dead.receive()).type == aiohttp.WSMsgType.PING:
            pass  # read the pings, answer none
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
    await asyncio.sleep(0.6)
    async with http.get(f"{gw.base}/sessions/{session['session_id']}") as resp:
        assert (await resp.json())["subscribers"] == 1  # the live one stays
    await alive.send_json({"type": "close"})
    await asyncio.wait_for(reader, budget(10))
