"""Run a blocking, CPU-bound recogniser off the event loop as an :class:`Engine`.

The recogniser is a plain synchronous object (:class:`Recognizer`): bytes in, results out, no
asyncio. :class:`ThreadedEngine` pumps it: audio and commands go through one bounded inbox, and
one job at a time per stream runs in a shared thread pool. Because each stream has at most one
job queued in the pool, the pool's FIFO serves streams in turn — a slow stream delays only its
own results, never another stream's.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import Protocol, TypeVar

from ..errors import EngineError
from ..events import EngineResult
from .base import Engine


class Recognizer(Protocol):
    """A synchronous recognition stream. Never called from two threads at once."""

    def process(self, pcm: bytes) -> list[EngineResult]:
        """Take PCM16 audio (any whole number of samples); return the results it produced."""
        ...

    def finalize(self) -> list[EngineResult]:
        """End the utterance in progress now; return its final results."""
        ...

    def close(self) -> list[EngineResult]:
        """End the stream: flush buffered audio and finalize; return the last results.
        The recogniser is not used afterwards."""
        ...


_T = TypeVar("_T")


class _Command(enum.Enum):
    FINALIZE = enum.auto()
    CLOSE = enum.auto()


class ThreadedEngine(Engine):
    """An :class:`Engine` over a :class:`Recognizer` built and driven in ``executor``.

    Args:
        make_recognizer: builds the recogniser (run in the executor: model loads are slow).
        executor: the shared thread pool for engine work.
        inbox_chunks: most audio chunks queued before :meth:`feed` waits (backpressure).
        batch_bytes: most queued audio handed to the recogniser in one job; bigger batches
            cost fewer thread hops when the stream is behind.
    """

    def __init__(
        self,
        make_recognizer: Callable[[], Recognizer],
        executor: Executor,
        *,
        inbox_chunks: int = 256,
        batch_bytes: int = 64_000,
    ) -> None:
        self._make = make_recognizer
        self._executor = executor
        self._batch_bytes = batch_bytes
        self._inbox: asyncio.Queue[bytes | _Command] = asyncio.Queue(maxsize=inbox_chunks)
        self._recognizer: Recognizer | None = None

    async def start(self) -> None:
        try:
            self._recognizer = await self._run(self._make)
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(f"the engine failed to load: {exc}") from exc

    async def feed(self, pcm: bytes) -> None:
        await self._inbox.put(pcm)

    async def finalize(self) -> None:
        await self._inbox.put(_Command.FINALIZE)

    async def close(self) -> None:
        await self._inbox.put(_Command.CLOSE)

    async def results(self) -> AsyncIterator[EngineResult]:
        rec = self._recognizer
        if rec is None:
            raise RuntimeError("results() before start()")
        pending: bytes | _Command | None = None
        while True:
            item = pending if pending is not None else await self._inbox.get()
            pending = None
            if isinstance(item, bytes):
                # Take every chunk already queued (up to batch_bytes) in one job.
                batch = [item]
                size = len(item)
                while size < self._batch_bytes and not self._inbox.empty():
                    nxt = self._inbox.get_nowait()
                    if not isinstance(nxt, bytes):
                        pending = nxt
                        break
                    batch.append(nxt)
                    size += len(nxt)
                audio = batch[0] if len(batch) == 1 else b"".join(batch)
                for result in await self._run(rec.process, audio):
                    yield result
            elif item is _Command.FINALIZE:
                for result in await self._run(rec.finalize):
                    yield result
            else:
                for result in await self._run(rec.close):
                    yield result
                return

    async def _run(self, fn: Callable[..., _T], *args: object) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
