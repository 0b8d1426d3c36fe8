"""The engine runtime: the worker processes the embedded engines run in.

Two pools of spawned processes: the streaming workers (pocketsphinx and Silero VAD, one
recogniser per stream) and the second-pass workers (a Whisper pass over an ended utterance,
at a lower CPU priority). Starting them costs ~1–2 s of CPU each (an interpreter, the engine
imports, a warm decoder), so the runtime is its own object: an app owns one by default, and
several apps in one process (tests, benchmarks) may share one whose options match theirs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Self

from ..settings import Settings
from .workers import WorkerPool


@dataclass(frozen=True)
class RuntimeOptions:
    """What shapes the worker processes (every other setting is read per session).

    Attributes:
        engine_processes: streaming worker processes.
        engine_idle_release_s: seconds a streaming worker keeps an unused decoder or VAD.
        whisper_processes: second-pass worker processes.
        whisper_niceness: added to the second-pass workers' niceness (``os.nice``).
    """

    engine_processes: int
    engine_idle_release_s: float
    whisper_processes: int
    whisper_niceness: int

    @classmethod
    def of(cls, settings: Settings) -> Self:
        """The options ``settings`` asks for."""
        return cls(
            engine_processes=settings.engine_processes,
            engine_idle_release_s=settings.engine_idle_release_s,
            whisper_processes=settings.whisper_processes,
            whisper_niceness=settings.whisper_niceness,
        )


class EngineRuntime:
    """The streaming and second-pass worker pools for ``options``.

    Processes start on first use (or :meth:`start`) and stop at :meth:`close`; a pool
    replaces a worker that died when it is next used.
    """

    def __init__(self, options: RuntimeOptions) -> None:
        self.options = options
        self.workers = WorkerPool(
            options.engine_processes, idle_release_s=options.engine_idle_release_s
        )
        """The streaming workers."""
        self.pass_workers = WorkerPool(options.whisper_processes, niceness=options.whisper_niceness)
        """The second-pass workers (started by the first Whisper pass pool that runs)."""

    def start(self) -> None:
        """Spawn the streaming workers (they import the engines while the caller goes on)."""
        self.workers.start()

    async def close(self) -> None:
        """Stop every worker process of both pools."""
        await asyncio.gather(self.workers.close(), self.pass_workers.close())
