"""A hypothesis state machine over the WebSocket and POST protocol, on a real gateway.

Each example is one session whose producer streams real speech in 20 ms frames, step by
step, while the machine interleaves in any order: a second socket sending random binary and
text frames and control messages (it never holds the audio), POSTs of random bodies, and a
subscriber that drops and resumes with ``?since=``. Properties: no 5xx; ``/health`` answers
throughout; nothing is logged at ERROR; the session's subscribers see no error event; the
resumed subscriber gets every event once, in order; and the producer's transcript is the one
the engine gives for its audio alone. A bounded number of examples (fixed seed): this runs in
the test suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from stt_gateway.app import create_app
from tests.audio_files import clip
from tests.conftest import direct_finals, make_settings
from tests.gateway_client import Received, follow_sse, frames
from tests.timing import budget

T = TypeVar("T")
SPEECH = clip("goforward")
FRAMES = frames(SPEECH.pcm + bytes(32_000), 16_000)
STEP_FRAMES = 10  # 200 ms of audio per producer step

CONTROL_TEXT = st.one_of(
    st.text(max_size=120),
    st.sampled_from(
        [
            '{"type": "finalize"}',
            '{"type": "keepalive"}',
            '{"type": "pause"}',
            '{"type": "finalize", "now": true}',
            "[1, 2]",
            "{",
            "null",
        ]
    ),
)
POST_BODY = st.one_of(
    st.binary(max_size=3000).map(lambda b: ("application/octet-stream", b)),
    st.text(max_size=300).map(lambda t: ("application/json", t.encode())),
    st.binary(max_size=200).map(lambda b: ("application/json", b'{"audio_data": "' + b + b'"}')),
    st.sampled_from(["text/plain", "audio/wav", "multipart/form-data"]).map(lambda c: (c, b"AAAA")),
)


class Harness:
    """A gateway and an HTTP client on an event loop in a thread of their own: the state
    machine's rules are synchronous and run each step to completion on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.base = self.run(self._start())

    async def _start(self) -> str:
        app = create_app(make_settings(ws_max_bad_frames=5, engine_processes=1))
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        port = self._runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        async def stop() -> None:
            await self.http.close()
            await self._runner.cleanup()

        self.run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    h = Harness()
    yield h
    h.close()


def machine(h: Harness) -> type[RuleBasedStateMachine]:
    class WebSocketProtocol(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.session = h.run(self._create())
            self.sent = 1  # the producer's first frame went out: it holds the audio
            self.intruder: aiohttp.ClientWebSocketResponse | None = None
            self.resumed: list[dict[str, Any]] = []

        async def _create(self) -> dict[str, Any]:
            async with h.http.post(f"{h.base}/sessions", json={}) as resp:
                session: dict[str, Any] = await resp.json()
            self.subscriber = Received()
            self.sse = asyncio.create_task(
                follow_sse(h.http, session["stream_url"], self.subscriber)
            )
            self.producer = await h.http.ws_connect(session["ws_url"])
            self.produced: list[dict[str, Any]] = []
            self.producer_reader = asyncio.create_task(self._read(self.producer, self.produced))
            await self.producer.send_bytes(FRAMES[0])
            return session

        @staticmethod
        async def _read(ws: aiohttp.ClientWebSocketResponse, into: list[dict[str, Any]]) -> None:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    into.append(json.loads(msg.data))

        async def _intruder(self) -> aiohttp.ClientWebSocketResponse:
            if self.intruder is None or self.intruder.closed:
                if self.intruder is not None:
                    await self.intruder.close()
                self.intruder = await h.http.ws_connect(self.session["ws_url"] + "?events=false")
            return self.intruder

        @rule()
        def producer_streams(self) -> None:
            async def send() -> None:
                for frame in FRAMES[self.sent : self.sent + STEP_FRAMES]:
                    await self.producer.send_bytes(frame)

            h.run(send())
            self.sent = min(len(FRAMES), self.sent + STEP_FRAMES)

        @rule(data=st.binary(max_size=2_000))
        def intruder_sends_binary(self, data: bytes) -> None:
            async def send() -> None:
                ws = await self._intruder()
                # Closed (1008) for its bad frames meanwhile: it comes back next time.
                with contextlib.suppress(ConnectionError):
                    await ws.send_bytes(data)

            h.run(send())

        @rule(text=CONTROL_TEXT)
        def intruder_sends_text(self, text: str) -> None:
            async def send() -> None:
                ws = await self._intruder()
                with contextlib.suppress(ConnectionError):
                    await ws.send_str(text)

            h.run(send())

        @rule(body=POST_BODY)
        def someone_posts(self, body: tuple[str, bytes]) -> None:
            ctype, data = body

            async def post() -> int:
                async with h.http.post(
                    self.session["audio_url"], data=data, headers={"Content-Type": ctype}
                ) as resp:
                    await resp.read()
                    return resp.status

            status = h.run(post())
            assert 400 <= status < 500, (ctype, data[:50], status)

        @rule(linger=st.sampled_from([0.0, 0.02, 0.1]))
        def subscriber_drops_and_resumes(self, linger: float) -> None:
            async def resume() -> None:
                last = self.resumed[-1]["seq"] if self.resumed else 0
                ws = await h.http.ws_connect(self.session["ws_url"], params={"since": str(last)})
                try:
                    async with asyncio.timeout(linger):
                        async for msg in ws:
                            self.resumed.append(json.loads(msg.data))
                except TimeoutError:
                    pass
                await ws.close()

            h.run(resume())

        @invariant()
        def health_answers(self) -> None:
            async def health() -> int:
                async with h.http.get(f"{h.base}/health") as resp:
                    return resp.status

            assert h.run(health()) == 200

        def teardown(self) -> None:
            async def finish() -> str:
                for frame in FRAMES[self.sent :]:
                    await self.producer.send_bytes(frame)
                await self.producer.send_json({"type": "close"})
                await asyncio.wait_for(asyncio.gather(self.sse, self.producer_reader), budget(60))
                if self.intruder is not None:
                    await self.intruder.close()
                ws = await h.http.ws_connect(
                    self.session["ws_url"],
                    params={"since": str(self.resumed[-1]["seq"] if self.resumed else 0)},
                )
                await asyncio.wait_for(self._read(ws, self.resumed), budget(30))
                async with h.http.get(
                    f"{h.base}/sessions/{self.session['session_id']}/transcript"
                ) as resp:
                    text: str = (await resp.json())["text"]
                    return text

            transcript = h.run(finish())
            assert transcript == " ".join(f.text for f in direct_finals(SPEECH))
            assert self.subscriber.of_type("error") == []
            assert [e for e in self.produced if e["event_type"] == "error"] == []
            seqs = [e["seq"] for e in self.resumed]
            assert seqs == list(range(1, len(self.subscriber.seqs) + 1))
            assert self.resumed == self.subscriber.logged

    return WebSocketProtocol


def test_random_frames_controls_posts_and_resumes_harm_no_one(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    run_state_machine_as_test(
        machine(harness),
        settings=settings(
            max_examples=8,
            stateful_step_count=25,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
