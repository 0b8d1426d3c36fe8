"""The LLM adapter: summaries from any OpenAI-compatible chat endpoint, streamed.

``POST {llm_url}/chat/completions`` with ``stream: true``: the answer is Server-Sent Events,
``data: {"choices": [{"delta": {"content": "…"}}]}`` per piece and ``data: [DONE]`` at the end
(OpenAI's chat completions API, "Streaming"; Ollama, vLLM and llama.cpp's server speak it too).
An endpoint that ignores ``stream`` and answers one JSON completion is taken as one piece.
OpenAI's JSON stays in this module; the session sees text pieces and :class:`SummaryFailed`.

Read with aiohttp's client, not the official ``openai`` package: the gateway already runs one
HTTP client stack on its event loop; ``openai`` would add httpx and its own retries (which
would spend the summary's time limit retrying a refusal); and a stream of ``data:`` lines is
all there is to parse. The tests show the official client parses what the test server sends.

The key goes in the ``Authorization`` header only: no message this module makes holds it,
and an endpoint's refusal text for a bad key (which may echo part of it) is never quoted.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator

import aiohttp
from pydantic import BaseModel, ValidationError
from yarl import URL

from .errors import SummaryFailed

_QUOTED_BYTES = 300
"""Most bytes of an endpoint's error text quoted in a ``summary_failed`` message."""


class _Delta(BaseModel):
    content: str | None = None


class _Message(BaseModel):
    content: str | None = None


class _Choice(BaseModel):
    delta: _Delta | None = None
    message: _Message | None = None


class _Chunk(BaseModel):
    """One ``chat.completion.chunk`` (or a whole ``chat.completion``); other fields ignored."""

    choices: list[_Choice]


class OpenAIChat:
    """A :class:`~stt_gateway.summary.Summarizer` on an OpenAI-compatible chat endpoint.

    Args:
        url: the endpoint's base URL (``…/v1``); ``/chat/completions`` is appended.
        model: the model asked for.
        api_key: sent as ``Authorization: Bearer``; ``None`` sends none (Ollama, llama.cpp).
        timeout_s: a summary's time limit (s), enforced by the session.
        context_tokens: the model's context (tokens).
        max_tokens: most tokens a summary may have (the request's ``max_tokens``).
        connect_timeout_s: time limit to reach the endpoint (s).
    """

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None,
        *,
        timeout_s: float,
        context_tokens: int,
        max_tokens: int,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.model = model
        self.timeout_s = timeout_s
        self.context_tokens = context_tokens
        self.max_tokens = max_tokens
        self._endpoint = url.rstrip("/") + "/chat/completions"
        base = URL(url)
        # Named in messages by host and port only: a URL may carry credentials or a key.
        self._where = f"{base.host}:{base.port}"
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._key = api_key
        self._connect_timeout_s = connect_timeout_s
        self._http: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        """Close the connections to the endpoint."""
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None:
            # No total limit here: the session bounds the whole summary (timeout_s).
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout_s)
            )
        return self._http

    async def stream(self, instructions: str, transcript: str) -> AsyncGenerator[str, None]:
        """The summary's pieces as the model writes them (see
        :meth:`~stt_gateway.summary.Summarizer.stream`).

        Raises:
            SummaryFailed: unreachable, a refusal (non-200), an ``error`` object or a line that
                is no chat chunk in the stream, or a stream cut before ``[DONE]``.
        """
        body = {
            "model": self.model,
            "stream": True,
            "max_tokens": self.max_tokens,
            "temperature": 0.2,
            "messages": [
                {"role": "system", "content": instructions},
                {"role": "user", "content": transcript},
            ],
        }
        try:
            async with self._client().post(
                self._endpoint, json=body, headers=self._headers
            ) as answer:
                if answer.status != 200:
                    raise SummaryFailed(await self._refusal(answer))
                if answer.content_type == "application/json":
                    yield self._piece(await answer.read(), whole=True)
                    return
                async for raw in answer.content:
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue  # blank lines, comments (": …"), event:/id: fields
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        return
                    if piece := self._piece(data, whole=False):
                        yield piece
        except (aiohttp.ClientError, OSError) as exc:
            raise SummaryFailed(
                f"the LLM endpoint at {self._where} cannot be reached or dropped the stream "
                f"({type(exc).__name__})"
            ) from None
        raise SummaryFailed(f"the LLM endpoint at {self._where} ended its stream before [DONE]")

    def _piece(self, data: bytes, *, whole: bool) -> str:
        """The text of one chunk (``whole``: of a whole completion). Raises SummaryFailed."""
        try:
            chunk = _Chunk.model_validate_json(data)
        except ValidationError:
            raise SummaryFailed(self._not_a_chunk(data)) from None
        if not chunk.choices:
            return ""  # e.g. a last chunk with usage only
        choice = chunk.choices[0]
        part = choice.message if whole else choice.delta
        return (part.content if part is not None else None) or ""

    def _not_a_chunk(self, data: bytes) -> str:
        try:
            error = json.loads(data).get("error")
        except (ValueError, AttributeError):
            error = None
        if error is not None:
            message = error.get("message", error) if isinstance(error, dict) else error
            quoted = self._quote(message)
            return f"the LLM endpoint at {self._where} stopped with an error: {quoted}"
        return (
            f"the LLM endpoint at {self._where} sent what is not an OpenAI chat stream: "
            f"{self._quote(data.decode('utf-8', 'replace'))}"
        )

    async def _refusal(self, answer: aiohttp.ClientResponse) -> str:
        status = answer.status
        if status in (401, 403):
            # Not quoted: a refusal of a key may echo part of it.
            return (
                f"the LLM endpoint at {self._where} refused the credentials ({status}); check "
                f"STT_GATEWAY_LLM_API_KEY"
            )
        text = (await answer.content.read(_QUOTED_BYTES)).decode("utf-8", "replace")
        what = {
            429: "is rate limiting or out of quota",
            404: "has no such model or path",
        }.get(status, "refused the request")
        return f"the LLM endpoint at {self._where} {what} ({status}): {self._quote(text)}"

    def _quote(self, value: object) -> str:
        """An endpoint's own text, cut short, with the key blanked should it be echoed."""
        text = str(value)[:_QUOTED_BYTES].strip()
        if self._key:
            text = text.replace(self._key, "***")
        return repr(text)
