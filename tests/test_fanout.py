"""Many subscribers on one session: identical seqs, and a reader that never reads costs only
itself."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import aiohttp
import numpy as np

from tests.audio_files import clip
from tests.conftest import StartGateway
from tests.gateway_client import Received, create_session, follow_sse, follow_ws, frames, paced

SUBSCRIBERS = 50
DELAY_BOUND_S = 0.25
"""p95 of publish → receipt for the readers, on a loaded 2-core box running server and all
clients in one event loop."""


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
    # Small send buffers so the stalled reader's share fills within one test's events.
    # Small send buffers fill within a few hundred events; then the stalled reader's oldest
    # pending event ages past the lag limit and it is cut.
    gw = await start_gateway(subscriber_max_lag_s=1.0, subscriber_send_buffer=4096)
    session = await create_session(http, gw.base)
    sid = session["session_id"]
    stalled = await asyncio.to_thread(stalled_sse_reader, gw.base, sid)
    readers = [Received() for _ in range(SUBSCRIBERS)]
    tasks = []
    for i, received in enumerate(readers):
        if i % 2:
            tasks.append(asyncio.create_task(follow_sse(http, session["stream_url"], received)))
        else:
            ws = await http.ws_connect(session["ws_url"])
            tasks.append(asyncio.create_task(follow_ws(ws, received)))
    async with asyncio.timeout(10):
        while True:  # everyone is subscribed before the first event
            async with http.get(f"{gw.base}/sessions/{sid}") as resp:
                if (await resp.json())["subscribers"] == SUBSCRIBERS + 1:
                    break
            await asyncio.sleep(0.01)

    speech = clip("librivox-sns-0870")
    producer = await http.ws_connect(session["ws_url"] + "?since=999999")
    sink = asyncio.create_task(follow_ws(producer, Received()))
    for _ in range(16):  # 115 s of speech at 4x real time: enough events to fill the
        async for frame in paced(frames(speech.pcm, 16_000), 0.02, 4.0):  # stalled one
            await producer.send_bytes(frame)
    async with http.get(f"{gw.base}/sessions/{sid}") as resp:
        during = await resp.json()
    async with http.delete(f"{gw.base}/sessions/{sid}"):
        pass
    await asyncio.wait_for(asyncio.gather(*tasks, sink), 60)

    first = readers[0].seqs
    assert first == list(range(1, len(first) + 1))
    assert all(r.seqs == first for r in readers)
    delays = [
        arrived - event["timestamp"] + (time.time() - time.monotonic())
        for r in readers
        for event, arrived in zip(r.events, r.arrived, strict=True)
    ]
    p95 = float(np.percentile(delays, 95))
    print(
        f"\n{len(first)} events to {SUBSCRIBERS} subscribers: delivery p50 "
        f"{np.percentile(delays, 50) * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms"
    )
    assert p95 < DELAY_BOUND_S
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
