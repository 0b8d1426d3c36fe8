"""Deepgram's live messages as our results, and its refusals as our errors, without a
socket (``docs/protocols/deepgram-live.md``, cited as §n): the engine adapter (:mod:`.upstream`)
pumps text frames through a :class:`Translator` and is left with the connection alone.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from ...errors import UpstreamError
from ...events import (
    EngineResult,
    FinalData,
    SpeechEndData,
    SpeechStartData,
    TokenData,
    Word,
    unit_interval,
)
from ...models import SessionConfig
from . import wire

log = logging.getLogger(__name__)

DEFAULT_MODEL = "nova-3"
DEFAULT_LANGUAGE = "ko"
DEFAULT_ENDPOINTING_MS = 300  # §1.4: docs suggest 300–500 ms for conversation
DEFAULT_UTTERANCE_END_MS = 1000
LANGUAGES = [
    "ko",
    "ko-KR",
    "en",
    "en-US",
    "en-GB",
    "en-AU",
    "en-IN",
    "ja",
    "zh",
    "zh-CN",
    "zh-TW",
    "es",
    "es-419",
    "fr",
    "fr-CA",
    "de",
    "it",
    "pt",
    "pt-BR",
    "nl",
    "ru",
    "hi",
    "id",
    "th",
    "vi",
    "tr",
    "pl",
    "uk",
    "sv",
    "da",
    "no",
    "fi",
    "cs",
    "el",
    "hu",
    "ro",
    "bg",
    "ms",
    "multi",
]
"""Advisory (§5.4, the list grows): Deepgram's handshake ``400`` is the authority."""


def listen_url(base: str, config: SessionConfig) -> str:
    """The ``/v1/listen`` URL for ``config`` (resolved): booleans lower-case, every value
    URL-encoded (§1.4)."""
    params: dict[str, str | int | bool] = {
        "model": config.model or DEFAULT_MODEL,
        "language": config.language or DEFAULT_LANGUAGE,
        # The session's decode stage gives every engine PCM16 mono at the session's rate.
        "encoding": "linear16",
        "sample_rate": config.sample_rate,
        "channels": 1,
        "interim_results": config.interim_results,
        "vad_events": True,
        "punctuate": True,
        "smart_format": True,
        "endpointing": config.endpointing_ms or DEFAULT_ENDPOINTING_MS,
    }
    # UtteranceEnd needs interim results (§1.4); sending it without them risks a 400.
    if config.utterance_end_ms is not None and config.interim_results:
        params["utterance_end_ms"] = config.utterance_end_ms
    return wire.listen_url(base, params)


def handshake_error(status: int, headers: Mapping[str, str], message: str) -> UpstreamError:
    """§1.3: a refused handshake (HTTP ``status``, its headers and reason phrase) as our
    error; the status decides, ``dg-error`` says why in Deepgram's words."""
    reason = headers.get("dg-error") or message or "no reason given"
    rid = headers.get("dg-request-id")
    ref = f" (request {rid})" if rid else ""
    if status in (401, 403):
        return UpstreamError(
            "upstream_auth", f"Deepgram refused the API key: {reason}{ref}", status=502
        )
    if status == 400:
        return UpstreamError(
            "upstream_rejected", f"Deepgram refused the session config: {reason}{ref}", status=422
        )
    if status == 402:
        return UpstreamError(
            "upstream_auth", f"Deepgram refused the session (insufficient balance){ref}", status=502
        )
    if status == 429:
        return UpstreamError(
            "upstream_busy",
            f"Deepgram's concurrent-stream limit is reached; try again shortly{ref}",
            status=503,
            retryable=True,
            retry_after_s=2,
        )
    return UpstreamError(
        "upstream_unavailable",
        f"Deepgram answered HTTP {status}: {reason}{ref}",
        status=503,
        retryable=True,
        retry_after_s=2,
    )


def close_error(code: int | None, reason: str) -> UpstreamError:
    """§4.2: what an unplanned close means, and whether a reconnect may help."""
    kind = wire.close_kind(code, reason)
    if kind == "bad_audio":
        return UpstreamError(
            "upstream_bad_audio",
            "Deepgram could not decode the audio (1008 DATA-0000): check sample_rate and "
            "that the audio is raw PCM16",
        )
    if kind in ("no_input", "server"):
        which = "NET-0001: it heard nothing from us" if kind == "no_input" else "NET-0000"
        return UpstreamError(
            "upstream_timeout", f"Deepgram closed the stream (1011 {which})", retryable=True
        )
    return UpstreamError(
        "upstream_closed", f"the connection to Deepgram dropped (close code {code})", retryable=True
    )


class Translator:
    """One session's Deepgram messages as our results, across reconnects.

    Attributes:
        offset_s: session time (s) of the current socket's audio time 0 (the engine sets it
            at each connect: a replayed socket starts where the replay ring starts).
        committed_s: end (s) of the last final published; a final ending at or before it is
            replayed audio and dropped.
        finalize_answered: a final ``from_finalize`` came (the engine clears it).
        request_id: Deepgram's id for the stream (from the 101 or any message).
    """

    def __init__(self) -> None:
        self.offset_s = 0.0
        self.committed_s = 0.0
        self.finalize_answered = False
        self.request_id: str | None = None
        self._speaking = False  # a SpeechStarted has had no UtteranceEnd yet
        self._last_word_end = 0.0

    def end_of_stream(self) -> SpeechEndData | None:
        """CloseStream was answered: the ``speech_end`` closing a speech turn that
        UtteranceEnd had no audio left to close, if one is open."""
        if not self._speaking:
            return None
        self._speaking = False
        return SpeechEndData(last_word_end=self._last_word_end)

    def translate(self, text: str) -> list[EngineResult]:
        """Our results for one text frame from Deepgram (none for most messages); an
        unparseable frame is logged and skipped."""
        try:
            message: Any = json.loads(text)
            kind = message.get("type") if isinstance(message, dict) else None
            if kind == "Results":
                return self._results(wire.DGResults.model_validate(message))
            if kind == "SpeechStarted":
                started = wire.DGSpeechStarted.model_validate(message)
                self._speaking = True
                return [SpeechStartData(timestamp=round(self.offset_s + started.timestamp, 3))]
            if kind == "UtteranceEnd":
                ended = wire.DGUtteranceEnd.model_validate(message)
                if ended.last_word_end < 0:
                    return []  # §3.4: -1 means "already finalized: ignore"
                self._speaking = False
                return [SpeechEndData(last_word_end=round(self.offset_s + ended.last_word_end, 3))]
            if kind == "Metadata":
                metadata = wire.DGMetadata.model_validate(message)
                self.request_id = metadata.request_id or self.request_id
            elif kind == "Error":
                log.warning("Deepgram sent an Error message (request %s)", self.request_id)
            # Unknown types are ignored (§3: new ones appear over time).
        except (ValueError, ValidationError):
            log.warning("unparseable message from Deepgram (request %s)", self.request_id)
        return []

    def _results(self, r: wire.DGResults) -> list[EngineResult]:
        if r.metadata is not None and r.metadata.request_id:
            self.request_id = r.metadata.request_id
        alt = r.channel.alternatives[0] if r.channel.alternatives else wire.DGAlternative()
        text = alt.transcript.strip()
        start = round(self.offset_s + r.start, 3)
        end = round(self.offset_s + r.start + r.duration, 3)
        if not r.is_final:
            # §3.1: an interim restates the whole open segment; it replaces the last one.
            if not text:
                return []
            return [
                TokenData(
                    text=text,
                    confidence=unit_interval(round(alt.confidence, 4)),
                    start=start,
                    end=end,
                )
            ]
        if end <= self.committed_s + 1e-3:
            return []  # replayed audio already covered by a published final
        self.committed_s = end
        if r.from_finalize:
            self.finalize_answered = True
        if not text:
            return []  # §6.11: empty finals settle audio but carry no words
        if alt.words:
            self._last_word_end = round(self.offset_s + alt.words[-1].end, 3)
        words = [
            Word(
                word=w.punctuated_word or w.word,
                start=round(self.offset_s + w.start, 3),
                end=round(self.offset_s + w.end, 3),
                confidence=unit_interval(round(w.confidence, 4)),
            )
            for w in alt.words
        ]
        return [
            FinalData(
                text=text,
                confidence=unit_interval(round(alt.confidence, 4)),
                start=words[0].start if words else start,
                end=words[-1].end if words else end,
                words=words,
                speech_final=r.speech_final,
            )
        ]
