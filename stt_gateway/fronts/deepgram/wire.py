"""Deepgram's ``/v1/listen`` wire format, in one place: messages, query parameters, close codes.

Both sides of the gateway that speak Deepgram use it: the engine adapter
(:mod:`.upstream`, a client of Deepgram: its JSON → our events) and the
Deepgram-compatible front (:mod:`.listen`, a server to Deepgram's SDKs: our events →
its JSON). Nothing else imports it: vendor JSON stays between these three modules.

Every rule here follows ``docs/protocols/deepgram-live.md`` (cited as §n): message shapes and
key order (§3), query parameters (§1.4), close codes and reasons (§4.2), handshake refusals
(§1.3), the pre-recorded answer (appendix, point 10).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict

# -- messages (§3) ---------------------------------------------------------------------------
# Field order is the wire's key order (§3.1); parsing ignores keys we do not use and reads a
# missing flag as false (§3.1: the SDK schemas mark them optional).


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class DGWord(_Wire):
    """One word: ``word`` lower-case and unpunctuated; ``punctuated_word`` only with
    ``punctuate`` / ``smart_format``. Times in s of the connection's audio."""

    word: str
    start: float
    end: float
    confidence: float = 0.0
    punctuated_word: str | None = None


class DGAlternative(_Wire):
    transcript: str = ""
    confidence: float = 0.0
    words: list[DGWord] = []


class DGChannel(_Wire):
    alternatives: list[DGAlternative]


class DGModelInfo(_Wire):
    """``{name, version, arch}`` of the model that made a result."""

    name: str
    version: str
    arch: str


class DGResultsMetadata(_Wire):
    request_id: str | None = None
    model_info: DGModelInfo | None = None
    model_uuid: str | None = None


class DGResults(_Wire):
    """A transcript of the segment ``[start, start + duration)`` (s of the connection's
    audio); an interim (``is_final`` false) replaces the previous one of the segment."""

    type: Literal["Results"] = "Results"
    channel_index: list[int] = [0, 1]
    duration: float
    start: float
    is_final: bool = False
    speech_final: bool = False
    channel: DGChannel
    metadata: DGResultsMetadata | None = None
    from_finalize: bool = False


class DGSpeechStarted(_Wire):
    """Voice activity began at ``timestamp`` (s); sent only with ``vad_events=true``."""

    type: Literal["SpeechStarted"] = "SpeechStarted"
    channel: list[int] = [0, 1]
    timestamp: float


class DGUtteranceEnd(_Wire):
    """A gap after the last word ending at ``last_word_end`` (s; ``-1``: ignore, §3.4)."""

    type: Literal["UtteranceEnd"] = "UtteranceEnd"
    channel: list[int] = [0, 1]
    last_word_end: float


class DGMetadata(_Wire):
    """Sent once, at the end of a stream (§3.2); ``models`` and ``model_info`` only when
    audio was processed."""

    type: Literal["Metadata"] = "Metadata"
    transaction_key: str = "deprecated"
    request_id: str | None = None
    sha256: str = "incomplete"
    created: str = ""
    duration: float = 0.0
    channels: int = 0
    models: list[str] | None = None
    model_info: dict[str, DGModelInfo] | None = None


class DGError(_Wire):
    """A JSON error frame; ``SchemaError`` answers a malformed client message and the stream
    goes on (§3.5, from Deepgram's spec-mock)."""

    type: Literal["Error"] = "Error"
    variant: str
    description: str
    message: str = ""


class DGPrerecordedChannel(_Wire):
    alternatives: list[DGAlternative]


class DGPrerecordedResults(_Wire):
    channels: list[DGPrerecordedChannel]


class DGPrerecordedMetadata(_Wire):
    """What SDKs require of a pre-recorded answer's ``metadata`` (appendix, point 10)."""

    transaction_key: str = "deprecated"
    request_id: str
    sha256: str
    created: str
    duration: float
    channels: int
    models: list[str]
    model_info: dict[str, DGModelInfo]


class DGPrerecorded(_Wire):
    """``POST /v1/listen``'s answer."""

    metadata: DGPrerecordedMetadata
    results: DGPrerecordedResults


def dump(message: BaseModel) -> str:
    """One message as a text frame's JSON (absent optional fields left out)."""
    return message.model_dump_json(exclude_none=True)


# -- the model that answers ----------------------------------------------------------------


def model_info(name: str, arch: str, version: str) -> tuple[str, DGModelInfo]:
    """``(model_uuid, model_info)`` naming the model a result came from. The uuid is derived
    from the name (uuid5), so one model keeps one uuid across sessions and restarts."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"stt-gateway:{arch}:{name}")), DGModelInfo(
        name=name, version=version, arch=arch
    )


def created_now() -> str:
    """ISO-8601 UTC with milliseconds and ``Z``, as ``Metadata.created`` (§3.2)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AudioDigest:
    """``Metadata.sha256`` and ``duration`` of the audio a stream took: updated per chunk
    (hashlib, no copy). Args: bytes_per_s: of the audio fed."""

    def __init__(self, bytes_per_s: int) -> None:
        self._hash = hashlib.sha256()
        self._bytes = 0
        self._bytes_per_s = bytes_per_s

    def update(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self._bytes += len(chunk)

    @property
    def duration_s(self) -> float:
        return round(self._bytes / self._bytes_per_s, 3)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


# -- query parameters (§1.4) ---------------------------------------------------------------

ENCODINGS = frozenset(
    [
        "linear16",
        "linear32",
        "flac",
        "alaw",
        "mulaw",
        "amr-nb",
        "amr-wb",
        "opus",
        "ogg-opus",
        "speex",
        "g729",
    ]
)
"""Every encoding Deepgram names (§1.4)."""

_MODEL_FAMILIES = ("nova-3", "nova-2", "nova", "enhanced", "base", "whisper")
"""Deepgram model names are these, alone or with a ``-<domain>`` suffix (§1.4)."""


def is_deepgram_model(name: str) -> bool:
    """Whether ``name`` is one of Deepgram's model names (``nova-3``, ``nova-2-phonecall``,
    ``enhanced-general``, ``base``, …) or ``custom``."""
    return name == "custom" or any(
        name == family or name.startswith(family + "-") for family in _MODEL_FAMILIES
    )


def listen_url(base: str, params: dict[str, str | int | bool]) -> str:
    """``{base}/v1/listen?…`` with booleans lower-case and every value URL-encoded (§1.4)."""
    pairs = [
        (k, ("true" if v else "false") if isinstance(v, bool) else str(v))
        for k, v in params.items()
    ]
    return f"{base.rstrip('/')}/v1/listen?{urlencode(pairs)}"


class ParamError(ValueError):
    """A query parameter Deepgram would refuse with a handshake ``400`` (the message is the
    ``dg-error`` text)."""


def bool_value(name: str, value: str) -> bool:
    """``true`` / ``false`` exactly, lower-case (§1.4: ``True`` gives a 400).

    Raises:
        ParamError: anything else.
    """
    if value == "true":
        return True
    if value == "false":
        return False
    raise ParamError(f"Invalid '{name}' value of '{value}': expected true or false.")


def int_value(name: str, value: str, lo: int, hi: int) -> int:
    """A decimal integer within ``[lo, hi]``.

    Raises:
        ParamError: anything else (the message quotes the value, as Deepgram's does).
    """
    if not (value.isascii() and value.isdigit()) or not lo <= int(value) <= hi:
        raise ParamError(f"Invalid '{name}' value of '{value}'.")
    return int(value)


# -- close codes (§4.2) ----------------------------------------------------------------------

CLOSE_NORMAL = 1000
"""After ``CloseStream`` (or an empty binary frame): the finals, ``Metadata``, then this."""
CLOSE_DATA = 1008
"""``DATA-0000``: the payload could not be decoded as audio."""
CLOSE_NET = 1011
"""``NET-0001`` (nothing received within the window) and ``NET-0000`` (server trouble)."""
NET0001_REASON = (
    "Deepgram did not receive audio data or a text message within the timeout window. "
    "See https://dpgr.am/net0001"
)
"""The observed inactivity close reason, word for word (§4.2)."""


def net0000_reason(why: str) -> str:
    """A ``NET-0000`` close reason (server-side trouble), within a close frame's 123 bytes."""
    return f"NET-0000 {why}"[:120]


def data0000_reason(why: str) -> str:
    """A ``DATA-0000`` close reason (undecodable audio), within a close frame's 123 bytes."""
    return f"DATA-0000 {why}"[:120]


CloseKind = Literal["bad_audio", "no_input", "server", "other"]


def close_kind(code: int | None, reason: str) -> CloseKind:
    """What a close from Deepgram means (§4.2: match on the code plus the reason's token,
    case-insensitively, with or without its dash)."""
    lowered = reason.lower().replace("-", "")
    if code == CLOSE_DATA or "data0000" in lowered:
        return "bad_audio"
    if code == CLOSE_NET:
        return "no_input" if "net0001" in lowered else "server"
    return "other"


# -- handshake refusals (§1.3) ---------------------------------------------------------------

ERR_CODES = {
    400: "INVALID_QUERY_PARAMETER",
    401: "INVALID_AUTH",
    403: "INSUFFICIENT_PERMISSIONS",
    404: "NOT_FOUND",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "INVALID_QUERY_PARAMETER",
    429: "TOO_MANY_REQUESTS",
}
"""``err_code`` by HTTP status; only ``INVALID_AUTH`` is observed, the rest follow the
spec-mock's names (§1.3, §8)."""


def error_body(status: int, message: str, request_id: str) -> dict[str, str]:
    """A refusal's JSON body: ``{"err_code", "err_msg", "request_id"}`` (§1.3)."""
    code = ERR_CODES.get(status, "INTERNAL_SERVER_ERROR" if status >= 500 else "BAD_REQUEST")
    return {"err_code": code, "err_msg": message, "request_id": request_id}


def error_headers(message: str, request_id: str) -> dict[str, str]:
    """A refusal's headers: ``dg-request-id`` and ``dg-error`` (one line of printable ASCII:
    a value quoted from the query may hold anything)."""
    safe = "".join(ch if " " <= ch <= "~" else "?" for ch in " ".join(message.split()))
    return {"dg-request-id": request_id, "dg-error": safe}


def words_of(
    text_words: Iterable[tuple[str, float, float, float]], punctuate: bool
) -> list[DGWord]:
    """Deepgram words from ``(word as recognised, start s, end s, confidence)``: ``word``
    lower-case with its punctuation stripped, the recognised form as ``punctuated_word`` when
    ``punctuate``."""
    out = []
    for raw, start, end, confidence in text_words:
        bare = raw.strip(".,!?;:\"'()[]").lower() or raw.lower()
        out.append(
            DGWord(
                word=bare,
                start=start,
                end=end,
                confidence=confidence,
                punctuated_word=raw if punctuate else None,
            )
        )
    return out
