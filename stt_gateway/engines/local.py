"""The embedded local engine: pocketsphinx (CMU Sphinx) behind a Silero VAD. No key, no network.

``pocketsphinx`` 5.x ships its en-US acoustic model, language model and dictionary inside the
wheel. The VAD decides where utterances are: audio outside speech never reaches the decoder; an
utterance opens at speech onset (with a short pre-roll so the first phone is not clipped) and
ends after ``endpointing_ms`` of silence. While it runs, the decoder's partial hypothesis
(``Decoder.hyp()``) is sampled every few windows as an interim ``token``; at the endpoint
``end_utt()`` gives the final words with their posteriors (``Decoder.seg()``).

Everything happens in fixed 32 ms windows at 16 kHz, whatever the chunk sizes that arrive, so a
stream cut into 20 ms WebSocket frames gives exactly the result of the whole file fed at once.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass

import numpy as np
from pocketsphinx import Decoder

from ..audio.pcm import Int16Array, Resampler
from ..errors import InvalidConfig
from ..events import (
    FinalData,
    SpeechEndData,
    SpeechStartData,
    TokenData,
    Word,
    unit_interval,
)
from ..models import SessionConfig
from .base import Engine, EngineProvider
from .pooled import PooledEngine
from .recognizer import RecognizerOutput, UtteranceAudio, UtterancePause
from .resources import IdlePool
from .vad import VAD_RATE, WINDOW_SAMPLES, SileroVad
from .workers import WorkerPool

LANGUAGE = "en-US"
MODEL = "pocketsphinx-en-us"
DEFAULT_ENDPOINTING_MS = 500
"""Silence that ends an utterance. Shorter cuts sentences at commas and costs LM context."""

SPEECH_PROB = 0.5
"""A window at or above this is speech (Silero's default threshold)."""
SILENCE_PROB = 0.35
"""A window below this is silence (Silero's ``neg_threshold``); between the two, no change."""
ONSET_WINDOWS = 2
"""Consecutive speech windows (64 ms) that open an utterance; fewer would trigger on clicks."""
PREROLL_WINDOWS = 10
"""Audio (320 ms) before onset given to the decoder so a soft first phone is not lost."""
INTERIM_WINDOWS = 3
"""Sample the partial hypothesis every 3 windows (96 ms of audio)."""
MAX_UTTERANCE_S = 30.0
"""An utterance this long is finalized anyway, so a final never waits on endless speech."""

WINDOW_S = WINDOW_SAMPLES / VAD_RATE
_ALTERNATE = re.compile(r"\(\d+\)$")  # "and(2)": the dictionary's 2nd pronunciation of "and"


def _is_word(token: str) -> bool:
    # <s>, </s>, <sil> are boundaries and silence; [NOISE], ++BREATH++ are fillers.
    return not (token.startswith(("<", "[", "+")))


def _fresh_features(decoder: Decoder) -> None:
    # A new feature pipeline (~0.2 ms) drops the cepstral-mean estimate the last utterance
    # left: a reused decoder then decodes exactly as a fresh one (``set_cmn`` with the initial
    # values alone did not, measured).
    decoder.reinit_feat()


@dataclass(frozen=True)
class LocalResources:
    """Where a :class:`LocalRecognizer` takes its decoder and its VAD from, and gives them back.

    A decoder costs ~0.26 s and ~95 MB to build, a Silero VAD ~10 MB (measured here): a stream
    holds a VAD while its audio flows and a decoder only inside an utterance, so sessions that
    were created but send nothing, or are silent, hold neither.
    """

    decoders: IdlePool[Decoder]
    vads: IdlePool[SileroVad]


def local_resources(max_idle: int, keep: int = 0) -> LocalResources:
    """New pools keeping at most ``max_idle`` idle decoders and VADs each (``keep`` of them
    however long they are idle)."""
    return LocalResources(
        decoders=IdlePool(Decoder, _fresh_features, keep=keep, max_idle=max_idle),
        vads=IdlePool(SileroVad, SileroVad.reset, keep=keep, max_idle=max_idle),
    )


class LocalRecognizer:
    """One synchronous recognition stream: PCM16 in, results out (see the module docstring).

    Args:
        input_rate: Hz of the PCM16 fed in; resampled to 16 kHz with soxr when different.
        endpointing_ms: silence (ms) that ends an utterance.
        interim_results: whether to produce interim ``TokenData``.
        resources: where the decoder and the VAD come from and go back to: the VAD at the
            first audio (back on :meth:`close`), the decoder at speech onset (back at the
            utterance's end).
        keep_audio: hand each utterance back as :class:`~.recognizer.UtteranceAudio` (its audio,
            pocketsphinx's final and the ``speech_end``) for a second pass to make the final.
        pause_ms: with ``keep_audio``, after this much VAD silence inside an utterance (less
            than ``endpointing_ms``) hand back the audio so far as :class:`~.pooled.
            UtterancePause`, so the second pass can start before the endpoint; 0: never.
    """

    def __init__(
        self,
        *,
        input_rate: int,
        endpointing_ms: int,
        interim_results: bool,
        resources: LocalResources,
        keep_audio: bool = False,
        pause_ms: int = 0,
    ) -> None:
        self._resources = resources
        self._keep_audio = keep_audio
        self._pause_windows = math.ceil(pause_ms / 1000 / WINDOW_S) if keep_audio else 0
        self._paused = False  # an UtterancePause went out and only silence came since
        self._utt_audio: list[Int16Array] = []  # the utterance so far, when keep_audio
        self._decoder: Decoder | None = None  # held inside an utterance only
        self._cmn: str | None = None  # the cepstral mean the last utterance ended with
        self._vad: SileroVad | None = None  # held from the first audio to close
        self._resampler = Resampler(input_rate, VAD_RATE) if input_rate != VAD_RATE else None
        self._interim = interim_results
        self._endpoint_windows = max(1, math.ceil(endpointing_ms / 1000 / WINDOW_S))
        self._max_utt_windows = int(MAX_UTTERANCE_S / WINDOW_S)
        self._carry: Int16Array = np.zeros(0, dtype=np.int16)  # < one window, awaiting more
        self._windows = 0  # windows consumed so far: the session clock
        self._preroll: deque[Int16Array] = deque(maxlen=PREROLL_WINDOWS)
        self._speech_run = 0
        # Inside an utterance (the decoder is between start_utt and end_utt):
        self._in_speech = False
        self._utt_first_window = 0  # window index of the decoder's frame 0
        self._onset_s = 0.0  # session time (s) where this utterance's speech began
        self._utt_windows = 0
        self._silence_run = 0
        self._last_partial = ""

    # -- the Recognizer protocol ---------------------------------------------------------

    def process(self, pcm: bytes) -> list[RecognizerOutput]:
        samples = np.frombuffer(pcm, dtype="<i2")
        if self._resampler is not None:
            samples = self._resampler.process(samples)
        return self._consume(samples)

    def finalize(self) -> list[RecognizerOutput]:
        out: list[RecognizerOutput] = []
        if self._in_speech:
            # Give the decoder the sub-window tail too: finalize means "all you have".
            if self._carry.size:
                self._utterance_decoder().process_raw(self._carry.tobytes())
                self._keep(self._carry)
                self._paused = False  # the tail is not known to be silence
            self._carry = np.zeros(0, dtype=np.int16)
            self._end_utterance(out, speech_final=False)
        return out

    def close(self) -> list[RecognizerOutput]:
        out: list[RecognizerOutput] = []
        if self._resampler is not None:
            out.extend(self._consume(self._resampler.flush()))
        out.extend(self.finalize())
        if self._vad is not None:
            self._resources.vads.release(self._vad)
            self._vad = None
        return out

    # -- windows -------------------------------------------------------------------------

    def _consume(self, samples: Int16Array) -> list[RecognizerOutput]:
        out: list[RecognizerOutput] = []
        if self._carry.size:
            samples = np.concatenate((self._carry, samples))
        n = samples.size // WINDOW_SAMPLES
        if n and self._vad is None:
            self._vad = self._resources.vads.acquire()
        for i in range(n):
            self._window(samples[i * WINDOW_SAMPLES : (i + 1) * WINDOW_SAMPLES], out)
        self._carry = samples[n * WINDOW_SAMPLES :].copy()
        return out

    def _utterance_decoder(self) -> Decoder:
        assert self._decoder is not None, "a decoder is held inside an utterance"
        return self._decoder

    def _window(self, window: Int16Array, out: list[RecognizerOutput]) -> None:
        assert self._vad is not None, "a VAD is held while audio flows"
        prob = self._vad.probability(window)
        self._windows += 1
        if not self._in_speech:
            self._preroll.append(window)
            self._speech_run = self._speech_run + 1 if prob >= SPEECH_PROB else 0
            if self._speech_run >= ONSET_WINDOWS:
                self._start_utterance(out)
            return

        self._utterance_decoder().process_raw(window.tobytes())
        self._keep(window)
        self._utt_windows += 1
        if prob >= SPEECH_PROB:
            self._silence_run = 0
        elif prob < SILENCE_PROB:
            self._silence_run += 1
        if prob >= SILENCE_PROB:
            self._paused = False  # not clearly silence: a pass over the pause would miss it

        if self._silence_run >= self._endpoint_windows:
            self._end_utterance(out, speech_final=True)
        elif self._utt_windows >= self._max_utt_windows:
            # Endless speech: close this utterance and go straight on with the next.
            self._end_utterance(out, speech_final=False, keep_speech=True)
        else:
            if (
                self._pause_windows
                and not self._paused
                and self._silence_run >= self._pause_windows
            ):
                self._paused = True
                pcm = b"".join(w.tobytes() for w in self._utt_audio)
                out.append(UtterancePause(pcm, round(self._utt_first_window * WINDOW_S, 3)))
            if self._interim and self._utt_windows % INTERIM_WINDOWS == 0:
                self._emit_partial(out)

    def _start_utterance(self, out: list[RecognizerOutput]) -> None:
        self._onset_s = round((self._windows - self._speech_run) * WINDOW_S, 3)
        out.append(SpeechStartData(timestamp=self._onset_s))
        self._decoder = decoder = self._resources.decoders.acquire()
        if self._cmn is not None:
            decoder.set_cmn(self._cmn)
        decoder.start_utt()
        self._utt_first_window = self._windows - len(self._preroll)
        decoder.process_raw(b"".join(w.tobytes() for w in self._preroll))
        for w in self._preroll:
            self._keep(w)
        self._utt_windows = len(self._preroll)
        self._preroll.clear()
        self._in_speech = True
        self._silence_run = 0
        self._paused = False
        self._last_partial = ""

    def _keep(self, samples: Int16Array) -> None:
        if self._keep_audio:
            self._utt_audio.append(samples)

    def _emit_partial(self, out: list[RecognizerOutput]) -> None:
        hyp = self._utterance_decoder().hyp()
        text = hyp.hypstr if hyp is not None else ""
        if text and text != self._last_partial:
            self._last_partial = text
            out.append(
                TokenData(
                    text=text,
                    # pocketsphinx has posteriors only after end_utt(): none for partials.
                    confidence=0.0,
                    start=self._onset_s,
                    end=round(self._windows * WINDOW_S, 3),
                )
            )

    def _end_utterance(
        self, out: list[RecognizerOutput], *, speech_final: bool, keep_speech: bool = False
    ) -> None:
        decoder = self._utterance_decoder()
        decoder.end_utt()
        offset = self._utt_first_window * WINDOW_S
        words = [
            Word(
                word=_ALTERNATE.sub("", seg.word),
                # seg frames are 10 ms, counted from the utterance's first sample.
                start=round(offset + seg.start_frame / 100, 3),
                end=round(offset + (seg.end_frame + 1) / 100, 3),
                confidence=unit_interval(float(seg.prob)),
            )
            for seg in decoder.seg()
            if _is_word(seg.word)
        ]
        final = (
            FinalData(
                text=" ".join(w.word for w in words),
                confidence=round(sum(w.confidence for w in words) / len(words), 4),
                start=words[0].start,
                end=words[-1].end,
                words=words,
                speech_final=speech_final,
            )
            if words
            else None
        )
        if keep_speech:
            speech_end = None
        else:
            end_of_speech = (self._windows - self._silence_run) * WINDOW_S
            speech_end = SpeechEndData(
                last_word_end=words[-1].end if words else round(end_of_speech, 3)
            )
        if self._keep_audio:
            pcm = b"".join(w.tobytes() for w in self._utt_audio)
            self._utt_audio = []
            out.append(
                UtteranceAudio(
                    pcm,
                    round(offset, 3),
                    speech_final,
                    final,
                    speech_end,
                    after_pause=self._paused and not keep_speech,
                )
            )
        else:
            if final is not None:
                out.append(final)
            if speech_end is not None:
                out.append(speech_end)
        self._paused = False
        if keep_speech:
            decoder.start_utt()
            self._utt_first_window = self._windows
            self._onset_s = round(self._windows * WINDOW_S, 3)
            self._utt_windows = 0
            self._last_partial = ""
        else:
            self._in_speech = False
            self._speech_run = 0
            self._cmn = decoder.get_cmn()
            self._decoder = None
            self._resources.decoders.release(decoder)


WARM = 1
"""Decoders and VADs each engine worker builds at start and keeps however long they are idle,
so a first utterance does not wait ~0.26 s for a decoder."""

_PROCESS_RESOURCES = local_resources(max_idle=8, keep=WARM)
"""The decoders and VADs of this (worker) process; beyond :data:`WARM`, idle ones are dropped
after :func:`.resources.configure`'s time."""


def process_resources() -> LocalResources:
    """The decoders and VADs of this (worker) process, shared by every local stream in it."""
    return _PROCESS_RESOURCES


def warm_decoders() -> None:
    """A worker's warm-up job (picklable): :data:`WARM` idle decoders and VADs."""
    _PROCESS_RESOURCES.decoders.fill(WARM)
    _PROCESS_RESOURCES.vads.fill(WARM)


@dataclass(frozen=True)
class LocalRecognizerSpec:
    """What a worker process needs to build a :class:`LocalRecognizer` (picklable)."""

    input_rate: int
    endpointing_ms: int
    interim_results: bool

    def build(self) -> LocalRecognizer:
        return LocalRecognizer(
            input_rate=self.input_rate,
            endpointing_ms=self.endpointing_ms,
            interim_results=self.interim_results,
            resources=_PROCESS_RESOURCES,
        )


class LocalEngineProvider(EngineProvider):
    """``engine: "local"``: pocketsphinx en-US + Silero VAD, run in the engine worker processes.

    Args:
        workers: the engine worker processes.
    """

    name = "local"

    def __init__(self, workers: WorkerPool) -> None:
        self._workers = workers

    @property
    def languages(self) -> list[str]:
        return [LANGUAGE]

    @property
    def default_model(self) -> str:
        return MODEL

    def unavailable_reason(self) -> str | None:
        return None

    def resolve(self, config: SessionConfig) -> SessionConfig:
        language = config.language
        if language is not None and language.lower() not in ("en", "en-us"):
            raise InvalidConfig(
                f"language: {language!r} is not available on engine 'local' "
                f"(it has {LANGUAGE}); Korean and other languages need engine 'deepgram'"
            )
        if config.model is not None and config.model != MODEL:
            raise InvalidConfig(f"model: engine 'local' has only {MODEL!r}, not {config.model!r}")
        return config.model_copy(
            update={
                "language": LANGUAGE,
                "model": MODEL,
                "endpointing_ms": config.endpointing_ms or DEFAULT_ENDPOINTING_MS,
            }
        )

    def prepare(self) -> None:
        """Build idle decoders in every engine worker (in the background)."""
        self._workers.warm(warm_decoders)

    def create(self, config: SessionConfig) -> Engine:
        return PooledEngine(self.spec(config), self._workers)

    @staticmethod
    def spec(config: SessionConfig) -> LocalRecognizerSpec:
        """The recogniser for a session with ``config`` (resolved or not)."""
        return LocalRecognizerSpec(
            input_rate=config.sample_rate,
            endpointing_ms=config.endpointing_ms or DEFAULT_ENDPOINTING_MS,
            interim_results=config.interim_results,
        )
