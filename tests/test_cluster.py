"""Several gateway processes sharing sessions on one Redis (``STT_GATEWAY_REDIS_URL``): each
process a real ``stt-gateway serve`` on loopback, with real speech from ``../shared/audio``."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp

from tests.audio_files import clip
from tests.fakes.openai_chat import KEY, FakeChat
from tests.gateway_client import (
    Received,
    create_session,
    follow_sse,
    follow_ws,
    frames,
    paced,
    sse_parse,
)
from tests.gateway_process import GatewayProcess
from tests.redis_server import RedisServer
from tests.timing import budget

StartProcess = Callable[..., Coroutine[Any, Any, GatewayProcess]]
SPEED = 4.0  # times real time


async def stream_ws(
    http: aiohttp.ClientSession, base: str, session_id: str, pcm: bytes, speed: float = SPEED
) -> Received:
    """Send ``pcm`` over an audio WebSocket (20 ms frames), then close the session; the
    events that socket got."""
    got = Received()
    async with http.ws_connect(f"{base}/sessions/{session_id}/ws") as ws:
        reader = asyncio.create_task(follow_ws(ws, got))
        async for frame in paced(frames(pcm, 16_000), 0.02, speed):
            await ws.send_bytes(frame)
        await ws.send_str(json.dumps({"type": "close"}))
        await reader
    return got


async def test_subscribers_on_another_process_get_the_owners_events_whole_in_order(
    start_process: StartProcess, http: aiohttp.ClientSession
) -> None:
    a, b = await asyncio.gather(start_process(), start_process())
    c = clip("librivox-sns-0870")
    session_id = (await create_session(http, a.base))["session_id"]
    on_a, on_b, ws_b = Received(), Received(), Received()
    followers = [
        asyncio.create_task(follow_sse(http, f"{a.base}/sessions/{session_id}/stream", on_a)),
        asyncio.create_task(follow_sse(http, f"{b.base}/sessions/{session_id}/stream", on_b)),
    ]
    async with http.ws_connect(f"{b.base}/sessions/{session_id}/ws") as ws:
        followers.append(asyncio.create_task(follow_ws(ws, ws_b)))
        producer = await stream_ws(http, a.base, session_id, c.pcm)
        await asyncio.gather(*followers)
    assert on_a.of_type("final"), "no final: the clip is speech"
    assert on_a.seqs == list(range(1, len(on_a.seqs) + 1))
    assert on_b.logged == on_a.logged  # the same events, to the timestamp, in the same order
    assert ws_b.logged == on_a.logged
    assert producer.logged == on_a.logged
    async with http.get(f"{b.base}/sessions/{session_id}/transcript") as resp:
        assert resp.status == 200
        assert (await resp.json())["text"] == on_a.finals_text()
    async with http.get(f"{b.base}/sessions/{session_id}") as resp:
        info = await resp.json()
        assert (info["state"], info["last_seq"]) == ("closed", on_a.seqs[-1])


async def test_audio_sent_to_another_process_reaches_the_owners_engine(
    start_process: StartProcess, http: aiohttp.ClientSession
) -> None:
    a, b = await asyncio.gather(start_process(), start_process())
    c = clip("librivox-sns-0890")
    session_id = (await create_session(http, a.base))["session_id"]
    on_a = Received()
    follower = asyncio.create_task(follow_sse(http, f"{a.base}/sessions/{session_id}/stream", on_a))
    half = len(c.pcm) // 2
    async with http.post(
        f"{b.base}/sessions/{session_id}/audio",
        data=c.pcm[:half],
        headers={"Content-Type": "application/octet-stream"},
    ) as resp:
        assert resp.status == 202, await resp.text()
        assert (await resp.json())["bytes"] == half
    async with http.post(
        f"{b.base}/sessions/{session_id}/audio",
        data=b"\x01\x02\x03",
        headers={"Content-Type": "application/octet-stream"},
    ) as resp:  # the owner's refusal comes back as it gave it
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "odd_byte_count"
    producer = await stream_ws(http, b.base, session_id, c.pcm[half:])
    await follower
    assert on_a.of_type("final")
    assert producer.logged == on_a.logged
    assert on_a.of_type("session_end")[0]["data"]["audio_seconds"] == len(c.pcm) / 32_000
    async with http.get(f"{b.base}/sessions/{session_id}/transcript") as resp:
        assert (await resp.json())["text"] == on_a.finals_text()
    async with http.delete(f"{b.base}/sessions/{session_id}") as resp:  # idempotent, passed on
        assert resp.status == 200
        assert (await resp.json())["transcript"] == on_a.finals_text()


async def test_resume_on_another_process_after_drops_loses_and_repeats_nothing(
    start_process: StartProcess, http: aiohttp.ClientSession
) -> None:
    a, b = await asyncio.gather(start_process(), start_process())
    c = clip("librivox-sns-0920")
    session_id = (await create_session(http, a.base))["session_id"]
    on_a = Received()
    follower = asyncio.create_task(follow_sse(http, f"{a.base}/sessions/{session_id}/stream", on_a))
    producer = asyncio.create_task(stream_ws(http, a.base, session_id, c.pcm, speed=2.0))
    resumed: list[dict[str, Any]] = []
    drops = 0
    url = f"{b.base}/sessions/{session_id}/stream"
    while not resumed or resumed[-1]["event_type"] != "session_end":
        last = resumed[-1]["seq"] if resumed else 0
        headers = {"Last-Event-ID": str(last)} if last else {}
        async with http.get(url, headers=headers) as resp:
            assert resp.status == 200
            taken = 0
            async for _, event in sse_parse(resp):  # take up to three events, then hang up
                if "seq" in event:
                    resumed.append(event)
                    taken += 1
                if taken == 3 or event["event_type"] == "session_end":
                    break
        drops += 1
    await asyncio.gather(producer, follower)
    assert drops > 3
    assert resumed == on_a.logged


async def test_an_owner_killed_mid_session_ends_it_node_lost_on_the_others(
    start_process: StartProcess, http: aiohttp.ClientSession
) -> None:
    lease_s = 1.0
    a, b = await asyncio.gather(start_process(lease_s=lease_s), start_process(lease_s=lease_s))
    # Two utterances: the first one's final is out before the second ends.
    pcm = clip("librivox-sns-0930").pcm + bytes(32_000) + clip("librivox-sns-0870").pcm
    session_id = (await create_session(http, a.base))["session_id"]
    on_b, heard = Received(), asyncio.Event()
    stream = f"{b.base}/sessions/{session_id}/stream"
    follower = asyncio.create_task(follow_sse(http, stream, on_b, first_final=heard))
    async with http.ws_connect(f"{a.base}/sessions/{session_id}/ws") as ws:
        async for frame in paced(frames(pcm, 16_000), 0.02, SPEED):
            await ws.send_bytes(frame)
            if heard.is_set():
                break
        # On a loaded machine the engine may still be behind when the audio is all sent: the
        # session stays open (never closed) until a final has reached the other process.
        await asyncio.wait_for(heard.wait(), budget(60))
        a.kill()
        killed = time.monotonic()
        await follower
    ended = time.monotonic() - killed
    end = on_b.events[-1]
    assert end["event_type"] == "session_end"
    assert end["data"]["reason"] == "node_lost"
    assert on_b.seqs == list(range(1, len(on_b.seqs) + 1))
    # The lease lapses, then the next sweep (every lease/2) ends it; the rest is slack for
    # a loaded machine.
    assert ended < 10 * lease_s, f"node_lost came {ended:.1f} s after the kill"
    finals = on_b.finals_text()
    assert finals
    async with http.get(f"{b.base}/sessions/{session_id}/transcript") as resp:
        assert (await resp.json())["text"] == finals
    async with http.get(f"{b.base}/sessions/{session_id}") as resp:
        assert (await resp.json())["state"] == "closed"
    async with http.post(
        f"{b.base}/sessions/{session_id}/audio",
        data=pcm[:3200],
        headers={"Content-Type": "application/octet-stream"},
    ) as resp:  # ended, by whoever ended it
        assert resp.status == 409
        assert (await resp.json())["error"]["code"] == "session_closed"
    async with http.delete(f"{b.base}/sessions/{session_id}") as resp:
        assert resp.status == 200
        assert (await resp.json())["transcript"] == finals


async def test_redis_restarted_mid_session_loses_and_repeats_nothing_for_subscribers(
    redis_server: RedisServer, start_process: StartProcess, http: aiohttp.ClientSession
) -> None:
    a, b = await asyncio.gather(start_process(), start_process())
    before = clip("librivox-sns-0930").pcm + bytes(32_000)
    after = clip("librivox-sns-0870").pcm
    session_id = (await create_session(http, a.base))["session_id"]
    on_a, on_b = Received(), Received()
    heard = asyncio.Event()
    stream = f"/sessions/{session_id}/stream"
    followers = [
        asyncio.create_task(follow_sse(http, a.base + stream, on_a)),
        asyncio.create_task(follow_sse(http, b.base + stream, on_b, first_final=heard)),
    ]
    async with http.ws_connect(f"{a.base}/sessions/{session_id}/ws") as ws:
        async for frame in paced(frames(before, 16_000), 0.02, SPEED):
            await ws.send_bytes(frame)
        # Mid-session, once a final has reached the other process (bounded: a loaded box's
        # engine may still be behind when the first clip's audio has been sent).
        await asyncio.wait_for(heard.wait(), budget(60))
        await redis_server.restart()  # no persistence: Redis comes back empty
        async for frame in paced(frames(after, 16_000), 0.02, SPEED):
            await ws.send_bytes(frame)
        await ws.send_str(json.dumps({"type": "close"}))
        await asyncio.gather(*followers)
    # The owner wrote again what Redis lost: the other process's subscriber got every event,
    # once, in order; had anything been lost for good, an error event would say which.
    assert on_b.logged == on_a.logged
    assert not on_b.of_type("error")
    async with http.get(f"{b.base}/sessions/{session_id}/transcript") as resp:
        assert (await resp.json())["text"] == on_a.finals_text()


async def test_a_subscriber_on_another_process_counts_and_keeps_the_session_from_idling(
    start_process: StartProcess, http: aiohttp.ClientSession
) -> None:
    # The owner learns of other processes' subscribers every lease_s / 3: within the idle
    # timeout.
    settings = {"idle_timeout_s": 2.0, "lease_s": 3.0}
    a, b = await asyncio.gather(start_process(**settings), start_process(**settings))
    session_id = (await create_session(http, a.base))["session_id"]
    # An audio-only socket on the owner: no subscriber, closed when the session ends.
    closes = await http.ws_connect(f"{a.base}/sessions/{session_id}/ws?events=false")
    on_b = Received()
    follower = asyncio.create_task(follow_sse(http, f"{b.base}/sessions/{session_id}/stream", on_b))
    await asyncio.sleep(5.0)  # two idle timeouts and more
    for base in (a.base, b.base):
        async with http.get(f"{base}/sessions/{session_id}") as resp:
            info = await resp.json()
            assert (info["state"], info["subscribers"]) == ("created", 1), base
    follower.cancel()
    async with asyncio.timeout(budget(30)):
        assert (await closes.receive()).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    ended = Received()
    await follow_sse(http, f"{b.base}/sessions/{session_id}/stream", ended)
    assert ended.logged[-1]["data"]["reason"] == "idle_timeout"
    await closes.close()


async def test_workers_share_one_port_and_serve_each_others_sessions(
    start_process: StartProcess,
) -> None:
    gateway = await start_process(workers=2)
    # New connections each time: the kernel spreads them over the workers (SO_REUSEPORT).
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        nodes = set()
        for _ in range(20):
            async with http.get(f"{gateway.base}/info") as resp:
                nodes.add((await resp.json())["cluster"]["node"])
        assert len(nodes) == 2
        session_id = (await create_session(http, gateway.base))["session_id"]
        followers = [Received() for _ in range(4)]
        tasks = [
            asyncio.create_task(
                follow_sse(http, f"{gateway.base}/sessions/{session_id}/stream", got)
            )
            for got in followers
        ]
        producer = await stream_ws(http, gateway.base, session_id, clip("goforward").pcm)
        await asyncio.gather(*tasks)
    assert producer.of_type("final")
    for got in followers:
        assert got.logged == producer.logged


async def test_workers_without_redis_are_refused_with_the_reason() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stt_gateway", "serve", "--workers", "2", "--port", "8799",
        env={k: v for k, v in os.environ.items() if k != "STT_GATEWAY_REDIS_URL"},
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert "STT_GATEWAY_REDIS_URL" in err.decode()


async def test_with_redis_down_new_sessions_get_503_and_a_live_one_goes_on_locally(
    redis_server: RedisServer, start_process: StartProcess, http: aiohttp.ClientSession
) -> None:
    a = await start_process()
    c = clip("goforward")
    session_id = (await create_session(http, a.base))["session_id"]
    await redis_server.stop()
    async with http.post(f"{a.base}/sessions", json={"config": {}}) as resp:
        assert resp.status == 503
        assert (await resp.json())["error"]["code"] == "store_unavailable"
        assert "Retry-After" in resp.headers
    async with http.get(f"{a.base}/sessions/{'0' * 32}") as resp:  # only Redis could know it
        assert resp.status == 503
    on_a = Received()
    follower = asyncio.create_task(follow_sse(http, f"{a.base}/sessions/{session_id}/stream", on_a))
    producer = await stream_ws(http, a.base, session_id, c.pcm)
    await follower
    assert producer.of_type("final")
    assert on_a.logged == producer.logged


async def test_a_summary_asked_on_another_process_streams_there_and_is_kept_in_redis(
    start_process: StartProcess, http: aiohttp.ClientSession, aiohttp_server: Any
) -> None:
    chat = FakeChat()
    llm = await aiohttp_server(chat.app())
    settings = {"llm_url": str(llm.make_url("/v1")), "llm_model": "fake-model", "llm_api_key": KEY}
    a, b = await asyncio.gather(start_process(**settings), start_process(**settings))
    c = clip("librivox-sns-0890")
    session_id = (await create_session(http, a.base, {"summary": True}))["session_id"]
    on_b, heard = Received(), asyncio.Event()
    stream = f"{b.base}/sessions/{session_id}/stream"
    follower = asyncio.create_task(follow_sse(http, stream, on_b, first_final=heard))
    async with http.ws_connect(f"{a.base}/sessions/{session_id}/ws?events=false") as ws:
        for frame in frames(c.pcm, 16_000):
            await ws.send_bytes(frame)
        await ws.send_str(json.dumps({"type": "finalize"}))  # a final for what was said
        await asyncio.wait_for(heard.wait(), budget(60))
        async with http.post(f"{b.base}/sessions/{session_id}/summary") as resp:  # passed on
            assert resp.status == 200, await resp.text()
            mid = await resp.json()
    async with http.delete(f"{b.base}/sessions/{session_id}") as resp:
        assert resp.status == 200
    await follower
    assert len(chat.requests) == 2  # the one asked for, and the one at the end
    summaries = [e["data"] for e in on_b.of_type("summary")]
    assert summaries[0] == mid
    assert on_b.logged[-2]["event_type"] == "summary"
    assert "".join(e["data"]["text"] for e in on_b.of_type("summary_token")) == "".join(
        s["text"] for s in summaries
    )
    for process in (a, b):
        async with http.get(f"{process.base}/sessions/{session_id}/transcript") as resp:
            assert (await resp.json())["summary"] == summaries[-1]
        async with http.get(f"{process.base}/sessions/{session_id}") as resp:
            assert (await resp.json())["summary"] == summaries[-1]
