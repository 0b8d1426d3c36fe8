"""REST routes: create, inspect and close sessions; read transcripts; POST audio chunks."""

from __future__ import annotations

from aiohttp import web
from pydantic import ValidationError

from ..audio.pcm import decode_base64, duration_ms
from ..errors import (
    BadRequestBody,
    ChunkTooLarge,
    InvalidConfig,
    UnsupportedAudio,
    UnsupportedMediaType,
)
from ..models import (
    AudioAccepted,
    AudioBody,
    CreateSessionBody,
    SessionClosedBody,
    SessionCreated,
    SessionTokens,
    TokenIssued,
    TokenRequest,
)
from .common import (
    AUTH,
    REGISTRY,
    SETTINGS,
    caller,
    cluster_of,
    local_session,
    model_response,
    validation_message,
)
from .remote import forward, from_store

routes = web.RouteTableDef()

# base64 holds 3 bytes in 4 characters; allow for the JSON around it.
_JSON_OVERHEAD_BYTES = 1024


@routes.post("/sessions")
async def create_session(request: web.Request) -> web.Response:
    """``POST /sessions`` → 201 :class:`SessionCreated` (with auth on, with publish and read
    tokens for the new session); 401/403 (``sessions:create``), 422 invalid config, 429
    ``rate_limited`` (the key's limits), 503 ``too_many_sessions``."""
    who = caller(request)
    who.require_any(("sessions:create",))
    raw = await request.read()
    try:
        body = CreateSessionBody.model_validate_json(raw) if raw.strip() else CreateSessionBody()
    except ValidationError as exc:
        raise InvalidConfig(validation_message(exc)) from None
    session = await request.app[REGISTRY].create(body.config, owner=who.key_id)
    tokens = None
    if (auth := request.app.get(AUTH)) is not None:
        settings = request.app[SETTINGS]
        ttl_s = min(settings.session_token_ttl_s, settings.token_max_ttl_s)
        publish = auth.mint(who.as_minter(), ["session:publish"], session.id, ttl_s)
        read = auth.mint(who.as_minter(), ["session:read"], session.id, ttl_s)
        tokens = SessionTokens(
            publish=publish.access_token, read=read.access_token, expires_in=ttl_s
        )
    base = request.url.with_query(None).with_fragment(None)
    path = f"/sessions/{session.id}"
    ws_scheme = "wss" if base.scheme == "https" else "ws"
    created = SessionCreated(
        session_id=session.id,
        stream_url=str(base.with_path(f"{path}/stream")),
        ws_url=str(base.with_scheme(ws_scheme).with_path(f"{path}/ws")),
        audio_url=str(base.with_path(f"{path}/audio")),
        config=session.config,
        tokens=tokens,
    )
    # No "tokens" key at all with auth off: its absence says so.
    return model_response(created, status=201, exclude=None if tokens else {"tokens"})


@routes.post("/tokens")
async def create_token(request: web.Request) -> web.Response:
    """``POST /tokens`` (a key, not a token) → 201 :class:`TokenIssued`; 401, 403, 404 when
    auth is off (there is nothing to mint), 422 a bad scope, session or ``ttl_s``."""
    auth = request.app.get(AUTH)
    if auth is None:
        raise web.HTTPNotFound(text="auth is off: no API key is configured, so no token is needed")
    who = caller(request)
    who.require_key()
    try:
        body = TokenRequest.model_validate_json(await request.read())
    except ValidationError as exc:
        raise InvalidConfig(validation_message(exc)) from None
    issued = auth.mint(who, body.scope, body.session_id, body.ttl_s)
    return model_response(
        TokenIssued(
            access_token=issued.access_token,
            expires_in=issued.expires_in,
            scope=issued.scope,
            session_id=issued.session_id,
        ),
        status=201,
    )


@routes.get("/sessions/{id}")
async def get_session(request: web.Request) -> web.Response:
    """``GET /sessions/{id}`` → :class:`~stt_gateway.models.SessionInfo`; 404."""
    session = local_session(request, "session:read")
    if session is None:
        return model_response(await from_store(cluster_of(request).info(request.match_info["id"])))
    return model_response(session.info())


@routes.delete("/sessions/{id}")
async def delete_session(request: web.Request) -> web.Response:
    """``DELETE /sessions/{id}``: flush, last finals, ``session_end``; idempotent; 404."""
    session = local_session(request, "session:publish")
    if session is None:
        cluster, session_id = cluster_of(request), request.match_info["id"]
        if (await from_store(cluster.record(session_id))).state != "closed":
            return await forward(request, cluster, b"")
        text = (await from_store(cluster.transcript(session_id))).text
        return model_response(SessionClosedBody(session_id=session_id, transcript=text))
    transcript = await session.close()
    return model_response(SessionClosedBody(session_id=session.id, transcript=transcript.text))


@routes.get("/sessions/{id}/transcript")
async def get_transcript(request: web.Request) -> web.Response:
    """``GET /sessions/{id}/transcript`` → every final so far; 404."""
    session = local_session(request, "session:read")
    if session is None:
        cluster = cluster_of(request)
        return model_response(await from_store(cluster.transcript(request.match_info["id"])))
    return model_response(session.transcript())


@routes.post("/sessions/{id}/summary")
async def post_summary(request: web.Request) -> web.Response:
    """``POST /sessions/{id}/summary``: a summary of the transcript so far, streamed on the
    session's events as ``summary_token``s and one ``summary`` (the session goes on) → 200
    the ``summary`` event's data once written. 404; 409 closed; 422 ``summary_unavailable``
    (no LLM); 502 ``summary_failed`` (also published as an ``error`` event)."""
    session = local_session(request, "session:publish")
    if session is None:
        return await forward(request, cluster_of(request), b"")
    return model_response(await session.summarize())


@routes.post("/sessions/{id}/audio")
async def post_audio(request: web.Request) -> web.Response:
    """``POST /sessions/{id}/audio``: the next chunk of the session's audio (PCM16 or what
    the session's config or the stream's first bytes say: G.711, WAV, Ogg, WebM, MP3, FLAC),
    JSON base64 or the bytes themselves (``application/octet-stream`` or ``audio/*``) → 202
    ``{"bytes", "audio_ms"}`` (``audio_ms``: the audio decoded from it so far).

    Errors: 400 bad base64 / odd byte count / empty chunk / bad body, 404 unknown session,
    409 closed session or another connection producing, 413 oversized chunk, 415 other
    content types or ``unsupported_media_type`` (bytes that are no audio decoded here), 429
    the engine is ``max_audio_lead_s`` behind (with ``Retry-After``).
    """
    session = local_session(request, "session:publish")
    limit = request.app[SETTINGS].max_chunk_bytes
    ctype = request.content_type
    if ctype == "application/json":
        limit_body = limit * 4 // 3 + _JSON_OVERHEAD_BYTES
    elif ctype == "application/octet-stream" or ctype.startswith("audio/"):
        limit_body = limit  # the bytes are recognised by what they hold, not by the type
    else:
        raise UnsupportedMediaType(
            f"Content-Type {ctype!r} is not taken here: send application/json "
            f'{{"audio_data": "<base64>"}}, or the bytes as application/octet-stream or '
            f"audio/*"
        )
    if request.content_length is not None and request.content_length > limit_body:
        raise ChunkTooLarge(
            f"the request body has {request.content_length} bytes; the audio chunk limit is "
            f"{limit} bytes"
        )
    raw = await request.read()
    if session is None:
        return await forward(request, cluster_of(request), raw)
    if ctype == "application/json":
        try:
            body = AudioBody.model_validate_json(raw)
        except ValidationError as exc:
            raise BadRequestBody(validation_message(exc)) from None
        pcm = decode_base64(body.audio_data)
    else:
        pcm = raw
    try:
        # 429 rather than hold a request while the engine lags
        heard = await session.feed(pcm, wait=False)
    except UnsupportedAudio as exc:
        raise UnsupportedMediaType(exc.message) from None
    return model_response(
        AudioAccepted(bytes=len(pcm), audio_ms=duration_ms(len(heard), session.config.sample_rate)),
        status=202,
    )
