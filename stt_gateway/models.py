"""Request and response bodies of the REST routes (``docs/api.md`` § Sessions, § Audio in)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SessionConfig(BaseModel):
    """A session's recognition config. Every key is optional; unknown keys are refused.

    Validation is strict (``"16000"`` is not a sample rate), so a client learns of a typo at
    ``POST /sessions`` rather than from a silent default. ``None`` means "the engine's default";
    the effective config returned on creation has every default filled in.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    engine: Literal["local", "deepgram"] = "local"
    language: str | None = Field(
        None, min_length=2, max_length=35, description="BCP-47 tag; default: the engine's own"
    )
    model: str | None = Field(None, min_length=1, max_length=100)
    interim_results: bool = True
    sample_rate: int = Field(16000, ge=8000, le=96000, description="Hz of the PCM16 sent in")
    encoding: Literal["linear16"] = "linear16"
    channels: Literal[1] = 1
    endpointing_ms: int | None = Field(
        None, ge=10, le=10_000, description="silence (ms) that ends an utterance"
    )
    utterance_end_ms: int | None = Field(
        None, ge=1000, le=5000, description="gap after the last word (ms) that sends speech_end"
    )


class CreateSessionBody(BaseModel):
    """``POST /sessions`` body; may be absent altogether."""

    model_config = ConfigDict(extra="forbid", strict=True)

    config: SessionConfig = SessionConfig()


class SessionCreated(BaseModel):
    """``201`` answer of ``POST /sessions``: where to send audio and read events."""

    session_id: str
    stream_url: str = Field(description="SSE event stream path")
    ws_url: str = Field(description="WebSocket path: audio in, events out")
    audio_url: str = Field(description="HTTP audio chunk path")
    config: SessionConfig = Field(description="the effective config, defaults filled in")


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


class Segment(BaseModel):
    """One final result in the transcript: text and its span (s of session audio)."""

    text: str
    start: float
    end: float
    confidence: float


class Transcript(BaseModel):
    """``GET /sessions/{id}/transcript``: every final so far, in order."""

    session_id: str
    text: str = Field(description="the finals' texts joined by single spaces")
    segments: list[Segment]


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

    audio_data: str = Field(description="base64 of PCM16 little-endian mono samples")


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
