"""An :class:`Engine` over a synchronous recogniser that runs in an engine worker process.

The recogniser (:class:`~.recognizer.Recognizer`: bytes in, results out, no asyncio) is
described by a picklable spec and built inside a worker (see :mod:`.workers`).
:class:`PooledEngine` pumps it: audio and commands go through one inbox, and audio already
queued is sent to the worker as one batch, so a stream that fell behind catches up in few
round trips.

A recogniser may hand back an utterance's audio at its endpoint
(:class:`~.recognizer.UtteranceAudio`) for a second, slower pass run elsewhere (engine
``whisper``); :class:`PooledEngine` alone publishes the first pass's final it carries.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import AsyncIterator

from ..events import EngineResult, TokenData
from .base import Engine
from .recognizer import RecognizerOutput, RecognizerSpec, UtteranceAudio, UtterancePause
from .workers import WorkerPool, WorkerStream


class _Command(enum.Enum):
    FINALIZE = enum.auto()
    CLOSE = enum.auto()


class PooledEngine(Engine):
    """An :class:`Engine` whose recogniser, built from ``spec``, runs in ``pool``.

    Audio and commands wait in one inbox; audio already queued goes to the worker as
    one batch, so a stream that fell behind catches up in few round trips. The inbox has no
    bound of its own: the session holds its producer back by :meth:`backlog_bytes`.

    Args:
        spec: what to build in the worker.
        pool: the engine worker processes.
        batch_bytes: most queued audio sent to the worker in one job.
    """

    def __init__(
        self, spec: RecognizerSpec, pool: WorkerPool, *, batch_bytes: int = 64_000
    ) -> None:
        self._spec = spec
        self._pool = pool
        self._batch_bytes = batch_bytes
        self._inbox: deque[bytes | _Command] = deque()
        self._inbox_waiter: asyncio.Future[None] | None = None  # the pump, waiting for work
        self._queued_bytes = 0  # audio in the inbox
        self._working_bytes = 0  # audio in the batch the worker is recognising
        self._room_waiters: list[asyncio.Future[None]] = []  # producers held back
        self._ended = False
        self._stream: WorkerStream | None = None

    async def start(self) -> None:
        """Build the recogniser in a worker (after the workers' warm-up), so the first audio
        does not wait for it.

        Raises:
            EngineError: it could not be built, or the worker died.
        """
        await self._pool.ready()
        self._stream = await self._pool.open(self._spec)

    async def feed(self, pcm: bytes) -> None:
        self._queued_bytes += len(pcm)
        self._put(pcm)

    async def finalize(self) -> None:
        self._put(_Command.FINALIZE)

    async def close(self) -> None:
        self._put(_Command.CLOSE)

    def backlog_bytes(self) -> int:
        return 0 if self._ended else self._queued_bytes + self._working_bytes

    async def wait_backlog_below(self, max_bytes: int) -> None:
        while self.backlog_bytes() >= max_bytes:
            waiter = asyncio.get_running_loop().create_future()
            self._room_waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._room_waiters:
                    self._room_waiters.remove(waiter)

    def _put(self, item: bytes | _Command) -> None:
        self._inbox.append(item)
        if self._inbox_waiter is not None and not self._inbox_waiter.done():
            self._inbox_waiter.set_result(None)

    async def _next(self) -> bytes | _Command:
        while not self._inbox:
            self._inbox_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._inbox_waiter
            finally:
                self._inbox_waiter = None
        return self._inbox.popleft()

    def _wake_producers(self) -> None:
        """The backlog shrank (a batch was recognised) or the stream ended: waiters re-check."""
        waiters, self._room_waiters = self._room_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def results(self) -> AsyncIterator[EngineResult]:
        async for output in self.outputs():
            if isinstance(output, UtteranceAudio):
                if output.fallback is not None:
                    yield output.fallback
                if output.speech_end is not None:
                    yield output.speech_end
            elif not isinstance(output, UtterancePause):
                yield output

    async def outputs(self) -> AsyncIterator[RecognizerOutput]:
        """What the recogniser produces, in order (see :meth:`results`), until closed.

        Raises:
            EngineError: the recogniser could not be built, or the worker failed.
        """
        stream = self._stream
        if stream is None:
            raise RuntimeError("results() before start()")
        inbox = self._inbox
        try:
            while True:
                item = await self._next()
                if isinstance(item, bytes):
                    batch = [item]
                    size = len(item)
                    while size < self._batch_bytes and inbox and isinstance(inbox[0], bytes):
                        nxt = inbox.popleft()
                        assert isinstance(nxt, bytes)
                        batch.append(nxt)
                        size += len(nxt)
                    self._queued_bytes -= size
                    self._working_bytes = size
                    results = await stream.process(batch[0] if len(batch) == 1 else b"".join(batch))
                    self._working_bytes = 0
                    self._wake_producers()
                elif item is _Command.FINALIZE:
                    results = await stream.finalize()
                else:
                    for result in await stream.close():
                        yield result
                    return
                for result in _newest_interims(results):
                    yield result
        finally:
            self._ended = True
            self._wake_producers()
            stream.discard()  # no-op after a clean close


def _newest_interims(results: list[RecognizerOutput]) -> list[RecognizerOutput]:
    """Drop each interim that the next result in the same batch supersedes.

    A stream that fell behind gets its audio back in one batch, and with it a run of interims
    for the same instant; only the newest says anything a reader can still use.
    """
    return [
        r
        for i, r in enumerate(results)
        if not (type(r) is TokenData and i + 1 < len(results) and type(results[i + 1]) is TokenData)
    ]
