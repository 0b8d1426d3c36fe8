"""A bounded pool for second-pass jobs (a Whisper pass over an ended utterance).

Second passes are slow next to streaming (hundreds of ms of CPU per utterance) and come in
bursts, so they run in worker processes of their own: a streaming recogniser never waits
behind one, and neither does the event loop. Jobs wait in one bounded FIFO shared by every
session; each worker runs one job at a time. When the FIFO is full the pool is saturated and
:meth:`SecondPassPool.submit` says so at once (returns ``None``) instead of queueing without
bound: the caller then publishes its first-pass result, so finals keep pace with the audio.

The workers run at a lower CPU priority (niceness +10) than the streaming engine's: interims
are what a user watches move, and a second pass that loses the CPU to them only waits longer
(its lag shows, and past the queue bound its utterances get their first-pass finals).

What operators see (:meth:`stats`): jobs waiting and running, jobs refused, jobs failed, and
a histogram of the time jobs waited before a worker took them.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .base import WAIT_BUCKETS_S, SecondPassStats
from .workers import WorkerPool

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class _Job(Generic[T]):
    run: Callable[[], T]
    future: asyncio.Future[T]
    queued_at: float


class SecondPassPool:
    """The processes of ``workers`` taking jobs from a FIFO of at most ``queue_size``.

    Args:
        workers: the worker processes (spawned on :meth:`start`; their owner stops them, as
            several pools, one per app, may share them in turn).
        queue_size: jobs that may wait for a worker; beyond it :meth:`submit` refuses.
        warmup: a picklable, hashable job each worker process runs once before its first
            real job (loads the model, so the first utterance does not pay for it).
    """

    def __init__(
        self,
        workers: WorkerPool,
        queue_size: int,
        warmup: Callable[[], Any] | None = None,
    ) -> None:
        self._workers = workers
        self._queue: asyncio.Queue[_Job[Any]] | None = None
        self._queue_size = queue_size
        self._warmup = warmup
        self._runners: list[asyncio.Task[None]] = []
        self.stats = SecondPassStats()

    @property
    def pids(self) -> list[int | None]:
        """Process ids of the workers (empty before :meth:`start`)."""
        return self._workers.pids

    def start(self) -> None:
        """Spawn the workers and their runners (idempotent; needs a running event loop)."""
        if self._queue is not None:
            return
        self._queue = asyncio.Queue(self._queue_size)
        self._workers.start()
        self._runners = [
            asyncio.create_task(self._runner(i), name=f"second-pass-{i}")
            for i in range(self._workers.size)
        ]

    def submit(self, job: Callable[[], T], *, when_idle: bool = False) -> asyncio.Future[T] | None:
        """Queue ``job`` (picklable, no arguments) for a worker.

        Args:
            job: what to run.
            when_idle: a speculative job: take it only if a worker is free and nothing waits
                (not counted as refused otherwise).

        Returns:
            A future of what the job returned (it raises :class:`~stt_gateway.errors.EngineError`
            when the job raised or its worker died), or ``None`` when the queue is full (or,
            ``when_idle``, the pool is busy). Cancelling the future drops a job still queued.
        """
        self.start()
        assert self._queue is not None
        if when_idle and (self.stats.queued or self.stats.running >= self._workers.size):
            return None
        if self._queue.full():
            self.stats.refused += 1
            return None
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(job, future, time.monotonic()))
        self.stats.queued += 1
        return future

    async def _runner(self, index: int) -> None:
        assert self._queue is not None
        if self._warmup is not None:
            await self._workers.warm_worker(index, self._warmup)
        while True:
            job = await self._queue.get()
            self.stats.queued -= 1
            if job.future.cancelled():  # its session went away while it waited
                continue
            waited = time.monotonic() - job.queued_at
            self.stats.wait_sum_s += waited
            self.stats.wait_buckets[bisect.bisect_left(WAIT_BUCKETS_S, waited)] += 1
            self.stats.running += 1
            try:
                result = await self._workers.run(index, job.run)
            except Exception as exc:
                self.stats.failed += 1
                if not job.future.done():
                    job.future.set_exception(exc)
            else:
                self.stats.done += 1
                if not job.future.done():
                    job.future.set_result(result)
            finally:
                self.stats.running -= 1

    async def close(self) -> None:
        """Stop the runners (not the worker processes); jobs still waiting are cancelled."""
        for runner in self._runners:
            runner.cancel()
        await asyncio.gather(*self._runners, return_exceptions=True)
        self._runners = []
        if self._queue is not None:
            while not self._queue.empty():
                self._queue.get_nowait().future.cancel()
            self._queue = None
