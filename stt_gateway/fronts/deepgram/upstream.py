"""Deepgram live speech-to-text (``/v1/listen`` WebSocket) as an :class:`Engine`.

Follows ``docs/protocols/deepgram-live.md`` (cited as §n below). One ``aiohttp`` WebSocket per
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
from collections.abc import AsyncIterator

import aiohttp
from yarl import URL

from ...audio.pcm import BYTES_PER_SAMPLE
from ...engines.base import Engine, EngineProvider
from ...errors import InvalidConfig, UpstreamError
from ...events import (
    EngineResult,
    ErrorData,
)
from ...models import SessionConfig
from ...settings import Settings
from .translate import (
    DEFAULT_ENDPOINTING_MS,
    DEFAULT_LANGUAGE,
    DEFAULT_MODEL,
    DEFAULT_UTTERANCE_END_MS,
    LANGUAGES,
    Translator,
    close_error,
    handshake_error,
    listen_url,
)

log = logging.getLogger(__name__)


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
        self._bytes_per_s = config.sample_rate * BYTES_PER_SAMPLE
        self._replay_cap = int(settings.deepgram_replay_s * self._bytes_per_s) // 2 * 2
        # Audio not yet covered by a final; byte 0 of it is session byte _ring_start.
        self._ring = bytearray()
        self._ring_start = 0
        self._sent = 0  # session byte up to which the current socket has the audio
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._live = False  # the socket is caught up: feed() sends straight to it
        self._translator = Translator()
        self._closing = False
        self._finalize_wanted = False
        self._last_send = time.monotonic()
        self._keepalive: asyncio.Task[None] | None = None

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
        return self._translator.request_id

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
                    translated = self._translator.translate(msg.data)
                    self._settle(self._translator.committed_s)
                    if self._translator.finalize_answered:
                        self._translator.finalize_answered = False
                        self._finalize_wanted = False
                    for result in translated:
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
                    if (speech_end := self._translator.end_of_stream()) is not None:
                        yield speech_end
                    return
                async for result in self._recover(close_error(code, reason)):
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
            raise handshake_error(exc.status, exc.headers or {}, exc.message) from None
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
            self._translator.request_id = rid
        self._translator.offset_s = self._ring_start / self._bytes_per_s
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
        """Finals cover session audio up to ``end_s``: drop it from the replay ring."""
        upto = round(end_s * self._bytes_per_s / BYTES_PER_SAMPLE) * BYTES_PER_SAMPLE
        cut = min(upto - self._ring_start, self._sent - self._ring_start)
        if cut > 0:
            del self._ring[:cut]
            self._ring_start += cut


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
