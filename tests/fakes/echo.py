"""A scripted engine for tests that need exact control of engine timing."""

from __future__ import annotations

import time
from dataclasses import dataclass

from stt_gateway.engines.base import Engine, EngineProvider
from stt_gateway.engines.pooled import PooledEngine
from stt_gateway.engines.recognizer import RecognizerOutput
from stt_gateway.engines.workers import WorkerPool
from stt_gateway.events import FinalData, TokenData
from stt_gateway.models import SessionConfig


class EchoRecognizer:
    """Answers each ``process`` call with one token naming the bytes it got, after sleeping
    ``delay_s`` (a stand-in for CPU-bound decoding); ``finalize`` gives one final."""

    def __init__(self, delay_s: float) -> None:
        self._delay_s = delay_s
        self._bytes = 0

    def process(self, pcm: bytes) -> list[RecognizerOutput]:
        time.sleep(self._delay_s)
        self._bytes += len(pcm)
        return [TokenData(text=f"{self._bytes} bytes", confidence=1.0, start=0.0, end=0.0)]

    def finalize(self) -> list[RecognizerOutput]:
        return [
            FinalData(
                text=f"{self._bytes} bytes",
                confidence=1.0,
                start=0.0,
                end=0.0,
                words=[],
                speech_final=False,
            )
        ]

    def close(self) -> list[RecognizerOutput]:
        return self.finalize()


@dataclass(frozen=True)
class EchoSpec:
    delay_s: float

    def build(self) -> EchoRecognizer:
        return EchoRecognizer(self.delay_s)


class EchoProvider(EngineProvider):
    """Engine ``echo`` (the engine set is open: a test registers its own); ``model: "slow"``
    sleeps 0.3 s per job, anything else 0."""

    name = "echo"

    def __init__(self, workers: WorkerPool) -> None:
        self._workers = workers

    @property
    def languages(self) -> list[str]:
        return ["en-US"]

    def unavailable_reason(self) -> str | None:
        return None

    def resolve(self, config: SessionConfig) -> SessionConfig:
        return config

    def create(self, config: SessionConfig) -> Engine:
        delay = 0.3 if config.model == "slow" else 0.0
        return PooledEngine(EchoSpec(delay), self._workers)
