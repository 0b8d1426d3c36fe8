"""The events a session publishes, as pydantic models (one definition: validation, JSON, schema).

Wire shape (``docs/api.md`` § Events out)::

    {"event_type": "final", "seq": 12, "session_id": "…", "timestamp": 1732291200.123,
     "data": {...}}

``timestamp`` is wall-clock Unix time (s) at publish; times inside ``data`` (``start``, ``end``,
``timestamp``, ``last_word_end``) are seconds of session audio, counted from the first sample the
session received. ``seq`` is absent only on ``heartbeat``.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class _Data(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TokenData(_Data):
    """An interim hypothesis for the utterance in progress; a later one may revise it."""

    text: str
    confidence: float = Field(ge=0, le=1, description="0–1; 0 where the engine gives none")
    start: float = Field(description="s of session audio")
    end: float = Field(description="s of session audio")
    channel: int | None = Field(
        None, ge=0, description="multichannel sessions: the channel (0-based); absent otherwise"
    )


def unit_interval(x: float) -> float:
    """``x`` clamped to [0, 1]: a confidence as the contract gives it (engines' own scores can
    stray past either end)."""
    return min(1.0, max(0.0, x))


class Word(_Data):
    """One recognised word with its span in session audio (s) and confidence (0–1)."""

    word: str
    start: float
    end: float
    confidence: float = Field(ge=0, le=1)


class FinalData(TokenData):
    """A final result: never revised, stored in the transcript."""

    words: list[Word]
    speech_final: bool = Field(description="true when an endpoint (end of utterance) closed it")
    source: Literal["interim"] | None = Field(
        None,
        description='"interim": the engine could not finish this utterance (it failed, or did '
        "not flush in time on close), so its last interim stands as the final; absent otherwise",
    )


class SpeechStartData(_Data):
    """Voice activity began."""

    timestamp: float = Field(description="s of session audio at speech onset")
    channel: int | None = Field(
        None, ge=0, description="multichannel sessions: the channel (0-based); absent otherwise"
    )


class SpeechEndData(_Data):
    """Voice activity ended (an endpoint)."""

    last_word_end: float = Field(description="s of session audio where the last word ended")
    channel: int | None = Field(
        None, ge=0, description="multichannel sessions: the channel (0-based); absent otherwise"
    )


class HeartbeatData(_Data):
    """Keeps idle streams open through proxies."""

    status: Literal["alive"] = "alive"


class ErrorData(_Data):
    """Something went wrong; the session goes on unless ``session_end`` follows."""

    code: str = Field(description="stable snake_case identifier, see stt_gateway.errors")
    message: str
    gap_ms: float | None = Field(
        None, description="upstream_reconnected only: how long the upstream was away (ms)"
    )


class SessionEndData(_Data):
    """The last event of a session."""

    reason: str = Field(
        description="client_closed, idle_timeout, engine_error, shutdown, node_lost (its "
        "gateway process was lost), …"
    )
    audio_seconds: float = Field(description="s of audio the session received")


class SummaryTokenData(_Data):
    """The next piece of a summary as the LLM streams it (append the pieces in ``seq`` order)."""

    text: str


class SummaryData(_Data):
    """A whole summary of the transcript so far (``docs/api.md``, "Summary at the end")."""

    text: str
    model: str = Field(description="the LLM that wrote it")
    segments_left_out: int = Field(
        0,
        ge=0,
        description="the oldest finals left out of the prompt to fit the model's context "
        "(0: the summary saw the whole transcript)",
    )


EngineResult = TokenData | FinalData | SpeechStartData | SpeechEndData | ErrorData
"""What an engine yields; the session wraps each in its event envelope."""


class _Envelope(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    event_type: str

    seq: int | None = Field(None, ge=1, description="1, 2, … per session; absent on heartbeat")
    session_id: str
    timestamp: float = Field(description="wall-clock Unix time (s) at publish")


class TokenEvent(_Envelope):
    event_type: Literal["token"] = "token"
    data: TokenData


class FinalEvent(_Envelope):
    event_type: Literal["final"] = "final"
    data: FinalData


class SpeechStartEvent(_Envelope):
    event_type: Literal["speech_start"] = "speech_start"
    data: SpeechStartData


class SpeechEndEvent(_Envelope):
    event_type: Literal["speech_end"] = "speech_end"
    data: SpeechEndData


class HeartbeatEvent(_Envelope):
    event_type: Literal["heartbeat"] = "heartbeat"
    data: HeartbeatData = HeartbeatData()


class ErrorEvent(_Envelope):
    event_type: Literal["error"] = "error"
    data: ErrorData


class SummaryTokenEvent(_Envelope):
    event_type: Literal["summary_token"] = "summary_token"
    data: SummaryTokenData


class SummaryEvent(_Envelope):
    event_type: Literal["summary"] = "summary"
    data: SummaryData


class SessionEndEvent(_Envelope):
    event_type: Literal["session_end"] = "session_end"
    data: SessionEndData


Event = Annotated[
    TokenEvent
    | FinalEvent
    | SpeechStartEvent
    | SpeechEndEvent
    | HeartbeatEvent
    | ErrorEvent
    | SummaryTokenEvent
    | SummaryEvent
    | SessionEndEvent,
    Field(discriminator="event_type"),
]
"""Any event, discriminated by ``event_type``."""

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
"""Parses one event's JSON (clients and tests): ``EVENT_ADAPTER.validate_json(text)``."""

EventData = (
    TokenData
    | FinalData
    | SpeechStartData
    | SpeechEndData
    | HeartbeatData
    | ErrorData
    | SummaryTokenData
    | SummaryData
    | SessionEndData
)
"""Any event's ``data``."""

_ENVELOPE_FOR: dict[type[_Data], type[_Envelope]] = {
    TokenData: TokenEvent,
    FinalData: FinalEvent,
    SpeechStartData: SpeechStartEvent,
    SpeechEndData: SpeechEndEvent,
    HeartbeatData: HeartbeatEvent,
    ErrorData: ErrorEvent,
    SummaryTokenData: SummaryTokenEvent,
    SummaryData: SummaryEvent,
    SessionEndData: SessionEndEvent,
}


_TYPE_OF: dict[type[_Data], bytes] = {
    data: envelope.model_fields["event_type"].default.encode()
    for data, envelope in _ENVELOPE_FOR.items()
}


def event_type_of(data: EventData) -> str:
    """The ``event_type`` an event with this ``data`` has (``token``, ``final``, …)."""
    return _TYPE_OF[type(data)].decode()


def encode_event(data: EventData, *, seq: int | None, session_id_json: bytes) -> bytes:
    """The event's wire JSON (UTF-8), the envelope stamped with the time now (Unix s).

    The same JSON :func:`make_event` gives (fields in envelope order, ``None`` left out), built
    without an envelope model: this runs once per published event, and only ``data`` needs
    pydantic's serialiser.

    Args:
        data: already validated.
        seq: ``None`` for an event off the log (an error for one connection, a heartbeat).
        session_id_json: the session id as a JSON string literal (quotes included).
    """
    body = data.__pydantic_serializer__.to_json(data, exclude_none=True)
    kind = _TYPE_OF[type(data)]
    if seq is None:
        return b'{"event_type":"%b","session_id":%b,"timestamp":%r,"data":%b}' % (
            kind,
            session_id_json,
            time.time(),
            body,
        )
    return b'{"event_type":"%b","seq":%d,"session_id":%b,"timestamp":%r,"data":%b}' % (
        kind,
        seq,
        session_id_json,
        time.time(),
        body,
    )


def make_event(data: EventData, *, seq: int | None, session_id: str) -> _Envelope:
    """Wrap already-validated ``data`` in its envelope, stamped with the time now (Unix s).

    Uses ``model_construct``: ``data`` was validated when it was built, and this runs for
    every event.
    """
    fields: dict[str, Any] = {
        "seq": seq,
        "session_id": session_id,
        "timestamp": time.time(),
        "data": data,
    }
    return _ENVELOPE_FOR[type(data)].model_construct(**fields)
