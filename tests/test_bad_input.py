"""Bad input gets the documented 4xx or ``error`` event, and loses nothing: the session and a
second concurrent session still finish with their full transcripts."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import aiohttp
import pytest

from tests.audio_files import Clip, clip
from tests.conftest import Gateway, StartGateway, direct_finals
from tests.gateway_client import Received, create_session, follow_ws, frames, transcribe_ws
from tests.timing import budget

MAX_CHUNK = 64_000
GOOD = clip("librivox-sns-0880")
OTHER = clip("goforward")


def expected_text(c: Clip) -> str:
    return " ".join(f.text for f in direct_finals(c))


async def error_of(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    body: dict[str, Any] = await resp.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


async def stream_other_session(http: aiohttp.ClientSession, gw: Gateway) -> str:
    """A second, well-behaved session over WebSocket; returns its transcript."""
    return (await transcribe_ws(http, gw.base, OTHER.pcm)).finals_text()


def b64(data: bytes) -> dict[str, str]:
    return {"audio_data": base64.b64encode(data).decode()}


BAD_POSTS: list[tuple[str, dict[str, Any], int, str]] = [
    ("bad base64", {"json": {"audio_data": "not base64!!"}}, 400, "bad_base64"),
    ("base64 of an odd byte count", {"json": b64(b"\x01\x02\x03")}, 400, "odd_byte_count"),
    ("raw odd byte count", {"data": b"\x01\x02\x03"}, 400, "odd_byte_count"),
    ("empty raw chunk", {"data": b""}, 400, "empty_audio"),
    ("empty base64 chunk", {"json": {"audio_data": ""}}, 400, "empty_audio"),
    ("oversized raw chunk", {"data": b"\0" * (MAX_CHUNK + 2)}, 413, "chunk_too_large"),
    ("oversized base64 chunk", {"json": b64(b"\0" * (MAX_CHUNK + 2))}, 413, "chunk_too_large"),
    ("JSON that is not JSON", {"data": b"{oops", "json_type": True}, 400, "bad_request"),
    ("JSON without audio_data", {"json": {"audio": "AAAA"}}, 400, "bad_request"),
    ("text/plain body", {"data": b"AAAA", "ctype": "text/plain"}, 415, "unsupported_media_type"),
]


async def post_bad(
    http: aiohttp.ClientSession, url: str, case: dict[str, Any]
) -> aiohttp.ClientResponse:
    if "json" in case:
        return await http.post(url, json=case["json"])
    ctype = case.get("ctype", "application/json" if case.get("json_type") else None)
    return await http.post(
        url, data=case["data"], headers={"Content-Type": ctype or "application/octet-stream"}
    )


async def test_post_bad_chunks_get_4xx_and_both_sessions_keep_their_transcripts(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(max_chunk_bytes=MAX_CHUNK)
    other = asyncio.create_task(stream_other_session(http, gw))
    session = await create_session(http, gw.base)
    good = frames(GOOD.pcm, GOOD.sample_rate, 100)
    for i, chunk in enumerate(good):
        async with http.post(
            session["audio_url"], data=chunk, headers={"Content-Type": "application/octet-stream"}
        ) as resp:
            assert resp.status == 202
        if i < len(BAD_POSTS):
            name, case, status, code = BAD_POSTS[i]
            async with await post_bad(http, session["audio_url"], case) as resp:
                assert resp.status == status, name
                assert (await error_of(resp))["code"] == code, name
    async with http.delete(f"{gw.base}/sessions/{session['session_id']}") as resp:
        assert (await resp.json())["transcript"] == expected_text(GOOD)
    assert await other == expected_text(OTHER)
    # A closed session takes no more audio, and says so.
    async with http.post(
        session["audio_url"], data=b"\0\0", headers={"Content-Type": "application/octet-stream"}
    ) as resp:
        assert resp.status == 409
        assert (await error_of(resp))["code"] == "session_closed"


BAD_WS_FRAMES: list[tuple[str, bytes | str, str]] = [
    ("odd byte count", b"\x01\x02\x03", "odd_byte_count"),
    ("empty binary frame", b"", "empty_audio"),
    ("oversized frame", b"\0" * (MAX_CHUNK + 2), "chunk_too_large"),
    ("text that is not JSON", "hello", "bad_control"),
    ("unknown control type", json.dumps({"type": "pause"}), "bad_control"),
    ("JSON that is not an object", "[1, 2]", "bad_control"),
    ("control with extra keys", json.dumps({"type": "finalize", "now": True}), "bad_control"),
]


async def test_ws_bad_frames_get_error_events_and_the_socket_and_sessions_go_on(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(max_chunk_bytes=MAX_CHUNK)
    other = asyncio.create_task(stream_other_session(http, gw))
    session = await create_session(http, gw.base)
    ws = await http.ws_connect(session["ws_url"])
    received = Received()
    reader = asyncio.create_task(follow_ws(ws, received))
    good = frames(GOOD.pcm, GOOD.sample_rate)
    for i, frame in enumerate(good):
        await ws.send_bytes(frame)
        if i % 10 == 0 and i // 10 < len(BAD_WS_FRAMES):
            _, bad, _ = BAD_WS_FRAMES[i // 10]
            if isinstance(bad, bytes):
                await ws.send_bytes(bad)
            else:
                await ws.send_str(bad)
    await ws.send_json({"type": "keepalive"})
    await ws.send_json({"type": "close"})
    await asyncio.wait_for(reader, budget(60))

    errors = received.of_type("error")
    assert [e["data"]["code"] for e in errors] == [code for _, _, code in BAD_WS_FRAMES]
    assert all(e["data"]["message"] for e in errors)
    # Errors about this socket's own frames are its alone: no seq, not in the session's log.
    assert not any("seq" in e for e in errors)
    assert received.seqs == list(range(1, len(received.seqs) + 1))
    assert received.of_type("session_end")[0]["data"]["reason"] == "client_closed"
    assert received.finals_text() == expected_text(GOOD)
    assert await other == expected_text(OTHER)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/sessions/nope"),
        ("DELETE", "/sessions/nope"),
        ("GET", "/sessions/nope/transcript"),
        ("POST", "/sessions/nope/audio"),
        ("GET", "/sessions/nope/stream"),
        ("GET", "/sessions/nope/ws"),
    ],
)
async def test_unknown_session_is_404_session_not_found(
    gateway: Gateway, http: aiohttp.ClientSession, method: str, path: str
) -> None:
    async with http.request(method, gateway.base + path, data=b"\0\0") as resp:
        assert resp.status == 404
        error = await error_of(resp)
        assert error["code"] == "session_not_found"
        assert "nope" in error["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"config": {"bogus": 1}}, "bogus"),
        ({"config": {"sample_rate": "16000"}}, "sample_rate"),
        ({"config": {"sample_rate": 100}}, "sample_rate"),
        ({"config": {"channels": 9}}, "channels"),
        ({"config": {"multichannel": True}}, "multichannel needs channels of 2 or more"),
        ({"config": {"encoding": "opus"}}, "encoding"),
        ({"config": {"engine": "vosk"}}, "engine"),
        ({"config": {"language": "ko"}}, "language"),
        ({"config": {"model": "nova-3"}}, "model"),
        ({"config": {"interim_results": "yes"}}, "interim_results"),
        ({"config": {"utterance_end_ms": 999}}, "utterance_end_ms"),
        ({"config": {"endpointing_ms": -5}}, "endpointing_ms"),
        ({"config": []}, "config"),
        ({"settings": {}}, "settings"),
    ],
)
async def test_invalid_config_is_422_naming_the_field(
    gateway: Gateway, http: aiohttp.ClientSession, body: dict[str, Any], field: str
) -> None:
    async with http.post(f"{gateway.base}/sessions", json=body) as resp:
        assert resp.status == 422
        error = await error_of(resp)
        assert error["code"] == "invalid_config"
        assert field in error["message"]


async def test_create_session_with_malformed_json_is_422(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        f"{gateway.base}/sessions", data=b"{config", headers={"Content-Type": "application/json"}
    ) as resp:
        assert resp.status == 422
        assert "JSON" in (await error_of(resp))["message"]


@pytest.mark.parametrize(("query", "header"), [("?last_event_id=abc", None), ("", "x1")])
async def test_sse_malformed_resume_id_is_400(
    gateway: Gateway, http: aiohttp.ClientSession, query: str, header: str | None
) -> None:
    session = await create_session(http, gateway.base)
    headers = {"Last-Event-ID": header} if header else {}
    async with http.get(session["stream_url"] + query, headers=headers) as resp:
        assert resp.status == 400
        assert (await error_of(resp))["code"] == "invalid_resume_id"
