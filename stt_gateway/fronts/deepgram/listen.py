"""Deepgram's front: ``/v1/listen`` as Deepgram serves it, on any engine of this gateway.

Apps written for Deepgram (its SDKs, pipecat, LiveKit agents) point their base URL here and
keep working (``docs/api.md``, "Deepgram-compatible front"; the protocol is
``docs/protocols/deepgram-live.md``, cited as §n).

- ``GET /v1/listen`` (WebSocket): every connection is an ordinary session (its id is
  ``dg-request-id`` and ``Metadata.request_id``; ``GET /sessions/{id}/stream`` follows it, and
  its transcript outlives the socket). Query parameters as Deepgram's (§1.4), plus ``engine``
  (ours; default: the gateway's default engine). Binary frames are audio (any size, odd byte
  counts carried over); text frames ``KeepAlive``, ``Finalize``, ``CloseStream``; an empty
  binary frame is ``CloseStream`` (§2.1). Out: ``Results``, ``SpeechStarted``
  (``vad_events=true``), ``UtteranceEnd`` (``utterance_end_ms``), one ``Metadata`` at the end,
  then close 1000; no frame for ``listen_inactivity_s`` → ``Metadata``, close 1011 NET-0001;
  undecodable audio → ``Metadata``, close 1008 DATA-0000; a malformed text frame → ``Error``
  ``SchemaError`` to that socket, which stays open (§3.5).
- ``POST /v1/listen``: a whole file in the body (a container, or raw audio with ``encoding``
  and ``sample_rate``), answered with Deepgram's pre-recorded JSON once the engine is done; the
  audio goes through the engine as fast as it takes it (no real-time pacing).
- Refusals are Deepgram's: a status with ``dg-error`` and ``dg-request-id`` headers and an
  ``{"err_code", "err_msg", "request_id"}`` body (§1.3); a config the engine cannot serve is
  ``400``, as Deepgram answers an unsupported model or language.

``model`` is required by every SDK: Deepgram's names (``nova-3``, ``nova-2-general``, …) are
taken on every engine and mean the engine's own model, which ``model_info`` names; the
engine's own model name is taken too. ``keywords``, ``keyterm``, ``punctuate``,
``smart_format`` and the other formatting options are accepted and ignored where the engine
cannot use them (``punctuate`` / ``smart_format`` decide whether words carry
``punctuated_word``). Audio: raw ``linear16``, ``mulaw`` or ``alaw`` with ``encoding`` and
``sample_rate`` (``channels`` mixed to mono), or with no ``encoding`` a container (WAV,
Ogg/Opus, WebM/Opus, MP3, FLAC: the session's decode stage reads it and resamples it to
``sample_rate``). ``multichannel=true`` with ``channels`` N ≥ 2: each channel is its own
stream, its Results tagged ``channel_index`` ``[i, N]`` (a pre-recorded answer has N
``results.channels``). Not yet served (a ``400`` naming them): other raw encodings,
``redact``, ``replace``, ``search``, ``detect_entities`` and ``callback``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import hdrs, web

from ...errors import BadControlMessage, GatewayError, UnsupportedAudio
from ...hub import Subscription
from ...session import Session
from ...web.common import METRICS, REGISTRY, SETTINGS, Handler, bound_send_buffer, caller
from ...web.credentials import WS_PROTOCOLS
from ...web.frames import read_frames
from . import wire
from .params import AudioIn, ListenParams, frame_bytes, parse_params
from .results import Encoder, prerecorded_channel

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

PATH = "/v1/listen"

# -- refusals in Deepgram's shape -----------------------------------------------------------


@web.middleware
async def deepgram_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """On ``/v1/`` routes, every refusal in Deepgram's shape (§1.3; SDKs show our own
    ``{"error": …}`` body as ``[object Object]`` or ``None``). Outermost, so the auth and
    Origin guards' refusals are reshaped too."""
    if not request.path.startswith("/v1/"):
        return await handler(request)
    try:
        response = await handler(request)
    except wire.ParamError as exc:
        return _refusal(request, 400, str(exc))
    except GatewayError as exc:
        request.app[METRICS].error(exc.code)
        # A config the engine cannot serve is a 400 at Deepgram (an unsupported model or
        # language); our 422 would be an unknown status to its SDKs.
        status = 400 if exc.status == 422 else exc.status
        headers = (
            {"Retry-After": str(max(1, round(exc.retry_after_s)))} if exc.retry_after_s else {}
        )
        return _refusal(request, status, exc.message, headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # Keep the headers that matter to clients (405's Allow, RFC 9110 §15.5.6).
        kept = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        return _refusal(request, exc.status, exc.text or exc.reason, kept)
    return response


def _refusal(
    request: web.Request, status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    rid = str(uuid.uuid4())
    log.info("refused %s %s: %d %s", request.method, request.path, status, message)
    return web.json_response(
        wire.error_body(status, message, rid),
        status=status,
        headers={**wire.error_headers(message, rid), **(headers or {})},
    )


async def _feed(session: Session, data: bytes, producer: object | None, limit: int) -> bytes:
    """Feed ``data`` in pieces of at most ``limit`` bytes (Deepgram takes any chunk size; a
    multiple of 8 bytes keeps raw frames whole); the PCM16 it gave."""
    step = limit - limit % 8
    return b"".join(
        [await session.feed(data[i : i + step], producer) for i in range(0, len(data), step)]
    )


# -- the live socket --------------------------------------------------------------------------


class _Front:
    """Frames on a ``/v1/listen`` socket (see the module docstring)."""

    def __init__(
        self,
        session: Session,
        ws: web.WebSocketResponse,
        params: ListenParams,
        encoder: Encoder,
        limit: int,
    ) -> None:
        self._session = session
        self._ws = ws
        self._encoder = encoder
        self._audio = AudioIn(frame_bytes(params))
        self._limit = limit  # a sender's chunk may be any size: fed in pieces
        self.close_code = wire.CLOSE_NORMAL
        self.close_reason = ""
        self.closing: asyncio.Future[Any] | None = None

    def end(self, reason: str, code: int = wire.CLOSE_NORMAL, why: str = "") -> None:
        """End the session (once): its last finals, ``Metadata``, then close ``code``."""
        if self.closing is None:
            self.close_code, self.close_reason = code, why
            self.closing = asyncio.ensure_future(self._session.close(reason))

    async def binary(self, data: bytes) -> None:
        if self.closing is not None:
            return  # after CloseStream Deepgram ignores further frames (§7 rule 12)
        if not data:
            self.end("client_closed")  # the old end-of-stream signal (§2.1)
            return
        try:
            pcm = await _feed(self._session, self._audio.push(data), self._ws, self._limit)
        except UnsupportedAudio as exc:
            self.end("bad_audio", wire.CLOSE_DATA, wire.data0000_reason(exc.message))
            return
        if pcm:
            self._encoder.digest.update(pcm)

    async def text(self, data: str) -> None:
        try:
            message = json.loads(data)
            kind = message.get("type") if isinstance(message, dict) else None
        except ValueError:
            kind = None
        if kind == "KeepAlive":
            return  # it only keeps the socket open (read_frames' inactivity window)
        if kind == "Finalize":
            if self.closing is None:
                self._encoder.finalize_asked = True
                await self._session.finalize(self._ws)
            return
        if kind == "CloseStream":
            self.end("client_closed")
            return
        raise BadControlMessage(
            'not a control message: send {"type": "KeepAlive"}, '
            '{"type": "Finalize"} or {"type": "CloseStream"}; audio goes in '
            "binary frames"
        )

    def error_frame(self, exc: GatewayError) -> str:
        variant = "SchemaError" if isinstance(exc, BadControlMessage) else "ClientError"
        return wire.dump(wire.DGError(variant=variant, description=exc.message, message=exc.code))


@routes.get(PATH)
async def listen(request: web.Request) -> web.StreamResponse:
    """Deepgram's live ``/v1/listen`` (see the module docstring).

    Answers before the upgrade, in Deepgram's shape: 400 (a parameter Deepgram refuses, or a
    config the engine cannot serve), 401/403 (``sessions:create``), 429 ``rate_limited``, 503
    ``too_many_sessions``; a plain GET (no upgrade) gets 400.
    """
    settings = request.app[SETTINGS]
    params = parse_params(request.query, settings.default_engine)
    request.app[REGISTRY].resolve(params.config)  # the engine's refusals come first
    if request.headers.get(hdrs.UPGRADE, "").lower() != "websocket":
        raise wire.ParamError("GET /v1/listen is a WebSocket; POST a file for pre-recorded audio.")
    who = caller(request)
    who.require_any(("sessions:create",))
    session = await request.app[REGISTRY].create(params.config, owner=who.key_id)
    ws = web.WebSocketResponse(
        heartbeat=None,  # Deepgram's clients keep it alive with KeepAlive text frames (§2.2)
        max_msg_size=4 * settings.max_chunk_bytes,
        protocols=WS_PROTOCOLS,  # "token, <key>" from browsers: select "token" (appendix 2)
        # No permessage-deflate: Node's built-in WebSocket (undici, Node 20) negotiates it and
        # then fails the connection (close 1006) on aiohttp's compressed frames a few
        # messages in, losing the last finals and Metadata. Results are a few hundred bytes.
        compress=False,
    )
    ws.headers["dg-request-id"] = session.id
    sub = session.subscribe()
    # A client that stops reading holds little and is cut off (slow_consumer), as on /sessions.
    bound_send_buffer(request, settings.subscriber_send_buffer)
    try:
        await ws.prepare(request)
    except BaseException:
        sub.close()
        await session.close("client_closed")
        raise
    encoder = Encoder(session, params)
    front = _Front(session, ws, params, encoder, settings.max_chunk_bytes)
    writer = asyncio.create_task(_write(ws, sub, encoder, front), name=f"listen-out-{session.id}")
    metrics = request.app[METRICS]
    connected = metrics.subscribers.labels("ws")
    connected.inc()
    try:
        ended = await read_frames(
            ws,
            front,
            max_bad_frames=settings.ws_max_bad_frames,
            metrics=metrics,
            idle_s=settings.listen_inactivity_s,
        )
        if ended == "idle":
            front.end("idle_timeout", wire.CLOSE_NET, wire.NET0001_REASON)
        # A connection is its session: whichever way the socket ended, the session ends, and
        # its transcript is kept (a client that closes right after CloseStream loses nothing).
        front.end("client_closed")
        with contextlib.suppress(asyncio.CancelledError):
            await writer
    finally:
        await session.release_producer(ws)
        connected.dec()
        sub.close()
        writer.cancel()
        front.end("client_closed")
    return ws


async def _write(
    ws: web.WebSocketResponse, sub: Subscription, encoder: Encoder, front: _Front
) -> None:
    """The session's events as Deepgram messages; at ``session_end``, ``Metadata`` and the
    close."""
    try:
        async for record in sub:
            if record.event_type == "session_end":
                await ws.send_str(wire.dump(encoder.metadata()))
                await ws.close(code=front.close_code, message=front.close_reason.encode())
                return
            if record.event_type == "error" and record.seq is None:
                # Cut off as a slow consumer: Deepgram has no such message; a close says it.
                front.end("client_closed", wire.CLOSE_NET, wire.net0000_reason("fell behind"))
                await ws.close(code=wire.CLOSE_NET, message=front.close_reason.encode())
                return
            for message in encoder.encode(record.json):
                await ws.send_str(message)
    except ConnectionError:
        pass  # the client left; the session still ends with its transcript


async def _body_chunks(request: web.Request, limit: int) -> AsyncIterator[bytes]:
    """The request body as it arrives, at most ``limit`` bytes in all (413 beyond)."""
    seen = 0
    async for chunk in request.content.iter_chunked(256 * 1024):
        seen += len(chunk)
        if seen > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=seen)
        yield chunk


@routes.post(PATH)
async def transcribe_file(request: web.Request) -> web.Response:
    """Deepgram's pre-recorded ``POST /v1/listen``: a whole file in the body → its JSON.

    Answers, in Deepgram's shape: 400 (parameters, or audio that is not what they announce),
    401/403, 413 (over ``max_file_bytes``), 429, 503.
    """
    settings = request.app[SETTINGS]
    params = parse_params(request.query, settings.default_engine)
    who = caller(request)
    who.require_any(("sessions:create",))
    audio = AudioIn(frame_bytes(params))
    session = await request.app[REGISTRY].create(params.config, owner=who.key_id)
    encoder = Encoder(session, params)
    digest = encoder.digest
    try:
        async for chunk in _body_chunks(request, settings.max_file_bytes):
            try:
                pcm = await _feed(session, audio.push(chunk), None, settings.max_chunk_bytes)
            except UnsupportedAudio as exc:
                raise wire.ParamError(f"Bad audio: {exc.message}.") from None
            digest.update(pcm)
        await session.release_producer(None)  # the end of the file: the decoder's last samples
        if digest.duration_s == 0:
            raise wire.ParamError("Bad audio: the body holds no audio.")
        await session.close()
    except BaseException:
        await session.close("client_closed")
        raise
    metadata = encoder.metadata()
    assert metadata.models is not None
    assert metadata.model_info is not None
    config = session.config
    channels = config.channels if config.multichannel else 1
    finals = session.finals()
    answer = wire.DGPrerecorded(
        metadata=wire.DGPrerecordedMetadata(
            request_id=session.id,
            sha256=metadata.sha256,
            created=metadata.created,
            duration=metadata.duration,
            channels=channels,
            models=metadata.models,
            model_info=metadata.model_info,
        ),
        results=wire.DGPrerecordedResults(
            channels=[
                prerecorded_channel([f for f in finals if (f.channel or 0) == i], params)
                for i in range(channels)
            ]
        ),
    )
    return web.Response(
        text=wire.dump(answer),
        content_type="application/json",
        headers={"dg-request-id": session.id},
    )
