"""Deepgram live speech-to-text (``/v1/listen`` WebSocket) as an :class:`Engine`.

Follows ``docs/deepgram-live-protocol.md`` (cited as §n below). One ``aiohttp`` WebSocket per
session; all config in the query string (§1.4); ``Authorization: Token <key>`` (§1.2). Vendor
JSON is parsed here and never leaves this module: ``Results`` become ``TokenData`` /
``FinalData``, ``SpeechStarted`` → ``SpeechStartData``, ``UtteranceEnd`` → ``SpeechEndData``,
``Metadata`` → :attr:`DeepgramEngine.request_id`.

No audio is lost across an upstream drop (§6.1–6.2): every chunk goes into a replay ring that
holds the audio not yet covered by a final. After an unplanned loss the engine reconnects with
jittered exponential backoff, replays the ring on the new socket and rebases that socket's
timestamps by the ring's start, so session time keeps rising; a final that ends at or before
the last one published is dropped, so none is published twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
from pydantic import ValidationError
from yarl import URL

from .. import deepgram_wire as wire
from ..errors import InvalidConfig, UpstreamError
from ..events import (
    EngineResult,
    ErrorData,
    FinalData,
    SpeechEndData,
    SpeechStartData,
    TokenData,
    Word,
)
from ..models import SessionConfig
from ..settings import Settings
from .base import Engine, EngineProvider

log = logging.getLogger(__name__)

DEFAULT_MODEL = "nova-3"
DEFAULT_LANGUAGE = "ko"
DEFAULT_ENDPOINTING_MS = 300  # §1.4: docs suggest 300–500 ms for conversation
DEFAULT_UTTERANCE_END_MS = 1000
LANGUAGES = [
    "ko",
    "ko-KR",
    "en",
    "en-US",
    "en-GB",
    "en-AU",
    "en-IN",
    "ja",
    "zh",
    "zh-CN",
    "zh-TW",
    "es",
    "es-419",
    "fr",
    "fr-CA",
    "de",
    "it",
    "pt",
    "pt-BR",
    "nl",
    "ru",
    "hi",
    "id",
    "th",
    "vi",
    "tr",
    "pl",
    "uk",
    "sv",
    "da",
    "no",
    "fi",
    "cs",
    "el",
    "hu",
    "ro",
    "bg",
    "ms",
    "multi",
]
"""Advisory (§5.4, the list grows): Deepgram's handshake ``400`` is the authority."""

_PCM16_BYTES = 2


def listen_url(base: str, config: SessionConfig) -> str:
    """The ``/v1/listen`` URL for ``config`` (resolved): booleans lower-case, every value
    URL-encoded (§1.4)."""
    params: dict[str, str | int | bool] = {
        "model": config.model or DEFAULT_MODEL,
        "language": config.language or DEFAULT_LANGUAGE,
        # The session's decode stage gives every engine PCM16 mono at the session's rate.
        "encoding": "linear16",
        "sample_rate": config.sample_rate,
        "channels": 1,
        "interim_results": config.interim_results,
        "vad_events": True,
        "punctuate": True,
        "smart_format": True,
        "endpointing": config.endpointing_ms or DEFAULT_ENDPOINTING_MS,
    }
    # UtteranceEnd needs interim results (§1.4); sending it without them risks a 400.
    if config.utterance_end_ms is not None and config.interim_results:
        params["utterance_end_ms"] = config.utterance_end_ms
    return wire.listen_url(base, params)


def _handshake_error(exc: aiohttp.WSServerHandshakeError) -> UpstreamError:
    """§1.3: the status decides; ``dg-error`` says why in Deepgram's words."""
    headers: Mapping[str, str] = exc.headers or {}
    reason = headers.get("dg-error") or exc.message or "no reason given"
    rid = headers.get("dg-request-id")
    ref = f" (request {rid})" if rid else ""
    if exc.status in (401, 403):
        return UpstreamError(
            "upstream_auth", f"Deepgram refused the API key: {reason}{ref}", status=502
        )
    if exc.status == 400:
        return UpstreamError(
            "upstream_rejected", f"Deepgram refused the session config: {reason}{ref}", status=422
        )
    if exc.status == 402:
        return UpstreamError(
            "upstream_auth", f"Deepgram refused the session (insufficient balance){ref}", status=502
        )
    if exc.status == 429:
        return UpstreamError(
            "upstream_busy",
            f"Deepgram's concurrent-stream limit is reached; try again shortly{ref}",
            status=503,
            retryable=True,
            retry_after_s=2,
        )
    return UpstreamError(
        "upstream_unavailable",
        f"Deepgram answered HTTP {exc.status}: {reason}{ref}",
        status=503,
        retryable=True,
        retry_after_s=2,
    )


def _close_error(code: int | None, reason: str) -> UpstreamError:
    """§4.2: what an unplanned close means, and whether a reconnect may help."""
    kind = wire.close_kind(code, reason)
    if kind == "bad_audio":
        return UpstreamError(
            "upstream_bad_audio",
            "Deepgram could not decode the audio (1008 DATA-0000): check sample_rate and "
            "that the audio is raw PCM16",
        )
    if kind in ("no_input", "server"):
        which = "NET-0001: it heard nothing from us" if kind == "no_input" else "NET-0000"
        return UpstreamError(
            "upstream_timeout", f"Deepgram closed the stream (1011 {which})", retryable=True
        )
    return UpstreamError(
        "upstream_closed", f"the connection to Deepgram dropped (close code {code})", retryable=True
    )


class DeepgramEngine(Engine):
    """One session's Deepgram stream, with reconnect and replay (see the module docstring).

    Args:
        http: the shared client session.
        settings: key, URL, timings.
        config: the session's resolved config.
    """

    def __init__(
        self, http: aiohttp.ClientSession, settings: Settings, config: SessionConfig
    ) -> None:
        key = settings.deepgram_api_key
        assert key is not None, "the provider checks the key first"
        self._http = http
        self._s = settings
        self._url = listen_url(settings.deepgram_url, config)
        self._auth = {"Authorization": f"Token {key.get_secret_value()}"}
        self._bytes_per_s = config.sample_rate * _PCM16_BYTES
        self._replay_cap = int(settings.deepgram_replay_s * self._bytes_per_s) // 2 * 2
        # Audio not yet covered by a final; byte 0 of it is session byte _ring_start.
        self._ring = bytearray()
        self._ring_start = 0
        self._sent = 0  # session byte up to which the current socket has the audio
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._live = False  # the socket is caught up: feed() sends straight to it
        self._offset_s = 0.0  # session time of the current socket's audio time 0
        self._committed_s = 0.0  # end of the last final published
        self._closing = False
        self._finalize_wanted = False
        self._speaking = False  # a SpeechStarted has had no UtteranceEnd yet
        self._last_word_end = 0.0
        self._last_send = time.monotonic()
        self._keepalive: asyncio.Task[None] | None = None
        self.request_id: str | None = None

    # -- Engine ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the upstream now, so a refused key or config fails the session's creation.

        Raises:
            UpstreamError: the handshake failed (codes per §1.3).
        """
        await self._connect()

    async def feed(self, pcm: bytes) -> None:
        self._ring += pcm
        self._trim_to_cap()
        ws = self._ws
        if self._live and ws is not None:
            try:
                await ws.send_bytes(pcm)
            except ConnectionError:
                return  # the reader sees the loss and reconnects; the ring holds this chunk
            if ws is self._ws:  # not replaced meanwhile (a new socket counts its own replay)
                self._sent += len(pcm)
                self._last_send = time.monotonic()

    async def finalize(self) -> None:
        self._finalize_wanted = True
        await self._send_control_if_live("Finalize")

    async def close(self) -> None:
        self._closing = True
        await self._send_control_if_live("CloseStream")

    def upstream_id(self) -> str | None:
        return self.request_id

    def unsettled_audio(self) -> tuple[float, bytes]:
        """(session time in s where it begins, the audio no final covers yet): what a
        fallback engine must hear to go on from here (older audio past the replay cap is
        lost, as for a reconnect)."""
        return self._ring_start / self._bytes_per_s, bytes(self._ring)

    async def results(self) -> AsyncIterator[EngineResult]:
        try:
            while True:
                ws = self._ws
                assert ws is not None
                msg = await ws.receive()
                if msg.type == aiohttp.WSMsgType.TEXT:
                    for result in self._translate(msg.data):
                        yield result
                    continue
                if msg.type == aiohttp.WSMsgType.BINARY:
                    continue  # Deepgram never sends binary (§3)
                # CLOSE, CLOSING, CLOSED or ERROR: the socket is done.
                code = msg.data if msg.type == aiohttp.WSMsgType.CLOSE else ws.close_code
                reason = msg.extra if isinstance(msg.extra, str) else ""
                await self._drop_socket()
                if self._closing and code == 1000:
                    # CloseStream answered: the last Results and Metadata are in. Close the
                    # speech turn UtteranceEnd had no audio left to close.
                    if self._speaking:
                        self._speaking = False
                        yield SpeechEndData(last_word_end=self._last_word_end)
                    return
                async for result in self._recover(_close_error(code, reason)):
                    yield result
        finally:
            await self._drop_socket()

    # -- connection ------------------------------------------------------------------------

    async def _connect(self) -> None:
        limit_s = self._s.deepgram_connect_timeout_s
        try:
            # aiohttp bounds a WebSocket handshake only by the client session's total timeout
            # (300 s by default): the connect setting bounds TCP, TLS and the 101 together.
            async with asyncio.timeout(limit_s):
                ws = await self._http.ws_connect(
                    self._url,
                    headers=self._auth,
                    heartbeat=None,  # Deepgram's idle rule wants KeepAlive text frames (§2.2)
                    timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                    autoping=True,
                    max_msg_size=0,
                )
        except aiohttp.WSServerHandshakeError as exc:
            raise _handshake_error(exc) from None
        except TimeoutError:
            raise UpstreamError(
                "upstream_unavailable",
                f"Deepgram at {self._s.deepgram_url} did not complete the handshake "
                f"within {limit_s:g} s",
                status=503,
                retryable=True,
                retry_after_s=2,
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(
                "upstream_unavailable",
                f"cannot reach Deepgram at {self._s.deepgram_url}: {type(exc).__name__}",
                status=503,
                retryable=True,
                retry_after_s=2,
            ) from None
        self._ws = ws
        # The 101's dg-request-id (§1.3). aiohttp keeps the handshake response only as a
        # private attribute; without it the id comes with the first Results or Metadata.
        handshake = getattr(ws, "_response", None)
        if handshake is not None and (rid := handshake.headers.get("dg-request-id")):
            self.request_id = rid
        self._offset_s = self._ring_start / self._bytes_per_s
        self._sent = self._ring_start
        # §6.2: replay what no final covers yet; feed() appends meanwhile, so loop until
        # caught up, then let feed() send directly (no await between the check and the flip).
        chunk = self._bytes_per_s // 10
        try:
            while self._sent < self._ring_start + len(self._ring):
                lo = self._sent - self._ring_start
                piece = bytes(self._ring[lo : lo + chunk])
                await ws.send_bytes(piece)
                self._sent += len(piece)
        except ConnectionError:
            await self._drop_socket()
            raise UpstreamError(
                "upstream_closed",
                "the connection to Deepgram dropped during the replay",
                retryable=True,
            ) from None
        self._live = True
        self._last_send = time.monotonic()
        self._keepalive = asyncio.create_task(self._keep_alive(ws))
        if self._finalize_wanted:
            await self._send_control_if_live("Finalize")
        if self._closing:
            await self._send_control_if_live("CloseStream")

    async def _recover(self, cause: UpstreamError) -> AsyncIterator[EngineResult]:
        """Reconnect after an unplanned loss (§6), or raise ``upstream_error`` giving up."""
        yield ErrorData(code=cause.code, message=cause.message)
        if not cause.retryable:
            raise UpstreamError("upstream_error", f"gave up on Deepgram: {cause.message}")
        lost_at = time.monotonic()
        attempts = self._s.deepgram_reconnect_attempts
        yield ErrorData(
            code="upstream_reconnecting",
            message=f"reconnecting to Deepgram (up to {attempts} attempts)",
        )
        for attempt in range(1, attempts + 1):
            delay = min(
                self._s.deepgram_backoff_max_s, self._s.deepgram_backoff_s * 2 ** (attempt - 1)
            )
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # jitter: no thundering herd
            try:
                await self._connect()
            except UpstreamError as exc:
                yield ErrorData(code=exc.code, message=f"attempt {attempt}: {exc.message}")
                if not exc.retryable:
                    raise UpstreamError(
                        "upstream_error", f"gave up on Deepgram: {exc.message}"
                    ) from None
                continue
            gap_ms = round((time.monotonic() - lost_at) * 1000, 1)
            yield ErrorData(
                code="upstream_reconnected",
                gap_ms=gap_ms,
                message=f"reconnected to Deepgram after {gap_ms:g} ms; "
                f"{len(self._ring) / self._bytes_per_s:.2f} s of audio replayed",
            )
            return
        raise UpstreamError(
            "upstream_error", f"gave up on Deepgram after {attempts} reconnect attempts"
        )

    async def _drop_socket(self) -> None:
        self._live = False
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        ws, self._ws = self._ws, None
        if ws is not None and not ws.closed:
            await ws.close()

    async def _keep_alive(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """§2.2: a KeepAlive text frame whenever no audio went out for ``keepalive_s``."""
        interval = self._s.deepgram_keepalive_s
        while not ws.closed:
            wait = self._last_send + interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            try:
                await ws.send_str('{"type":"KeepAlive"}')
            except ConnectionError:
                return
            self._last_send = time.monotonic()

    async def _send_control_if_live(self, kind: str) -> None:
        if self._live and self._ws is not None:
            try:
                await self._ws.send_str(json.dumps({"type": kind}))
            except ConnectionError:
                return  # sent again after the reconnect (see _connect)
            self._last_send = time.monotonic()

    def _trim_to_cap(self) -> None:
        excess = len(self._ring) - self._replay_cap
        if excess > 0:
            # Past the cap the oldest audio is dropped; a reconnect then rebases from the new
            # ring start, so timestamps stay right and the dropped span is a gap (§6.2).
            excess += excess % 2
            del self._ring[:excess]
            self._ring_start += excess

    def _settle(self, end_s: float) -> None:
        """A final covers session audio up to ``end_s``: drop it from the replay ring."""
        self._committed_s = max(self._committed_s, end_s)
        upto = round(end_s * self._bytes_per_s / _PCM16_BYTES) * _PCM16_BYTES
        cut = min(upto - self._ring_start, self._sent - self._ring_start)
        if cut > 0:
            del self._ring[:cut]
            self._ring_start += cut

    # -- vendor JSON → our results -----------------------------------------------------------

    def _translate(self, text: str) -> list[EngineResult]:
        try:
            message: Any = json.loads(text)
            kind = message.get("type") if isinstance(message, dict) else None
            if kind == "Results":
                return self._results(wire.DGResults.model_validate(message))
            if kind == "SpeechStarted":
                started = wire.DGSpeechStarted.model_validate(message)
                self._speaking = True
                return [SpeechStartData(timestamp=round(self._offset_s + started.timestamp, 3))]
            if kind == "UtteranceEnd":
                ended = wire.DGUtteranceEnd.model_validate(message)
                if ended.last_word_end < 0:
                    return []  # §3.4: -1 means "already finalized: ignore"
                self._speaking = False
                return [SpeechEndData(last_word_end=round(self._offset_s + ended.last_word_end, 3))]
            if kind == "Metadata":
                metadata = wire.DGMetadata.model_validate(message)
                self.request_id = metadata.request_id or self.request_id
            elif kind == "Error":
                log.warning("Deepgram sent an Error message (request %s)", self.request_id)
            # Unknown types are ignored (§3: new ones appear over time).
        except (ValueError, ValidationError):
            log.warning("unparseable message from Deepgram (request %s)", self.request_id)
        return []

    def _results(self, r: wire.DGResults) -> list[EngineResult]:
        if r.metadata is not None and r.metadata.request_id:
            self.request_id = r.metadata.request_id
        alt = r.channel.alternatives[0] if r.channel.alternatives else wire.DGAlternative()
        text = alt.transcript.strip()
        start = round(self._offset_s + r.start, 3)
        end = round(self._offset_s + r.start + r.duration, 3)
        if not r.is_final:
            # §3.1: an interim restates the whole open segment; it replaces the last one.
            if not text:
                return []
            return [TokenData(text=text, confidence=_unit(alt.confidence), start=start, end=end)]
        if end <= self._committed_s + 1e-3:
            return []  # replayed audio already covered by a published final
        self._settle(end)
        if r.from_finalize:
            self._finalize_wanted = False
        if not text:
            return []  # §6.11: empty finals settle audio but carry no words
        if alt.words:
            self._last_word_end = round(self._offset_s + alt.words[-1].end, 3)
        words = [
            Word(
                word=w.punctuated_word or w.word,
                start=round(self._offset_s + w.start, 3),
                end=round(self._offset_s + w.end, 3),
                confidence=_unit(w.confidence),
            )
            for w in alt.words
        ]
        return [
            FinalData(
                text=text,
                confidence=_unit(alt.confidence),
                start=words[0].start if words else start,
                end=words[-1].end if words else end,
                words=words,
                speech_final=r.speech_final,
            )
        ]


def _unit(x: float) -> float:
    return min(1.0, max(0.0, round(x, 4)))


class DeepgramProvider(EngineProvider):
    """``engine: "deepgram"``: available when ``DEEPGRAM_API_KEY`` is set.

    Args:
        settings: key, URL and timings.
    """

    name = "deepgram"
    falls_back = True

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._http: aiohttp.ClientSession | None = None

    @property
    def languages(self) -> list[str]:
        return LANGUAGES

    @property
    def default_model(self) -> str:
        return DEFAULT_MODEL

    def unavailable_reason(self) -> str | None:
        if self._settings.deepgram_api_key is None:
            return "DEEPGRAM_API_KEY is not set"
        return None

    async def not_ready_reason(self) -> str | None:
        """Configured and its host accepts a TCP connection within 2 s."""
        if (reason := self.unavailable_reason()) is not None:
            return reason
        url = URL(self._settings.deepgram_url)
        port = url.port or (443 if url.scheme in ("wss", "https") else 80)
        try:
            async with asyncio.timeout(2.0):
                _, writer = await asyncio.open_connection(url.host, port)
        except (OSError, TimeoutError) as exc:
            return f"cannot reach {url.host}:{port}: {type(exc).__name__}"
        writer.close()
        await writer.wait_closed()
        return None

    def resolve(self, config: SessionConfig) -> SessionConfig:
        if config.utterance_end_ms is not None and not config.interim_results:
            raise InvalidConfig(
                "utterance_end_ms: Deepgram sends UtteranceEnd only with interim_results true"
            )
        return config.model_copy(
            update={
                "language": config.language or DEFAULT_LANGUAGE,
                "model": config.model or DEFAULT_MODEL,
                "endpointing_ms": config.endpointing_ms or DEFAULT_ENDPOINTING_MS,
                "utterance_end_ms": config.utterance_end_ms
                or (DEFAULT_UTTERANCE_END_MS if config.interim_results else None),
            }
        )

    def create(self, config: SessionConfig) -> Engine:
        if self._http is None or self._http.closed:
            # No pool cap: every session holds one upstream WebSocket for its whole life, and
            # aiohttp's default of 100 made session 101 wait for another to end.
            # `max_sessions` is the bound.
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return DeepgramEngine(self._http, self._settings, config)

    async def close(self) -> None:
        """Close the shared HTTP client (app cleanup)."""
        if self._http is not None:
            await self._http.close()
