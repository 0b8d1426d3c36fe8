"""Every way the gateway refuses or fails, in one tree.

::

    GatewayError                 code                 HTTP   WS / SSE
    ├── SessionNotFound          session_not_found    404    (route answers 404 before upgrade)
    ├── SessionClosed            session_closed       409    error event (to the sender)
    ├── ProducerConflict         producer_conflict    409    error event (to the sender)
    ├── TooManySessions          too_many_sessions    503    — (with Retry-After)
    ├── TooManySubscribers       too_many_subscribers 503    (answered before SSE / upgrade)
    ├── StoreUnavailable         store_unavailable    503    (the shared Redis cannot be reached)
    ├── OwnerUnreachable         owner_unreachable    502    (the session's process cannot be
    │                                                        reached to take its audio)
    ├── AudioLeadExceeded        audio_lead_exceeded  429    — (a socket is not read instead)
    ├── InvalidResumeId          invalid_resume_id    400    (handshake answers 400)
    ├── Unauthorized             unauthorized         401    (handshake answers 401)
    ├── Forbidden                forbidden            403    (handshake answers 403);
    │                            forbidden_origin            error event for a frame a
    │                            forbidden_host              read-only socket may not send
    ├── RateLimited              rate_limited         429    — (with Retry-After)
    ├── InvalidConfig            invalid_config       422    —
    ├── AudioError                                    4xx    error event, socket stays open
    │   ├── EmptyAudio           empty_audio          400
    │   ├── OddByteCount         odd_byte_count       400
    │   ├── BadBase64            bad_base64           400
    │   ├── BadRequestBody       bad_request          400
    │   ├── UnsupportedMediaType unsupported_media_type 415
    │   ├── UnsupportedAudio     unsupported_audio    415    (POST: unsupported_media_type)
    │   └── ChunkTooLarge        chunk_too_large      413
    ├── BadControlMessage        bad_control          —      error event, socket stays open
    ├── SummaryFailed            summary_failed       502    error event (to every subscriber)
    ├── SummaryUnavailable       summary_unavailable  422    — (no LLM configured)
    └── EngineError              engine_error         500    error event
        ├── EngineUnavailable    engine_unavailable   422    —
        └── UpstreamError        upstream_*           502/503 error event (Deepgram)

Codes that only ever arrive as ``error`` events, never as exceptions: ``slow_consumer`` (a
subscriber fell too far behind and was cut off; it may resume from its last seq), ``replay_gap``
(a resume asked for events the replay ring no longer holds; the message names the first seq),
``engine_timeout`` (on close, the engine made no progress for ``close_timeout_s``: its last
interim, if any, is published as a ``final`` with ``source: "interim"``), ``max_duration_soon``
(the session ends in a minute: ``session_end`` reason ``max_duration`` follows),
``upstream_reconnecting`` and ``upstream_reconnected`` (with ``gap_ms``).

Upstream (Deepgram) codes, as a ``POST /sessions`` answer when the first handshake fails, else
as ``error`` events: ``upstream_auth`` (401/403: the key was refused), ``upstream_rejected``
(400: Deepgram refused the config; its ``dg-error`` text is quoted), ``upstream_busy`` (429:
concurrency limit; 503 with ``Retry-After``), ``upstream_unavailable`` (5xx, network, timeout),
``upstream_bad_audio`` (close 1008 DATA-0000), ``upstream_timeout`` (close 1011 NET-0000 /
NET-0001), ``upstream_closed`` (the socket dropped), and ``upstream_error`` (reconnecting gave
up; ``session_end`` follows with that reason).

An error caused by one connection's own input (a bad frame or control message, audio after
the session closed, audio from a socket that is not the session's producer) goes to that
connection only: the HTTP answer, or an ``error`` event without ``seq`` on its WebSocket; it is
never published to the session's subscribers. Errors about the session itself (engine,
upstream, timeouts) are published to every subscriber with a ``seq``.

A handler never builds an error body by hand: it raises one of these, and the HTTP layer turns
it into ``{"error": {"code", "message"}}`` with :attr:`GatewayError.status`, while the WebSocket
layer turns it into an ``error`` event. Engines translate their own library's exceptions into
:class:`EngineError` at their edge (``raise EngineError(...) from exc``) so nothing above them
sees a vendor exception.
"""

from __future__ import annotations

from typing import ClassVar


class GatewayError(Exception):
    """Base of every error the gateway reports to a client.

    Attributes:
        code: a stable, machine-readable identifier (snake_case) clients may switch on.
        status: the HTTP status the REST layer answers with.
        message: a sentence a person understands, naming what was wrong.
    """

    code = "internal_error"
    status = 500
    retry_after_s: float | None = None
    """When set, the HTTP answer carries ``Retry-After`` (s)."""
    headers: ClassVar[dict[str, str]] = {}
    """Other headers the HTTP answer carries."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SessionNotFound(GatewayError):
    """No session has this id (never created, or removed after its retention time)."""

    code = "session_not_found"
    status = 404

    def __init__(self, session_id: str) -> None:
        super().__init__(f"no session with id {session_id!r}")


class SessionClosed(GatewayError):
    """The session is closing or closed and takes no more audio or control messages."""

    code = "session_closed"
    status = 409


class ProducerConflict(GatewayError):
    """Audio from a connection that is not the session's producer: another WebSocket already
    holds the session's audio (``docs/api.md``, "One client cannot hurt another")."""

    code = "producer_conflict"
    status = 409


class TooManySessions(GatewayError):
    """The gateway already holds ``max_sessions`` live sessions."""

    code = "too_many_sessions"
    status = 503
    retry_after_s = 5.0
    """A slot frees as soon as any session closes; a few seconds is a fair first wait."""


class TooManySubscribers(GatewayError):
    """The session already has ``max_subscribers`` subscribers."""

    code = "too_many_subscribers"
    status = 503
    retry_after_s = 5.0


class StoreUnavailable(GatewayError):
    """The shared store (``STT_GATEWAY_REDIS_URL``) cannot be reached, so a session of
    another process cannot be found, or a new one could not be shared."""

    code = "store_unavailable"
    status = 503
    retry_after_s = 2.0


class OwnerUnreachable(GatewayError):
    """The gateway process that owns the session (holds its engine) did not answer when this
    one passed it the session's audio or control."""

    code = "owner_unreachable"
    status = 502


class AudioLeadExceeded(GatewayError):
    """A POSTed chunk while the engine still has ``max_audio_lead_s`` of the session's audio
    to recognise: nothing of it is used; send it again after ``Retry-After``."""

    code = "audio_lead_exceeded"
    status = 429

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InvalidResumeId(GatewayError):
    """``Last-Event-ID``, ``last_event_id`` or ``since`` is not an integer in 0…2^63−1."""

    code = "invalid_resume_id"
    status = 400


class Unauthorized(GatewayError):
    """No credential, or one that is malformed, unknown, expired or badly signed (never which:
    ``docs/api.md``, "Who may call"). Answered with ``WWW-Authenticate: Bearer``."""

    code = "unauthorized"
    status = 401
    headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": 'Bearer realm="stt-gateway"'}

    def __init__(self) -> None:
        super().__init__(
            "a valid API key or token is required: Authorization: Bearer <key or token>"
        )


class Forbidden(GatewayError):
    """A request refused whatever its credentials say.

    Args:
        code: ``forbidden`` (a valid credential, but not for this scope or session),
            ``forbidden_origin`` (open mode: a foreign ``Origin``) or ``forbidden_host`` (open
            mode bound to loopback: a ``Host`` that is not a loopback name, DNS rebinding).
        message: what was refused (and, for the open-mode guards, how an operator allows it).
    """

    status = 403

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class RateLimited(GatewayError):
    """A key past its sessions at once or its session creations per minute."""

    code = "rate_limited"
    status = 429

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InvalidConfig(GatewayError):
    """A session config key is unknown or its value impossible; the message names the field."""

    code = "invalid_config"
    status = 422


class AudioError(GatewayError):
    """An audio chunk that cannot be PCM16: nothing of it is fed to the engine."""

    status = 400


class EmptyAudio(AudioError):
    """A chunk of zero bytes."""

    code = "empty_audio"


class OddByteCount(AudioError):
    """A chunk whose length is not a whole number of 2-byte PCM16 samples."""

    code = "odd_byte_count"


class BadBase64(AudioError):
    """``audio_data`` in a JSON body is not valid base64."""

    code = "bad_base64"


class BadRequestBody(AudioError):
    """A request body that is not the JSON shape or content type the route takes."""

    code = "bad_request"


class UnsupportedMediaType(AudioError):
    """An audio POST whose ``Content-Type`` is neither JSON nor ``application/octet-stream``."""

    code = "unsupported_media_type"
    status = 415


class UnsupportedAudio(AudioError):
    """Bytes that are no audio the gateway decodes (a zip, an MP4, a container FFmpeg cannot
    read); the message names what they looked like. The stream starts over: the next bytes
    are recognised afresh.

    Attributes:
        decoded: PCM16 decoded from the stream before the failure (the session still hears
            it: a stream that goes bad loses only what comes after).
    """

    code = "unsupported_audio"
    status = 415

    def __init__(self, message: str, decoded: bytes = b"") -> None:
        super().__init__(message)
        self.decoded = decoded


class ChunkTooLarge(AudioError):
    """A chunk larger than the ``max_chunk_bytes`` setting."""

    code = "chunk_too_large"
    status = 413


class BadControlMessage(GatewayError):
    """A WebSocket text frame that is not a known JSON control message."""

    code = "bad_control"
    status = 400


class SummaryFailed(GatewayError):
    """The LLM endpoint did not give a summary: down, over ``llm_timeout_s``, refusing
    (401/429/…), or answering what is not an OpenAI chat stream. The message says which; it
    never holds the endpoint's key. The session goes on (or ends as it was going to)."""

    code = "summary_failed"
    status = 502


class SummaryUnavailable(GatewayError):
    """A summary was asked of a gateway with no LLM endpoint (``STT_GATEWAY_LLM_URL``)."""

    code = "summary_unavailable"
    status = 422


class EngineError(GatewayError):
    """The speech engine failed; the message says how, without vendor internals or secrets."""

    code = "engine_error"
    status = 500


class EngineUnavailable(EngineError):
    """The requested engine cannot serve on this install (missing model, key or package)."""

    code = "engine_unavailable"
    status = 422


class UpstreamError(EngineError):
    """The upstream speech service failed; ``code`` says how (see the module docstring).

    Args:
        code: one of the ``upstream_*`` codes.
        message: what happened, for people; never contains the API key.
        status: the HTTP status when this answers ``POST /sessions``.
        retryable: whether reconnecting may help (429, 5xx, drops, 1011).
        retry_after_s: the ``Retry-After`` for an HTTP answer.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int = 502,
        retryable: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.retryable = retryable
        self.retry_after_s = retry_after_s
