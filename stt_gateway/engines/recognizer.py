"""The recogniser interface: a synchronous, sans-I/O recognition stream and what it returns.

A :class:`Recognizer` is a plain object — PCM16 bytes in, results out, no asyncio — built in an
engine worker process from a picklable :class:`RecognizerSpec` (:mod:`.workers`) and pumped
by :class:`~.pooled.PooledEngine`. Besides :data:`~stt_gateway.events.EngineResult` items it may
hand back an utterance's audio for a second, slower pass (engine ``whisper``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..events import EngineResult, FinalData, SpeechEndData


@dataclass(frozen=True, slots=True)
class UtteranceAudio:
    """An utterance ended: its audio, for a second pass that makes the final.

    Attributes:
        pcm: the utterance's 16 kHz mono PCM16 (pre-roll included), bytes.
        start_s: session time (s) of its first sample.
        speech_final: whether silence ended it (``False``: finalize, close, or length cap).
        fallback: the first pass's own final (``None``: it heard no words), published when
            the second pass cannot run.
        speech_end: the ``speech_end`` that follows the final (``None`` when speech goes on).
        after_pause: only silence (by the VAD) came after the last :class:`UtterancePause`
            of this utterance, so a second pass over that pause's audio covers it all.
    """

    pcm: bytes
    start_s: float
    speech_final: bool
    fallback: FinalData | None
    speech_end: SpeechEndData | None
    after_pause: bool = False


@dataclass(frozen=True, slots=True)
class UtterancePause:
    """Speech paused inside an utterance (shorter than the endpointing silence so far): its
    audio up to here, so a second pass may start before the endpoint confirms the end.

    Attributes:
        pcm: the utterance so far, 16 kHz mono PCM16, bytes.
        start_s: session time (s) of its first sample.
    """

    pcm: bytes
    start_s: float


RecognizerOutput = EngineResult | UtteranceAudio | UtterancePause


class Recognizer(Protocol):
    """A synchronous recognition stream. Never called from two threads at once."""

    def process(self, pcm: bytes) -> list[RecognizerOutput]:
        """Take PCM16 audio (any whole number of samples); return the results it produced."""
        ...

    def finalize(self) -> list[RecognizerOutput]:
        """End the utterance in progress now; return its final results."""
        ...

    def close(self) -> list[RecognizerOutput]:
        """End the stream: flush buffered audio and finalize; return the last results.
        The recogniser is not used afterwards."""
        ...


class RecognizerSpec(Protocol):
    """A picklable description of a recogniser; :meth:`build` runs in the worker process."""

    def build(self) -> Recognizer: ...
