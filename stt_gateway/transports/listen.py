"""Deepgram's front: ``/v1/listen`` as Deepgram serves it, on any engine of this gateway.

Apps written for Deepgram (its SDKs, pipecat, LiveKit agents) point their base URL here and
keep working (``docs/api.md`` v2, "Deepgram-compatible front"; the protocol is
``docs/deepgram-live-protocol.md``, cited as §n).

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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from aiohttp import hdrs, web
from multidict import MultiMapping

from .. import __version__
from .. import deepgram_wire as wire
from ..decode import SNIFF_BYTES, Container, Encoding, describe, sniff
from ..errors import BadControlMessage, GatewayError, UnsupportedAudio
from ..events import (
    EVENT_ADAPTER,
    FinalData,
    FinalEvent,
    SpeechEndEvent,
    SpeechStartEvent,
    TokenEvent,
)
from ..hub import Subscription
from ..models import SessionConfig
from ..session import Session
from .auth import WS_PROTOCOLS
from .common import METRICS, REGISTRY, SETTINGS, Handler, bound_send_buffer, caller
from .frames import read_frames

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

PATH = "/v1/listen"

_FLAGS = frozenset(
    [
        "interim_results",
        "punctuate",
        "smart_format",
        "vad_events",
        "multichannel",
        "diarize",
        "numerals",
        "filler_words",
        "profanity_filter",
        "dictation",
        "no_delay",
        "mip_opt_out",
    ]
)
"""Boolean parameters: ``true`` or ``false`` exactly (§1.4)."""
_IGNORED = frozenset(
    ["keywords", "keyterm", "diarize_model", "tag", "extra", "version", "language_hint"]
)
"""Accepted and not used: they tune a model we do not run, or tag requests."""
_UNSERVED = frozenset(["redact", "replace", "search", "detect_entities", "callback"])
"""Deepgram's, but they change the answer in ways no engine here can: refused by name."""
_OURS = frozenset(["engine", "access_token"])
_KNOWN = (
    _FLAGS
    | _IGNORED
    | _UNSERVED
    | _OURS
    | {"model", "language", "encoding", "sample_rate", "channels", "endpointing"}
    | {"utterance_end_ms", "callback_method"}
)


@dataclass(frozen=True, slots=True)
class ListenParams:
    """A ``/v1/listen`` query, checked: the session config it asks for and how to answer.

    Attributes:
        config: the session config (``model`` None: the engine's own).
        model: the model the client named (``nova-3`` if it named none).
        raw: audio is raw (``encoding`` given); otherwise a container is expected (§1.5).
        vad_events: send ``SpeechStarted``.
        utterance_end: send ``UtteranceEnd``.
        speech_final: report endpoints (``endpointing`` not ``false``).
        punctuate: words carry ``punctuated_word``.
    """

    config: SessionConfig
    model: str
    raw: bool
    vad_events: bool
    utterance_end: bool
    speech_final: bool
    punctuate: bool


def parse_params(query: MultiMapping[str], default_engine: str) -> ListenParams:
    """Check a ``/v1/listen`` query as Deepgram does (§1.4, §7 rule 3).

    Raises:
        ParamError: a value Deepgram refuses, a parameter nobody defines, or one this gateway
            does not serve (the message names it).
    """
    for key in query:
        if key not in _KNOWN:
            raise wire.ParamError(f"Unknown query parameter '{key}'.")
        if key in _UNSERVED or key == "callback_method":
            raise wire.ParamError(f"'{key}' is not supported by this gateway.")
    one = {key: query.getone(key) for key in query if key not in ("keywords", "keyterm")}
    flags = {k: wire.bool_value(k, one[k]) for k in _FLAGS if k in one}
    encoding = one.get("encoding")
    if encoding is not None:
        if encoding not in wire.ENCODINGS:
            raise wire.ParamError(f"Invalid 'encoding' value of '{encoding}'.")
        if encoding not in ("linear16", "mulaw", "alaw"):
            raise wire.ParamError(
                f"raw encoding '{encoding}' is not supported by this gateway yet: send "
                f"linear16, mulaw or alaw, or a container (WAV, Ogg, WebM, MP3, FLAC) with no "
                f"encoding."
            )
        if "sample_rate" not in one:
            raise wire.ParamError("'sample_rate' is required when 'encoding' is set.")
    sample_rate = wire.int_value("sample_rate", one.get("sample_rate", "16000"), 8000, 96000)
    channels = wire.int_value("channels", one.get("channels", "1"), 1, 20)
    if channels > 8:
        raise wire.ParamError("more than 8 channels are not supported by this gateway.")
    multichannel = flags.get("multichannel", False)
    if multichannel and channels < 2:
        raise wire.ParamError(
            "'multichannel=true' needs 'channels' of 2 or more (for a container too: the "
            "channels it holds)."
        )
    endpointing_ms: int | None = None
    speech_final = True
    match one.get("endpointing"):
        case None | "true":
            pass  # Deepgram's default is 10 ms, far below what a local VAD can tell apart
        case "false":
            speech_final = False
        case value:
            endpointing_ms = max(10, wire.int_value("endpointing", value, 0, 10_000))
    interim = flags.get("interim_results", False)
    utterance_end_ms = None
    if "utterance_end_ms" in one:
        utterance_end_ms = wire.int_value("utterance_end_ms", one["utterance_end_ms"], 1000, 5000)
    engine = one.get("engine", default_engine)
    model = one.get("model", "nova-3")
    if not model:
        raise wire.ParamError("Invalid 'model' value of ''.")
    language = one.get("language", "en")
    # Deepgram's model names mean the engine's own model on an engine of ours; any other name
    # goes to the engine, which refuses what it does not have.
    engine_model = model if engine == "deepgram" or not wire.is_deepgram_model(model) else None
    try:
        config = SessionConfig(
            engine=engine,
            language=language,
            model=engine_model,
            interim_results=interim,
            sample_rate=sample_rate,
            encoding=cast(Encoding, encoding or "linear16"),
            channels=channels if encoding or multichannel else 1,
            multichannel=multichannel,
            endpointing_ms=endpointing_ms,
            # UtteranceEnd needs interim results (§1.4).
            utterance_end_ms=utterance_end_ms if interim else None,
        )
    except ValueError as exc:
        raise wire.ParamError(f"Invalid query parameters: {exc}".splitlines()[0]) from None
    return ListenParams(
        config=config,
        model=model,
        raw=encoding is not None,
        vad_events=flags.get("vad_events", False),
        utterance_end=utterance_end_ms is not None and interim,
        speech_final=speech_final,
        punctuate=flags.get("punctuate", False) or flags.get("smart_format", False),
    )


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


# -- audio in ---------------------------------------------------------------------------------


class AudioIn:
    """Bytes as a Deepgram client sends them, made ready for :meth:`Session.feed`.

    Raw audio (``encoding`` given) is passed on in whole frames: Deepgram takes any chunk size
    (§2.1), so a partial frame waits for the next chunk. Without ``encoding`` the stream must
    be a container (§1.5): its first bytes are checked, then it goes on as it came (the
    session's decode stage reads it).

    Args:
        frame_bytes: bytes per raw frame (sample bytes × channels); None: a container.
    """

    def __init__(self, frame_bytes: int | None) -> None:
        self._frame = frame_bytes
        self._held = b""  # a partial raw frame, or the first bytes of a container
        self._checked = frame_bytes is not None

    def push(self, data: bytes) -> bytes:
        """What of ``data`` (and earlier bytes held) may be fed now.

        Raises:
            UnsupportedAudio: no ``encoding`` was given and the stream is no container.
        """
        if self._held:
            data, self._held = self._held + data, b""
        if not self._checked:
            what = sniff(data[:SNIFF_BYTES])
            if what is False:
                self._held = data
                return b""
            if not isinstance(what, Container):
                raise UnsupportedAudio(
                    f"no encoding was given and the audio is no container (it starts with "
                    f"{describe(data)}); for raw audio send encoding=linear16&sample_rate=<Hz>"
                )
            self._checked = True
        if self._frame is None or self._frame == 1:
            return data
        cut = len(data) - len(data) % self._frame
        self._held = data[cut:]
        return data[:cut]


async def _feed(session: Session, data: bytes, producer: object | None, limit: int) -> bytes:
    """Feed ``data`` in pieces of at most ``limit`` bytes (Deepgram takes any chunk size; a
    multiple of 8 bytes keeps raw frames whole); the PCM16 it gave."""
    step = limit - limit % 8
    return b"".join(
        [await session.feed(data[i : i + step], producer) for i in range(0, len(data), step)]
    )


def _frame_bytes(params: ListenParams) -> int | None:
    """Bytes per raw frame of the query's audio; None: a container."""
    if not params.raw:
        return None
    config = params.config
    return (2 if config.encoding == "linear16" else 1) * config.channels


# -- our events → Deepgram's messages -----------------------------------------------------


class Encoder:
    """One connection's session events as Deepgram messages (§3).

    Results tile the stream (§5.2): each starts where the last final ended. A ``Finalize``
    marks the next final published ``from_finalize`` (our events do not say which request
    made a final: a natural final already on its way when the Finalize came takes the mark).

    Args:
        session: the connection's session.
        params: its query.
    """

    def __init__(self, session: Session, params: ListenParams) -> None:
        self._params = params
        self._session = session
        config = session.config
        self._channels = config.channels if config.multichannel else 1
        self._segment_start = [0.0] * self._channels  # Results tile each channel (§5.2)
        self.finalize_asked = False
        self.digest = wire.AudioDigest(config.sample_rate * 2 * self._channels)
        name = session.config.model or params.model
        self._model_uuid, self._model_info = wire.model_info(name, session.engine_name, __version__)
        self._metadata = wire.DGResultsMetadata(
            request_id=session.id, model_info=self._model_info, model_uuid=self._model_uuid
        )

    def encode(self, text: str) -> list[str]:
        """The Deepgram messages for one event's JSON (none for most errors)."""
        event = EVENT_ADAPTER.validate_json(text)
        p = self._params
        if isinstance(event, FinalEvent):
            data = event.data
            from_finalize, self.finalize_asked = self.finalize_asked, False
            words = wire.words_of(
                ((w.word, w.start, w.end, w.confidence) for w in data.words), p.punctuate
            )
            return [
                self._results(
                    data.text,
                    data.confidence,
                    data.end,
                    True,
                    words,
                    speech_final=data.speech_final and p.speech_final,
                    from_finalize=from_finalize,
                    channel=data.channel or 0,
                )
            ]
        if isinstance(event, TokenEvent):
            if not p.config.interim_results:
                return []
            data_t = event.data
            return [
                self._results(
                    data_t.text,
                    data_t.confidence,
                    data_t.end,
                    False,
                    [],
                    channel=data_t.channel or 0,
                )
            ]
        if isinstance(event, SpeechStartEvent):
            if not p.vad_events:
                return []
            channel = [event.data.channel or 0, self._channels]
            return [
                wire.dump(wire.DGSpeechStarted(channel=channel, timestamp=event.data.timestamp))
            ]
        if isinstance(event, SpeechEndEvent):
            if not p.utterance_end:
                return []
            channel = [event.data.channel or 0, self._channels]
            end = event.data.last_word_end
            return [wire.dump(wire.DGUtteranceEnd(channel=channel, last_word_end=end))]
        return []

    def _results(
        self,
        text: str,
        confidence: float,
        end: float,
        is_final: bool,
        words: list[wire.DGWord],
        *,
        speech_final: bool = False,
        from_finalize: bool = False,
        channel: int = 0,
    ) -> str:
        start = self._segment_start[channel]
        if is_final:
            self._segment_start[channel] = max(start, end)
        message = wire.DGResults(
            channel_index=[channel, self._channels],
            duration=round(max(0.0, end - start), 3),
            start=round(start, 3),
            is_final=is_final,
            speech_final=speech_final,
            channel=wire.DGChannel(
                alternatives=[
                    wire.DGAlternative(transcript=text, confidence=confidence, words=words)
                ]
            ),
            metadata=self._metadata,
            from_finalize=from_finalize,
        )
        return wire.dump(message)

    def metadata(self) -> wire.DGMetadata:
        """The end-of-stream ``Metadata`` (§3.2)."""
        heard = self.digest.duration_s > 0
        return wire.DGMetadata(
            request_id=self._session.id,
            sha256=self.digest.sha256,
            created=_iso(self._session.created_at),
            duration=self.digest.duration_s,
            channels=self._channels if heard else 0,
            models=[self._model_uuid] if heard else None,
            model_info={self._model_uuid: self._model_info} if heard else None,
        )


def _iso(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


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
        self._audio = AudioIn(_frame_bytes(params))
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


def _prerecorded_channel(
    finals: list[FinalData], params: ListenParams
) -> wire.DGPrerecordedChannel:
    """One channel of a pre-recorded answer: its finals' text, mean confidence and words."""
    words = [
        w
        for final in finals
        for w in wire.words_of(
            ((x.word, x.start, x.end, x.confidence) for x in final.words), params.punctuate
        )
    ]
    confidence = sum(f.confidence for f in finals) / len(finals) if finals else 0.0
    return wire.DGPrerecordedChannel(
        alternatives=[
            wire.DGAlternative(
                transcript=" ".join(f.text for f in finals),
                confidence=round(confidence, 4),
                words=words,
            )
        ]
    )


# -- pre-recorded --------------------------------------------------------------------------


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
    audio = AudioIn(_frame_bytes(params))
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
                _prerecorded_channel([f for f in finals if (f.channel or 0) == i], params)
                for i in range(channels)
            ]
        ),
    )
    return web.Response(
        text=wire.dump(answer),
        content_type="application/json",
        headers={"dg-request-id": session.id},
    )
