"""``/v1/listen``'s query and audio as Deepgram defines them, checked without a socket: the
session config a query asks for (§1.4, §7 rule 3), and raw frames or a container's first bytes
(§1.5, §2.1). The protocol is ``docs/protocols/deepgram-live.md``, cited as §n."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from multidict import MultiMapping

from ...audio.pcm import Encoding
from ...audio.sniff import SNIFF_BYTES, Container, describe, sniff
from ...errors import UnsupportedAudio
from ...models import SessionConfig
from . import wire

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


def frame_bytes(params: ListenParams) -> int | None:
    """Bytes per raw frame of the query's audio; None: a container."""
    if not params.raw:
        return None
    config = params.config
    return (2 if config.encoding == "linear16" else 1) * config.channels
