"""One client cannot hurt another (``docs/api.md``): each hostile case beside a legitimate
neighbour, on a real gateway with real speech.

- a flood of bad frames from a second socket reaches only that socket, which is closed (1008);
- a second producer is refused and never heard; POST audio meanwhile is 409;
- resume ids outside 0…2^63−1 are 400 with no traceback;
- in open mode, a foreign Origin and a rebinding Host are 403, while same-origin, listed-origin
  and Origin-less clients are served.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import pytest

from tests.audio_files import Clip, clip
from tests.conftest import Gateway, StartGateway, direct_finals
from tests.gateway_client import (
    Received,
    create_session,
    follow_sse,
    follow_ws,
    frames,
    paced,
    session_info,
    wait_for_audio,
)
from tests.test_metrics import scrape
from tests.timing import budget

SPEECH = clip("librivox-sns-0880")
OTHER = clip("librivox-sns-0930")
POLICY_VIOLATION = 1008


def expected_text(c: Clip) -> str:
    return " ".join(f.text for f in direct_finals(c))


async def flood(ws: aiohttp.ClientWebSocketResponse, binary: int, text: int) -> int:
    """Send one-byte binary frames and non-JSON text frames, interleaved, until done or the
    server closes the socket; returns how many went out."""
    sent = 0
    try:
        for i in range(binary + text):
            if i % ((binary + text) // text) == 0:
                await ws.send_str("not json")
            else:
                await ws.send_bytes(b"\x01")
            sent += 1
    except ConnectionError:
        pass
    return sent


async def test_ws_flood_from_a_second_socket_reaches_only_that_socket(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    session = await create_session(http, gateway.base)
    sid = session["session_id"]
    subscriber = Received()
    sse = asyncio.create_task(follow_sse(http, session["stream_url"], subscriber))
    producer = await http.ws_connect(session["ws_url"])
    produced = Received()
    producer_reader = asyncio.create_task(follow_ws(producer, produced))

    intruder = await http.ws_connect(session["ws_url"] + "?events=false")
    intruded = Received()
    intruder_reader = asyncio.create_task(follow_ws(intruder, intruded))
    flooding = asyncio.create_task(flood(intruder, binary=2000, text=200))
    async for frame in paced(frames(SPEECH.pcm, 16_000), 0.02, 4.0):
        await producer.send_bytes(frame)
    await asyncio.wait_for(intruder_reader, budget(30))
    await flooding

    # The intruder got its own errors, none in the session's log, then 1008.
    assert intruder.close_code == POLICY_VIOLATION
    assert intruded.events, "the intruder was told what was wrong"
    assert {e["data"]["code"] for e in intruded.events} <= {
        "producer_conflict",
        "odd_byte_count",
        "bad_control",
    }
    assert not any("seq" in e for e in intruded.events)
    assert len(intruded.events) < 10

    await producer.send_json({"type": "close"})
    await asyncio.wait_for(asyncio.gather(sse, producer_reader), budget(60))
    # After the close, audio from a late socket is refused to it alone.
    last_seq = (await session_info(http, gateway.base, sid))["last_seq"]
    late = await http.ws_connect(session["ws_url"] + "?events=false")
    for _ in range(3):
        await late.send_bytes(b"\0\0" * 320)
    late_got = Received()
    await asyncio.wait_for(follow_ws(late, late_got), budget(10))
    assert {e["data"]["code"] for e in late_got.events} <= {"session_closed"}
    assert (await session_info(http, gateway.base, sid))["last_seq"] == last_seq

    for got in (subscriber, produced):
        assert got.of_type("error") == []
        assert got.seqs == list(range(1, len(got.seqs) + 1))
        assert got.logged[-1]["event_type"] == "session_end"
        assert got.logged[-1]["data"]["reason"] == "client_closed"
        assert got.finals_text() == expected_text(SPEECH)
    assert not producer.closed or producer.close_code == 1000  # closed by session_end only
    m = await scrape(http, gateway.base)
    assert m['stt_errors_total{code="producer_conflict"}'] >= 1
    assert m['stt_errors_total{code="bad_control"}'] >= 1
    assert m['stt_session_ends_total{reason="client_closed"}'] == 1


async def test_ws_second_producer_is_refused_and_never_heard(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    session = await create_session(http, gateway.base)
    sid = session["session_id"]
    subscriber = Received()
    sse = asyncio.create_task(follow_sse(http, session["stream_url"], subscriber))
    first = await http.ws_connect(session["ws_url"])
    first_got = Received()
    first_reader = asyncio.create_task(follow_ws(first, first_got))
    speech = frames(SPEECH.pcm, 16_000)
    await first.send_bytes(speech[0])
    await wait_for_audio(http, gateway.base, sid, len(speech[0]) / 32_000)

    second = await http.ws_connect(session["ws_url"])
    second_got = Received()
    second_reader = asyncio.create_task(follow_ws(second, second_got))

    async def second_streams() -> None:
        try:
            async for frame in paced(frames(OTHER.pcm, 16_000), 0.02, 4.0):
                await second.send_bytes(frame)
        except ConnectionError:
            pass  # closed for its conflicting frames

    other = asyncio.create_task(second_streams())
    async for frame in paced(speech[1:], 0.02, 4.0):
        await first.send_bytes(frame)
    async with http.post(
        session["audio_url"], data=OTHER.pcm, headers={"Content-Type": "application/octet-stream"}
    ) as resp:
        assert resp.status == 409
        assert (await resp.json())["error"]["code"] == "producer_conflict"
    await other
    await asyncio.wait_for(second_reader, budget(30))
    assert second.close_code == POLICY_VIOLATION
    conflicts = [e for e in second_got.events if e["event_type"] == "error"]
    assert conflicts
    assert {e["data"]["code"] for e in conflicts} == {"producer_conflict"}
    assert not any("seq" in e for e in conflicts)

    # The producer leaves without closing the session: the audio is free again.
    await first.close()
    await first_reader
    async with http.post(
        session["audio_url"],
        data=b"\0\0" * 16_000,
        headers={"Content-Type": "application/octet-stream"},
    ) as resp:
        assert resp.status == 202
    async with http.delete(f"{gateway.base}/sessions/{sid}") as resp:
        transcript = (await resp.json())["transcript"]
    await asyncio.wait_for(sse, budget(30))
    assert transcript == expected_text(SPEECH)
    assert subscriber.of_type("error") == []
    assert subscriber.finals_text() == transcript


BAD_RESUME_IDS = [str(10**30), str(2**64), str(2**63), "-1", "1e3", "abc", "²", "1.5"]


@pytest.mark.parametrize("value", BAD_RESUME_IDS)
async def test_bad_resume_ids_are_400_on_sse_and_ws_without_a_traceback(
    gateway: Gateway,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    value: str,
) -> None:
    caplog.set_level(logging.WARNING)
    session = await create_session(http, gateway.base)
    attempts = [
        http.get(session["stream_url"], headers={"Last-Event-ID": value}),
        http.get(session["stream_url"], params={"last_event_id": value}),
        http.get(session["ws_url"].replace("ws://", "http://"), params={"since": value}),
    ]
    for attempt in attempts:
        async with attempt as resp:
            assert resp.status == 400
            error = (await resp.json())["error"]
            assert error["code"] == "invalid_resume_id"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(session["ws_url"], params={"since": value})
    assert refused.value.status == 400
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

    # The largest valid id is served (live session: nothing after it yet).
    async with http.get(session["stream_url"], headers={"Last-Event-ID": str(2**63 - 1)}) as resp:
        assert resp.status == 200
    ws = await http.ws_connect(session["ws_url"], params={"since": str(2**63 - 1)})
    await ws.close()


async def refused(resp: aiohttp.ClientResponse, code: str) -> None:
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == code


async def test_open_mode_refuses_foreign_origins_and_rebinding_hosts_and_serves_the_rest(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(cors_origins=["https://app.example"])
    plain = {"Content-Type": "text/plain"}  # a "simple" request: no CORS preflight
    evil = {"Origin": "http://evil.example"}
    async with http.post(f"{gw.base}/sessions", data="{}", headers=plain | evil) as resp:
        await refused(resp, "forbidden_origin")
    async with http.post(f"{gw.base}/sessions", headers={"Origin": "null"}) as resp:
        await refused(resp, "forbidden_origin")
    port = gw.base.rsplit(":", 1)[1]
    rebind = {"Host": f"rebind.example:{port}", "Origin": f"http://rebind.example:{port}"}
    async with http.post(f"{gw.base}/sessions", headers=rebind) as resp:
        await refused(resp, "forbidden_host")
    assert gw.app  # nothing was created by the refused requests:
    async with http.get(f"{gw.base}/info") as resp:
        assert (await resp.json())["sessions"]["live"] == 0

    # Served: no Origin (curl, SDKs), the gateway's own origin, a listed origin.
    for headers in ({}, {"Origin": gw.base}, {"Origin": "https://app.example"}):
        session = await create_session_with(http, gw.base, headers)
        ws = await http.ws_connect(session["ws_url"], headers=headers)
        await ws.send_bytes(b"\0\0" * 320)
        await ws.send_json({"type": "close"})
        got = Received()
        await asyncio.wait_for(follow_ws(ws, got), budget(30))
        assert got.logged[-1]["event_type"] == "session_end", headers
        for name, headers_out in (("origin", evil), ("host", rebind)):
            with pytest.raises(aiohttp.WSServerHandshakeError) as handshake:
                await http.ws_connect(session["ws_url"], headers=headers_out)
            assert handshake.value.status == 403, name
    async with http.get(f"{gw.base}/", headers={"Host": f"localhost:{port}"}) as resp:
        assert resp.status == 200


async def create_session_with(
    http: aiohttp.ClientSession, base: str, headers: dict[str, str]
) -> dict[str, Any]:
    async with http.post(f"{base}/sessions", json={}, headers=headers) as resp:
        body: dict[str, Any] = await resp.json()
        assert resp.status == 201, (headers, body)
        return body
