"""A summary at the end, streamed token by token on the session's events (docs/api.md v2,
"Summary at the end"), from OpenAI-compatible chat endpoints on loopback: llama.cpp's server
with a small packaged model (a real LLM server: tests/llama_server.py), and a protocol-faithful
fake (tests/fakes/openai_chat.py, shown to be parsed by the official ``openai`` client) whose
answer is made from the prompt it got, and which fails on request."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer

from stt_gateway.app import create_app
from stt_gateway.models import Segment, SummaryOptions
from stt_gateway.summary import build_prompt
from tests.audio_files import Clip, clip
from tests.conftest import Gateway, StartGateway, make_settings
from tests.fakes.openai_chat import KEY, Behaviour, FakeChat, pieces_of, summary_of
from tests.gateway_client import (
    Received,
    create_session,
    follow_sse,
    frames,
    sse_messages,
)
from tests.llama_server import ALIAS, LlamaServer
from tests.redis_server import free_port
from tests.timing import budget

StartChat = Callable[..., Coroutine[Any, Any, tuple[FakeChat, str]]]


@pytest.fixture
async def start_chat(aiohttp_server: Callable[..., Any]) -> StartChat:
    """Start the fake chat endpoint; its fake and its ``/v1`` base URL."""

    async def start(behaviour: Behaviour = "ok", **options: Any) -> tuple[FakeChat, str]:
        chat = FakeChat(behaviour, **options)
        server: TestServer = await aiohttp_server(chat.app())
        return chat, str(server.make_url("/v1"))

    return start


async def gateway_on(start_gateway: StartGateway, url: str, **overrides: Any) -> Gateway:
    settings: dict[str, Any] = {
        "llm_url": url,
        "llm_model": "fake-model",
        "llm_api_key": KEY,
        "llm_timeout_s": 20.0,
    }
    return await start_gateway(**(settings | overrides))


async def speak(http: aiohttp.ClientSession, session: dict[str, Any], c: Clip) -> None:
    """Stream ``c`` into the session over an audio-only socket, unpaced."""
    ws = await http.ws_connect(session["ws_url"] + "?events=false")
    for frame in frames(c.pcm, c.sample_rate):
        await ws.send_bytes(frame)
    await ws.close()


async def close(http: aiohttp.ClientSession, base: str, session_id: str) -> dict[str, Any]:
    async with http.delete(f"{base}/sessions/{session_id}") as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def get(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


def timed_line(final: dict[str, Any]) -> re.Pattern[str]:
    """The prompt's line for a final: ``[m:ss–m:ss] text``."""
    return re.compile(r"^\[\d+:\d\d–\d+:\d\d\] " + re.escape(final["data"]["text"]) + "$", re.M)


async def test_the_official_openai_client_parses_the_fake_stream(start_chat: StartChat) -> None:
    chat, url = await start_chat()
    transcript = "Transcript:\n[0:00–0:02] go forward ten meters"
    async with openai.AsyncOpenAI(base_url=url, api_key=KEY, max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="fake-model",
            messages=[{"role": "user", "content": transcript}],
            stream=True,
        )
        pieces = [c.choices[0].delta.content async for c in stream if c.choices]
        with pytest.raises(openai.AuthenticationError):
            async with openai.AsyncOpenAI(base_url=url, api_key="sk-other", max_retries=0) as bad:
                await bad.chat.completions.create(
                    model="fake-model", messages=[{"role": "user", "content": "x"}], stream=True
                )
    assert "".join(p or "" for p in pieces) == summary_of(transcript)
    assert [p for p in pieces if p] == pieces_of(summary_of(transcript))
    assert len(chat.requests) == 1


async def test_a_session_that_asks_for_a_summary_streams_it_before_session_end(
    start_gateway: StartGateway, start_chat: StartChat, http: aiohttp.ClientSession
) -> None:
    chat, url = await start_chat()
    gateway = await gateway_on(start_gateway, url)
    info = await get(http, f"{gateway.base}/info")
    assert info["summary"] == {"model": "fake-model", "timeout_s": 20.0}
    c = clip("librivox-sns-0870")
    session = await create_session(
        http, gateway.base, {"summary": {"language": "en"}, "language": "en"}
    )
    received = Received()
    follower = asyncio.create_task(follow_sse(http, session["stream_url"], received))
    await speak(http, session, c)
    closed = await close(http, gateway.base, session["session_id"])
    await asyncio.wait_for(follower, budget(60))

    kinds = [e["event_type"] for e in received.logged]
    assert received.seqs == list(range(1, len(received.seqs) + 1))
    finals = received.of_type("final")
    tokens = received.of_type("summary_token")
    assert finals
    assert tokens
    # After the last final, before session_end: tokens, then one summary.
    first = kinds.index("summary_token")
    assert first > max(i for i, k in enumerate(kinds) if k == "final")
    assert kinds[first:] == ["summary_token"] * len(tokens) + ["summary", "session_end"]
    summary = received.of_type("summary")[0]["data"]
    # The fake answers from the prompt it got: every final, with its times, in order.
    prompt = chat.requests[0]["messages"]
    assert [m["role"] for m in prompt] == ["system", "user"]
    assert "Write the summary in English." in prompt[0]["content"]
    user = prompt[1]["content"]
    assert all(timed_line(f).search(user) for f in finals)
    assert summary == {
        "text": summary_of(user),
        "model": "fake-model",
        "segments_left_out": 0,
    }
    assert "".join(t["data"]["text"] for t in tokens) == summary["text"]
    assert summary_of(user).startswith(f"{len(finals)} segments. It opens with: ")
    # Kept with the transcript and the session record.
    transcript = await get(http, f"{gateway.base}/sessions/{session['session_id']}/transcript")
    assert transcript["summary"] == summary
    assert transcript["text"] == closed["transcript"] == received.finals_text()
    state = await get(http, f"{gateway.base}/sessions/{session['session_id']}")
    assert state["summary"] == summary


async def test_an_endpoint_that_answers_one_json_completion_gives_the_summary_in_one_piece(
    start_gateway: StartGateway, start_chat: StartChat, http: aiohttp.ClientSession
) -> None:
    _, url = await start_chat("whole_json")
    gateway = await gateway_on(start_gateway, url)
    session = await create_session(http, gateway.base, {"summary": True})
    received = Received()
    follower = asyncio.create_task(follow_sse(http, session["stream_url"], received))
    await speak(http, session, clip("goforward"))
    await close(http, gateway.base, session["session_id"])
    await asyncio.wait_for(follower, budget(60))
    tokens, summary = received.of_type("summary_token"), received.of_type("summary")
    assert len(tokens) == 1
    assert len(summary) == 1
    assert tokens[0]["data"]["text"] == summary[0]["data"]["text"] != ""


async def test_a_subscriber_dropped_mid_summary_resumes_and_gets_the_whole_summary_once(
    start_gateway: StartGateway, start_chat: StartChat, http: aiohttp.ClientSession
) -> None:
    _, url = await start_chat(piece_delay_s=0.05)
    gateway = await gateway_on(start_gateway, url)
    session = await create_session(http, gateway.base, {"summary": True})
    await speak(http, session, clip("librivox-sns-0870"))
    closing = asyncio.create_task(close(http, gateway.base, session["session_id"]))
    got: list[dict[str, Any]] = []
    # First connection: hang up right after the second summary_token.
    async with contextlib.aclosing(sse_messages(http, session["stream_url"])) as messages:
        async for _, event in messages:
            got.append(event)
            if len([e for e in got if e["event_type"] == "summary_token"]) == 2:
                break
    assert not closing.done()  # dropped mid-summary
    rest = Received()
    last = got[-1]["seq"]
    async with contextlib.aclosing(
        sse_messages(http, session["stream_url"], {"Last-Event-ID": str(last)})
    ) as messages:
        async for _, event in messages:
            rest.add(event)
            if event["event_type"] == "session_end":
                break
    await closing
    events = [e for e in got + rest.events if "seq" in e]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    tokens = "".join(e["data"]["text"] for e in events if e["event_type"] == "summary_token")
    [summary] = [e["data"] for e in events if e["event_type"] == "summary"]
    assert tokens == summary["text"] != ""


async def test_a_summary_asked_mid_session_streams_and_the_session_goes_on(
    start_gateway: StartGateway, start_chat: StartChat, http: aiohttp.ClientSession
) -> None:
    chat, url = await start_chat()
    gateway = await gateway_on(start_gateway, url)
    session = await create_session(http, gateway.base)  # no summary at the end
    sid = session["session_id"]
    received, heard = Received(), asyncio.Event()
    follower = asyncio.create_task(
        follow_sse(http, session["stream_url"], received, first_final=heard)
    )
    await speak(http, session, clip("goforward"))
    await asyncio.wait_for(heard.wait(), budget(60))
    async with http.post(f"{gateway.base}/sessions/{sid}/summary") as resp:
        assert resp.status == 200, await resp.text()
        answer = await resp.json()
    assert (await get(http, f"{gateway.base}/sessions/{sid}"))["state"] != "closed"
    await speak(http, session, clip("librivox-sns-0880"))
    await close(http, gateway.base, sid)
    await asyncio.wait_for(follower, budget(60))
    assert len(chat.requests) == 1  # the one asked for; none at the end (not configured)
    [summary] = received.of_type("summary")
    assert summary["data"] == answer
    tokens = received.of_type("summary_token")
    assert "".join(t["data"]["text"] for t in tokens) == answer["text"]
    kinds = [e["event_type"] for e in received.logged]
    assert kinds.index("summary") < len(kinds) - 2  # more events came after it
    assert received.seqs == list(range(1, len(received.seqs) + 1))
    async with http.post(f"{gateway.base}/sessions/{sid}/summary") as resp:
        assert resp.status == 409
        assert (await resp.json())["error"]["code"] == "session_closed"


FAILURES: list[tuple[str, dict[str, Any], str]] = [
    ("rate_limited", {}, "is rate limiting or out of quota (429)"),
    ("garbage", {}, "sent what is not an OpenAI chat stream"),
    ("stall", {"llm_timeout_s": 1.5}, "did not finish the summary within 1.5 s"),
    ("cut", {}, "the stream"),
    ("error_chunk", {}, "stopped with an error: 'the model crashed'"),
    ("ok", {"llm_api_key": "sk-wrong-5e8d2c1a9f7b3e6d"}, "refused the credentials (401)"),
    ("down", {}, "cannot be reached"),
]


@pytest.mark.parametrize(
    ("behaviour", "settings", "reason"),
    FAILURES,
    ids=["rate_limited", "garbage", "stall", "cut", "error_chunk", "401", "down"],
)
async def test_a_failing_endpoint_gives_summary_failed_then_session_end_and_the_whole_transcript(
    start_gateway: StartGateway,
    start_chat: StartChat,
    http: aiohttp.ClientSession,
    behaviour: str,
    settings: dict[str, Any],
    reason: str,
) -> None:
    if behaviour == "down":
        url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    else:
        _, url = await start_chat(behaviour)
    gateway = await gateway_on(start_gateway, url, **settings)
    session = await create_session(http, gateway.base, {"summary": True})
    received = Received()
    follower = asyncio.create_task(follow_sse(http, session["stream_url"], received))
    await speak(http, session, clip("librivox-sns-0880"))
    started = time.monotonic()
    closed = await close(http, gateway.base, session["session_id"])
    took = time.monotonic() - started
    await asyncio.wait_for(follower, budget(60))
    assert took < 20.0  # within the time limit (20 s; 1.5 s for the stalled endpoint)
    kinds = [e["event_type"] for e in received.logged]
    assert kinds[-2:] == ["error", "session_end"]
    error = received.logged[-2]["data"]
    assert error["code"] == "summary_failed"
    assert reason in error["message"], error["message"]
    assert "summary" not in kinds
    assert received.seqs == list(range(1, len(received.seqs) + 1))
    transcript = await get(http, f"{gateway.base}/sessions/{session['session_id']}/transcript")
    assert transcript["summary"] is None
    assert transcript["text"] == closed["transcript"] == received.finals_text() != ""


async def test_without_an_llm_a_summary_is_refused_and_info_says_so(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    assert (await get(http, f"{gateway.base}/info"))["summary"] is None
    async with http.post(f"{gateway.base}/sessions", json={"config": {"summary": True}}) as resp:
        assert resp.status == 422
        assert "STT_GATEWAY_LLM_URL" in (await resp.json())["error"]["message"]
    session = await create_session(http, gateway.base)
    async with http.post(f"{gateway.base}/sessions/{session['session_id']}/summary") as resp:
        assert resp.status == 422
        assert (await resp.json())["error"]["code"] == "summary_unavailable"
    async with http.post(f"{gateway.base}/sessions/nope/summary") as resp:
        assert resp.status == 404


async def test_the_endpoint_key_never_appears_in_logs_events_errors_info_or_metrics(
    start_gateway: StartGateway,
    start_chat: StartChat,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG")
    wrong = "sk-wrong-0b7e4d1c9a3f6e2d8c5b"
    seen: list[str] = []
    for key, behaviour in ((KEY, "ok"), (KEY, "rate_limited"), (wrong, "ok")):
        _, url = await start_chat(behaviour)
        gateway = await gateway_on(start_gateway, url, llm_api_key=key)
        session = await create_session(http, gateway.base)
        sid = session["session_id"]
        events, heard = Received(), asyncio.Event()
        follower = asyncio.create_task(
            follow_sse(http, session["stream_url"], events, first_final=heard)
        )
        await speak(http, session, clip("goforward"))
        await asyncio.wait_for(heard.wait(), budget(60))
        async with http.post(f"{gateway.base}/sessions/{sid}/summary") as resp:
            seen.append(await resp.text())
            assert resp.status == (200 if behaviour == "ok" and key == KEY else 502)
        await close(http, gateway.base, sid)
        await asyncio.wait_for(follower, budget(60))
        seen += [str(e) for e in events.events]
        for path in ("/info", "/metrics", f"/sessions/{sid}", f"/sessions/{sid}/transcript"):
            async with http.get(gateway.base + path) as resp:
                seen.append(await resp.text())
    everything = "\n".join(seen + [r.getMessage() for r in caplog.records])
    assert "summary_failed" in everything
    assert "refused the credentials (401)" in everything
    for secret in (KEY, wrong, wrong[:12], KEY[:12]):
        assert secret not in everything


def test_a_long_transcript_is_trimmed_to_the_context_oldest_first_and_the_prompt_says_so() -> None:
    class Small:
        model = "m"
        context_tokens = 600
        max_tokens = 100
        timeout_s = 1.0

        def stream(self, instructions: str, transcript: str) -> Any:
            raise AssertionError

    finals = [
        Segment(text=f"sentence number {i} " * 5, start=i * 3.0, end=i * 3.0 + 2, confidence=1)
        for i in range(100)
    ]
    prompt = build_prompt(finals, SummaryOptions(language="ko"), None, Small())
    lines = prompt.transcript.splitlines()
    assert prompt.left_out > 0
    assert prompt.included == len(lines) - 1 == 100 - prompt.left_out
    assert lines[-1] == f"[4:57–4:59] {finals[-1].text}"  # the newest kept
    assert f"its first {prompt.left_out} segments, up to " in lines[0]
    assert "Write the summary in Korean." in prompt.instructions
    whole = build_prompt(finals[:3], SummaryOptions(prompt="Bullet points."), "en-US", Small())
    assert whole.left_out == 0
    assert whole.transcript.splitlines()[0] == "Transcript:"
    assert whole.instructions == "Bullet points.\nWrite the summary in English."


async def test_a_gateway_shutting_down_does_not_wait_on_the_llm_and_says_so(
    start_chat: StartChat, http: aiohttp.ClientSession
) -> None:
    chat, url = await start_chat("stall")  # it would hold a summary for its whole time limit
    app = create_app(make_settings(llm_url=url, llm_model="fake-model", llm_api_key=KEY))
    server = TestServer(app)
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    session = await create_session(http, base, {"summary": True})
    received = Received()
    follower = asyncio.create_task(follow_sse(http, session["stream_url"], received))
    await speak(http, session, clip("goforward"))
    started = time.monotonic()
    await server.close()
    await asyncio.wait_for(follower, budget(30))
    assert time.monotonic() - started < 15.0  # not the 20 s time limit, and no LLM request
    error, end = received.logged[-2:]
    assert error["data"]["code"] == "summary_failed"
    assert "shutting down" in error["data"]["message"]
    assert end["data"]["reason"] == "shutdown"
    assert chat.requests == []


async def test_a_real_llama_cpp_server_streams_the_summary_and_a_dropped_subscriber_resumes_it(
    start_gateway: StartGateway, http: aiohttp.ClientSession, llama_server: LlamaServer
) -> None:
    gateway = await gateway_on(
        start_gateway, llama_server.url, llm_model=ALIAS, llm_max_tokens=120, llm_timeout_s=300
    )
    session = await create_session(http, gateway.base, {"summary": True})
    full = Received()
    follower = asyncio.create_task(follow_sse(http, session["stream_url"], full))
    await speak(http, session, clip("librivox-sns-0870"))
    closing = asyncio.create_task(close(http, gateway.base, session["session_id"]))
    got: list[dict[str, Any]] = []  # a second subscriber, dropped after two pieces
    async with contextlib.aclosing(sse_messages(http, session["stream_url"])) as messages:
        async for _, event in messages:
            got.append(event)
            if len([e for e in got if e["event_type"] == "summary_token"]) == 2:
                break
    async with contextlib.aclosing(
        sse_messages(http, session["stream_url"], {"Last-Event-ID": str(got[-1]["seq"])})
    ) as messages:
        async for _, event in messages:
            got.append(event)
            if event["event_type"] == "session_end":
                break
    await closing
    await asyncio.wait_for(follower, budget(60))

    kinds = [e["event_type"] for e in full.logged]
    assert full.seqs == list(range(1, len(full.seqs) + 1))
    tokens = full.of_type("summary_token")
    first = kinds.index("summary_token")
    assert first > max(i for i, k in enumerate(kinds) if k == "final")
    assert kinds[first:] == ["summary_token"] * len(tokens) + ["summary", "session_end"]
    [summary] = [e["data"] for e in full.of_type("summary")]
    assert summary["model"] == ALIAS
    assert summary["text"] != ""
    assert "".join(t["data"]["text"] for t in tokens).strip() == summary["text"]
    assert [e for e in got if "seq" in e] == full.logged  # resumed: all of it, once
    transcript = await get(http, f"{gateway.base}/sessions/{session['session_id']}/transcript")
    assert transcript["summary"] == summary
