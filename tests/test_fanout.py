"""Many subscribers on one session: identical seqs, and a reader that never reads costs only
itself."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import aiohttp
import numpy as np

from tests.audio_files import clip
from tests.conftest import StartGateway
from tests.gateway_client import Received, create_session, follow_sse, follow_ws, frames, paced
from tests.timing import budget

SUBSCRIBERS = 50
MAX_REPEATS = 100  # 12 min of speech: a stalled reader still not cut by then is a failure


def stalled_sse_reader(base: str, session_id: str) -> socket.socket:
    """A subscriber that connects, asks for the SSE stream and never reads a byte (its
    receive buffer as small as the kernel allows, so the gateway feels it soon)."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.connect((host, int(port)))
    request = (
        f"GET /sessions/{session_id}/stream HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    sock.sendall(request.encode())
    return sock


def read_all(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    sock.close()
    return b"".join(chunks)


async def test_fifty_subscribers_get_identical_seqs_and_a_stalled_one_is_cut(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    # The smallest send buffers: the stalled reader's socket fills within a few dozen events
    # (however few a slow box's engine makes), then its oldest pending event ages past the
    # lag limit and it is cut at the next publish.
    # The stalled writer is not aborted (subscriber_stall_s) before the test reads it.
    gw = await start_gateway(
        subscriber_max_lag_s=1.0, subscriber_send_buffer=1024, subscriber_stall_s=300.0
    )
    session = await create_session(http, gw.base)
    sid = session["session_id"]
    stalled = await asyncio.to_thread(stalled_sse_reader, gw.base, sid)
    try:
        await _fan_out(gw.base, http, session, stalled)
    finally:
        stalled.close()  # a failure above must not leak the socket into another test


async def _fan_out(
    base: str, http: aiohttp.ClientSession, session: dict[str, Any], stalled: socket.socket
) -> None:
    sid = session["session_id"]
    readers = [Received() for _ in range(SUBSCRIBERS)]
    tasks = []
    for i, received in enumerate(readers):
        if i % 2:
            tasks.append(asyncio.create_task(follow_sse(http, session["stream_url"], received)))
        else:
            ws = await http.ws_connect(session["ws_url"])
            tasks.append(asyncio.create_task(follow_ws(ws, received)))
    async with asyncio.timeout(budget(10)):
        while True:  # everyone is subscribed before the first event
            async with http.get(f"{base}/sessions/{sid}") as resp:
                if (await resp.json())["subscribers"] == SUBSCRIBERS + 1:
                    break
            await asyncio.sleep(0.01)

    speech = clip("librivox-sns-0870")
    producer = await http.ws_connect(session["ws_url"] + "?since=999999")
    sink = asyncio.create_task(follow_ws(producer, Received()))
    # Speech at 4x real time until the stalled reader is cut: it absorbs ~70 KB first
    # (aiohttp's own write buffer, then the kernel's), however many clips that takes on this
    # box (a loaded one makes fewer, coalesced interims per clip).
    for _ in range(MAX_REPEATS):
        async for frame in paced(frames(speech.pcm, 16_000), 0.02, 4.0):
            await producer.send_bytes(frame)
        async with http.get(f"{base}/sessions/{sid}") as resp:
            during = await resp.json()
        if during["subscribers"] == SUBSCRIBERS + 1:
            break
    async with http.delete(f"{base}/sessions/{sid}"):
        pass
    await asyncio.wait_for(asyncio.gather(*tasks, sink), budget(60))

    first = readers[0].seqs
    assert first == list(range(1, len(first) + 1))
    assert all(r.seqs == first for r in readers)
    delays = [
        arrived - event["timestamp"] + (time.time() - time.monotonic())
        for r in readers
        for event, arrived in zip(r.events, r.arrived, strict=True)
    ]
    # How fast is bench/fanout.py's question (a timed bound fails on a busy box): printed.
    print(
        f"\n{len(first)} events to {SUBSCRIBERS} subscribers: delivery p50 "
        f"{np.percentile(delays, 50) * 1000:.1f} ms, p95 {np.percentile(delays, 95) * 1000:.1f} ms"
    )
    assert during["subscribers"] == SUBSCRIBERS + 1  # the readers and the producer: the
    # stalled one was dropped

    # Reading at last lets the gateway finish the blocked write, then the cut-off notice.
    raw = (await asyncio.to_thread(read_all, stalled)).decode()
    messages = [json.loads(line[5:]) for line in raw.splitlines() if line.startswith("data:")]
    assert messages[-1]["event_type"] == "error"
    assert messages[-1]["data"]["code"] == "slow_consumer"
    got = [m["seq"] for m in messages if "seq" in m]
    assert got == list(range(1, len(got) + 1))
    assert len(got) < len(first)
    print(f"the stalled subscriber was cut after {len(got)} of {len(first)} events")
