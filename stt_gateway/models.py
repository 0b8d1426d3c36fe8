"""Request and response bodies of the REST routes (``docs/api.md`` § Sessions, § Audio in)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from .auth import Scope
from .events import SummaryData


def _whole_number(value: Any) -> Any:
    """JSON Schema counts 300.0 as an integer; so do we. ``"300"`` stays refused."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


WholeNumber = Annotated[int, BeforeValidator(_whole_number)]


EngineName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
"""An engine's config name: ``local``, ``whisper`` and ``deepgram`` come with the gateway; the
set is open (a deployment or a test registers its own), so the registry, not this type, says
which names serve here."""


class SummaryOptions(BaseModel):
    """How a session's summary is asked for (``docs/api.md``, "Summary at the end")."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    prompt: str | None = Field(
        None,
        min_length=1,
        max_length=4000,
        description="instructions to the LLM in place of the gateway's (the transcript, with "
        "its times, follows them)",
    )
    language: str | None = Field(
        None,
        min_length=2,
        max_length=35,
        description="language to write the summary in; default: the session's language",
    )


class SessionConfig(BaseModel):
    """A session's recognition config. Every key is optional; unknown keys are refused.

    Validation is strict (``"16000"`` is not a sample rate), so a client learns of a typo at
    ``POST /sessions`` rather than from a silent default. ``None`` means "the engine's default";
    the effective config returned on creation has every default filled in.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    engine: EngineName | None = Field(
        None,
        description="`local`, `whisper` or `deepgram` (`GET /info` lists this gateway's); "
        "default: the gateway's default engine (`local` unless set otherwise)",
    )
    fallback_engine: EngineName | None = Field(
        None,
        description="an upstream engine (`deepgram`) that gives up hands the session to this "
        "embedded engine from the first audio no final covers, instead of ending it; `none`: "
        "end it; default: the gateway's `fallback_engine` where it serves the language",
    )
    language: str | None = Field(
        None, min_length=2, max_length=35, description="BCP-47 tag; default: the engine's own"
    )
    model: str | None = Field(None, min_length=1, max_length=100)
    interim_results: bool = True
    sample_rate: WholeNumber = Field(
        16000,
        ge=8000,
        le=96000,
        description="Hz of raw audio sent in, and of the PCM16 the engine is given (a "
        "container's audio is resampled to it)",
    )
    encoding: Literal["linear16", "mulaw", "alaw"] = Field(
        "linear16",
        description="raw audio: PCM16 little-endian (`linear16`) or 8-bit G.711 (`mulaw`, "
        "`alaw`); with `linear16`, a container (WAV, Ogg, WebM, MP3, FLAC) is recognised "
        "from its first bytes and decoded",
    )
    channels: Annotated[int, Field(ge=1, le=8), BeforeValidator(_whole_number)] = Field(
        1,
        description="channels of raw audio, interleaved; mixed to mono unless multichannel "
        "(then also the channels a container must hold)",
    )
    multichannel: bool = Field(
        False,
        description="transcribe each of `channels` (2 or more) as its own stream: every "
        "result event and transcript segment carries its `channel` (Deepgram's multichannel)",
    )
    # Bounds before the validator inside the Annotated: put on the optional union they
    # would reach the JSON schema as raw "ge"/"le" rather than minimum/maximum.
    endpointing_ms: (
        Annotated[int, Field(ge=10, le=10_000), BeforeValidator(_whole_number)] | None
    ) = Field(None, description="silence (ms) that ends an utterance")
    utterance_end_ms: (
        Annotated[int, Field(ge=1000, le=5000), BeforeValidator(_whole_number)] | None
    ) = Field(None, description="gap after the last word (ms) that sends speech_end")

    summary: bool | SummaryOptions = Field(
        False,
        description="true or {prompt, language}: when the session ends, after its last final "
        "and before session_end, an LLM's summary streams as summary_token events and one "
        "summary event (needs the gateway's STT_GATEWAY_LLM_URL; /info says)",
    )

    @property
    def summary_options(self) -> SummaryOptions | None:
        """The summary asked for at the end, if any."""
        if isinstance(self.summary, SummaryOptions):
            return self.summary
        return SummaryOptions() if self.summary else None

    @model_validator(mode="after")
    def _multichannel_needs_channels(self) -> SessionConfig:
        if self.multichannel and self.channels < 2:
            raise ValueError("multichannel needs channels of 2 or more")
        return self


class CreateSessionBody(BaseModel):
    """``POST /sessions`` body; may be absent altogether."""

    model_config = ConfigDict(extra="forbid", strict=True)

    config: SessionConfig = SessionConfig()


class SessionTokens(BaseModel):
    """Tokens for one session, so a browser needs nothing else (``docs/api.md``)."""

    publish: str = Field(description="session:publish: audio, controls and DELETE")
    read: str = Field(description="session:read: GET, transcript, SSE and WebSocket events")
    expires_in: int = Field(description="s until both expire")


class SessionCreated(BaseModel):
    """``201`` answer of ``POST /sessions``: where to send audio and read events."""

    session_id: str
    stream_url: str = Field(description="SSE event stream path")
    ws_url: str = Field(description="WebSocket path: audio in, events out")
    audio_url: str = Field(description="HTTP audio chunk path")
    config: SessionConfig = Field(description="the effective config, defaults filled in")
    tokens: SessionTokens | None = Field(
        None, description="with auth on: tokens scoped to this session (absent when auth is off)"
    )


class TokenRequest(BaseModel):
    """``POST /tokens`` body (a key required)."""

    model_config = ConfigDict(extra="forbid")

    scope: list[Scope] = Field(min_length=1, description="what the token may do")
    session_id: str | None = Field(
        None, max_length=64, description="the session (required for session:* scopes)"
    )
    ttl_s: int = Field(60, ge=1, description="lifetime (s), at most token_max_ttl_s")


class TokenIssued(BaseModel):
    """``201`` answer of ``POST /tokens``."""

    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="s")
    scope: list[Scope]
    session_id: str | None = None


SessionState = Literal["created", "streaming", "closing", "closed"]


class SessionInfo(BaseModel):
    """``GET /sessions/{id}``."""

    session_id: str
    state: SessionState
    created_at: float = Field(description="Unix time (s)")
    audio_seconds: float = Field(description="s of audio received so far")
    subscribers: int
    last_seq: int = Field(description="seq of the newest event; 0 before the first")
    replay_events: int = Field(description="events held for resume")
    replay_bytes: int = Field(description="bytes of event JSON held for resume")
    config: SessionConfig
    request_id: str | None = Field(
        None, description="the upstream service's id for this stream (Deepgram request_id)"
    )
    final_lag_ms: float = Field(
        0.0,
        description="ms the oldest ended utterance has waited for its final (0: none waits); "
        "grows when the engine's final pass is saturated (engine whisper)",
    )
    engine_backlog_s: float = Field(
        0.0,
        description="s of audio the engine has taken and not yet recognised; a producer is "
        "held back while it is at the max_audio_lead_s limit",
    )
    summary: SummaryData | None = Field(None, description="the newest summary, if any")


class Segment(BaseModel):
    """One final result in the transcript: text and its span (s of session audio)."""

    text: str
    start: float
    end: float
    confidence: float
    source: Literal["interim"] | None = Field(
        None, description='"interim": the engine could not finish it (see the final event)'
    )
    channel: int | None = Field(None, description="multichannel sessions: its channel")


class _FinalLike(Protocol):
    """A final as the transcript needs it (read-only: a final event's data or a kept tuple)."""

    @property
    def text(self) -> str: ...
    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...
    @property
    def confidence(self) -> float: ...
    @property
    def source(self) -> Literal["interim"] | None: ...
    @property
    def channel(self) -> int | None: ...


class Transcript(BaseModel):
    """``GET /sessions/{id}/transcript``: every final so far, in order."""

    session_id: str
    text: str = Field(description="the finals' texts joined by single spaces")
    segments: list[Segment]
    summary: SummaryData | None = Field(
        None, description="the newest summary (config summary, or POST …/summary), if any"
    )

    @classmethod
    def of(
        cls, session_id: str, finals: Sequence[_FinalLike], summary: SummaryData | None = None
    ) -> Transcript:
        """The transcript of ``finals`` (anything with a final's text, span and source)."""
        return cls(
            session_id=session_id,
            summary=summary,
            text=" ".join(f.text for f in finals),
            segments=[
                Segment(
                    text=f.text,
                    start=f.start,
                    end=f.end,
                    confidence=f.confidence,
                    source=f.source,
                    channel=f.channel,
                )
                for f in finals
            ],
        )


class SessionClosedBody(BaseModel):
    """``200`` answer of ``DELETE /sessions/{id}``."""

    session_id: str
    transcript: str


class AudioAccepted(BaseModel):
    """``202`` answer of ``POST /sessions/{id}/audio``."""

    bytes: int
    audio_ms: float = Field(description="ms of audio in this chunk at the session's sample rate")


class AudioBody(BaseModel):
    """``POST /sessions/{id}/audio`` JSON body."""

    model_config = ConfigDict(extra="forbid", strict=True)

    audio_data: str = Field(
        description="base64 (RFC 4648, padded) of PCM16 little-endian mono samples: a whole, "
        "non-zero number of 2-byte samples",
        # In the schema only: the route checks these itself, so a client learns which one
        # failed (bad_base64, empty_audio, odd_byte_count) rather than a generic bad_request.
        # Groups of 8 characters are 6 bytes; the tails add 2 or 4: always an even count.
        json_schema_extra={
            "contentEncoding": "base64",
            "minLength": 4,
            "pattern": r"^(?:[A-Za-z0-9+/]{8})*(?:[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{6}==)?$",
        },
    )


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """Every 4xx/5xx body: ``{"error": {"code", "message"}}``."""

    error: ErrorDetail


class ControlMessage(BaseModel):
    """A WebSocket text frame: ``{"type": "finalize" | "close" | "keepalive"}``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["finalize", "close", "keepalive"]
