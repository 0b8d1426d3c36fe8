"""A protocol-faithful OpenAI-compatible chat completions server on loopback, for tests and
benchmarks (no LLM: its "summary" is made from the prompt it gets, deterministically).

``POST /v1/chat/completions`` with ``stream: true`` answers as OpenAI's API does
(``text/event-stream``; a first chunk with ``delta.role``, one ``chat.completion.chunk`` per
piece, a last one with ``finish_reason: "stop"``, then ``data: [DONE]``); a wrong key gets
OpenAI's 401 error JSON. ``behaviour`` makes it fail the ways an endpoint does. The official
``openai`` client is shown to parse it (tests/test_summary.py).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any, Literal

from aiohttp import web

Behaviour = Literal["ok", "rate_limited", "garbage", "stall", "cut", "error_chunk", "whole_json"]

KEY = "sk-fake-9c1f4e2a7b3d5f60a8e1c2d4b6f8a0e2"
"""The key the fake takes (tests grep for it)."""


def summary_of(transcript: str) -> str:
    """What the fake answers for a user message: the number of timed lines, and the first
    and last of them without their times."""
    lines = [line for line in transcript.splitlines() if line.startswith("[")]
    said = [re.sub(r"^\[[^\]]*\]\s*", "", line) for line in lines]
    if not said:
        return "Nothing was said."
    return f"{len(said)} segments. It opens with: {said[0]} It ends with: {said[-1]}"


def pieces_of(text: str) -> list[str]:
    """The text as a model streams it: word by word, each after the first with its space."""
    words = text.split(" ")
    return [words[0]] + [" " + w for w in words[1:]]


class FakeChat:
    """The fake server's behaviour and what it was asked.

    Args:
        behaviour: ``ok``; ``rate_limited`` (429, OpenAI's error JSON); ``garbage`` (200, a
            ``data:`` line that is not JSON); ``stall`` (two pieces, then nothing); ``cut``
            (two pieces, then the connection closes without ``[DONE]``); ``error_chunk`` (a
            piece, then ``data: {"error": …}`` as vLLM sends mid-stream); ``whole_json`` (one
            ``chat.completion`` JSON, ``stream`` ignored).
        piece_delay_s: pause before each piece (s).
        first_token_delay_s: pause before the first piece (the model reading the prompt).
    """

    def __init__(
        self,
        behaviour: Behaviour = "ok",
        piece_delay_s: float = 0.01,
        first_token_delay_s: float = 0.0,
    ) -> None:
        self.behaviour = behaviour
        self.piece_delay_s = piece_delay_s
        self.first_token_delay_s = first_token_delay_s
        self.requests: list[dict[str, Any]] = []
        """Bodies of the requests taken (after the key check)."""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        return app

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {KEY}":
            return web.json_response(
                {
                    "error": {
                        "message": "Incorrect API key provided: "
                        + request.headers.get("Authorization", "")[7:],
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "invalid_api_key",
                    }
                },
                status=401,
            )
        body = await request.json()
        self.requests.append(body)
        if self.behaviour == "rate_limited":
            return web.json_response(
                {
                    "error": {
                        "message": "Rate limit reached for requests",
                        "type": "requests",
                        "param": None,
                        "code": "rate_limit_exceeded",
                    }
                },
                status=429,
            )
        text = summary_of(body["messages"][-1]["content"])
        created, model = int(time.time()), body["model"]
        if self.behaviour == "whole_json":
            return web.json_response(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def send(delta: dict[str, Any], finish: str | None = None) -> None:
            chunk = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            await resp.write(b"data: %s\n\n" % json.dumps(chunk).encode())

        await send({"role": "assistant", "content": ""})
        await asyncio.sleep(self.first_token_delay_s)
        for i, piece in enumerate(pieces_of(text)):
            if i == 2 and self.behaviour == "stall":
                await asyncio.sleep(3600)
            if i == 2 and self.behaviour == "cut":
                assert request.transport is not None
                request.transport.close()
                return resp
            if i == 1 and self.behaviour == "garbage":
                await resp.write(b"data: {this is not json\n\n")
            if i == 1 and self.behaviour == "error_chunk":
                error = {"error": {"message": "the model crashed", "code": 500}}
                await resp.write(b"data: %s\n\n" % json.dumps(error).encode())
            await asyncio.sleep(self.piece_delay_s)
            await send({"content": piece})
        await send({}, finish="stop")
        await resp.write(b"data: [DONE]\n\n")
        return resp
