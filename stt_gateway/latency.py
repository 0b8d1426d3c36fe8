"""A session's latency figures: when the audio each result covers arrived, and how long the
result took from there (the observer turns them into the ``stt_*_seconds`` histograms)."""

from __future__ import annotations

import time
from collections import deque

from .events import EngineResult, FinalData, SpeechStartData, TokenData
from .observer import SessionObserver

ARRIVALS_KEPT = 3000
"""Audio chunks whose arrival time is remembered (60 s of 20 ms frames)."""


class LatencyMeter:
    """Measures one session's results against its audio's arrival.

    Figures (seconds, to ``observer.latency``): ``added`` (audio in → the result covering
    it), ``final`` (the end of an utterance's audio in → its ``speech_final`` final) and
    ``ttft`` (speech onset's audio in → the first interim after it).
    """

    def __init__(self, observer: SessionObserver) -> None:
        self._observer = observer
        # (session audio s at the end of a chunk, monotonic s it arrived)
        self._arrivals: deque[tuple[float, float]] = deque(maxlen=ARRIVALS_KEPT)
        self._onset_s: float | None = None  # speech onset awaiting its first interim

    def arrived(self, end_s: float, at: float) -> None:
        """Audio up to session time ``end_s`` (s) arrived at monotonic time ``at`` (s)."""
        self._arrivals.append((end_s, at))

    def measure(self, result: EngineResult) -> None:
        """Report the figures ``result`` completes, as it is published."""
        if isinstance(result, SpeechStartData):
            self._onset_s = result.timestamp
            return
        if not isinstance(result, TokenData):  # FinalData is a TokenData too
            return
        now = time.monotonic()
        if (arrived := self._arrival_of(result.end)) is not None:
            self._observer.latency("added", now - arrived)
            if isinstance(result, FinalData) and result.speech_final:
                self._observer.latency("final", now - arrived)
        if self._onset_s is not None and type(result) is TokenData:
            if (onset := self._arrival_of(self._onset_s)) is not None:
                self._observer.latency("ttft", now - onset)
            self._onset_s = None

    def _arrival_of(self, audio_s: float) -> float | None:
        """When the chunk holding session audio time ``audio_s`` arrived (None: forgotten)."""
        found = None
        for end_s, arrived in reversed(self._arrivals):
            if end_s < audio_s - 1e-6:
                return found
            found = arrived
        # Every remembered chunk ends after audio_s: the first holds it unless some were dropped.
        return found if len(self._arrivals) < ARRIVALS_KEPT else None
