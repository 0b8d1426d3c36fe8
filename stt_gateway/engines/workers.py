"""Engine worker processes: CPU-bound recognisers run outside the gateway's process.

pocketsphinx holds the GIL inside its C calls (measured: ``end_utt`` on a 7 s utterance holds
it ~180 ms, building a decoder ~210 ms), so engine threads in the gateway's process stalled its
event loop — a p99 loop lag of 123 ms and a max of 1.17 s with six sessions. In worker
processes that work has its own interpreter and the event loop is never blocked.

Each worker owns the recognisers of the streams assigned to it (the least busy worker gets a
new stream). The gateway talks to a worker over one pipe, one request and one reply at a time,
from a dedicated I/O thread that blocks on the pipe with the GIL released. Each stream has at
most one job outstanding, so a worker's FIFO serves its streams in turn: a slow stream delays
only its own results.

Wire (pickled over a ``multiprocessing`` pipe): request ``(stream_id, op, arg)``, reply
``(True, [EngineResult, …])`` or ``(False, "ExceptionName: message")``. ``Op.RUN`` runs a
stateless job instead (``arg`` is a picklable callable; the reply holds what it returned).
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from ..errors import EngineError
from . import resources
from .recognizer import Recognizer, RecognizerOutput, RecognizerSpec

T = TypeVar("T")

log = logging.getLogger(__name__)


class Op(enum.Enum):
    OPEN = "open"
    PROCESS = "process"
    FINALIZE = "finalize"
    CLOSE = "close"
    DROP = "drop"
    RUN = "run"


def _serve(conn: Connection, niceness: int, idle_release_s: float) -> None:
    """A worker process's loop: run each request on its stream's recogniser, reply; between
    requests, drop decoders and VADs idle longer than ``idle_release_s`` (see :mod:`.resources`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the parent's to handle
    if niceness:
        os.nice(niceness)
    resources.configure(idle_release_s)
    streams: dict[int, Recognizer] = {}
    trim_in: float | None = None  # seconds until an idle object may be dropped
    while True:
        try:
            if trim_in is not None and not conn.poll(trim_in):
                trim_in = resources.trim_idle()
                continue
            stream_id, op, arg = conn.recv()
        except (EOFError, OSError):
            return  # the gateway closed the pipe: shut down
        try:
            results: Any = []
            if op is Op.RUN:
                results = arg()
            elif op is Op.OPEN:
                streams[stream_id] = arg.build()
            elif op is Op.PROCESS:
                results = streams[stream_id].process(arg)
            elif op is Op.FINALIZE:
                results = streams[stream_id].finalize()
            elif op is Op.CLOSE:
                results = streams.pop(stream_id).close()
            else:
                streams.pop(stream_id, None)
            reply: tuple[bool, Any] = (True, results)
        except Exception as exc:
            if op is not Op.RUN:
                streams.pop(stream_id, None)  # a recogniser that raised is not trusted again
            reply = (False, f"{type(exc).__name__}: {exc}")
        conn.send(reply)
        trim_in = resources.trim_idle()


class _Worker:
    """One worker process, its pipe and the I/O thread that talks over it."""

    def __init__(
        self,
        ctx: multiprocessing.context.SpawnContext,
        index: int,
        niceness: int,
        idle_release_s: float,
    ) -> None:
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_serve,
            args=(child, niceness, idle_release_s),
            name=f"stt-engine-{index}",
            daemon=True,
        )
        self._proc.start()
        child.close()
        self._io = ThreadPoolExecutor(1, thread_name_prefix=f"stt-engine-{index}-io")
        self.streams = 0
        self.dead = False
        self.warmed: set[Callable[[], object]] = set()  # warm-up jobs this process has run

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def is_alive(self) -> bool:
        return not self.dead and self._proc.is_alive()

    def _roundtrip(self, request: tuple[int, Op, object]) -> tuple[bool, Any]:
        self._conn.send(request)
        reply: tuple[bool, Any] = self._conn.recv()
        return reply

    async def call(self, stream_id: int, op: Op, arg: object = None) -> Any:
        """Run ``op`` on the stream; its results. Raises EngineError (the reason in words)."""
        loop = asyncio.get_running_loop()
        try:
            ok, value = await loop.run_in_executor(self._io, self._roundtrip, (stream_id, op, arg))
        except (EOFError, OSError, TypeError) as exc:
            # TypeError: stop() closed the pipe under this read (multiprocessing's recv then
            # reads from a handle of None).
            self.dead = True
            raise EngineError(
                f"the engine worker process exited (code {self._proc.exitcode})"
            ) from exc
        if not ok:
            raise EngineError(f"the speech engine failed: {value}")
        return value

    def stop(self) -> None:
        """End the process at once (SIGKILL), then reap it and its I/O thread; blocking.

        A worker holds nothing worth keeping once its pool closes (every session was closed
        before), and a warm-up or job still running has no one left to use it: waiting on it
        cost every app shutdown ~2.5 s of decoder warm-up."""
        self._proc.kill()
        self._proc.join()
        self._io.shutdown(wait=True, cancel_futures=True)  # its recv() ends with EOF
        self._conn.close()


class WorkerStream:
    """One recognition stream living in a worker process (see :class:`WorkerPool`)."""

    def __init__(self, pool: WorkerPool, worker: _Worker, stream_id: int) -> None:
        self._pool = pool
        self._worker = worker
        self._id = stream_id
        self._open = True

    async def process(self, pcm: bytes) -> list[RecognizerOutput]:
        results: list[RecognizerOutput] = await self._worker.call(self._id, Op.PROCESS, pcm)
        return results

    async def finalize(self) -> list[RecognizerOutput]:
        results: list[RecognizerOutput] = await self._worker.call(self._id, Op.FINALIZE)
        return results

    async def close(self) -> list[RecognizerOutput]:
        """Flush and finalize; the stream is gone afterwards."""
        self._release()
        results: list[RecognizerOutput] = await self._worker.call(self._id, Op.CLOSE)
        return results

    def discard(self) -> None:
        """Free the stream without results (its session was torn down); does not wait."""
        if self._open:
            self._release()
            self._pool._background(self._worker.call(self._id, Op.DROP))

    def _release(self) -> None:
        if self._open:
            self._open = False
            self._worker.streams -= 1


class WorkerPool:
    """``processes`` engine worker processes (``spawn``ed: no state forked from the gateway).

    The processes start at :meth:`start` (or the first :meth:`open`) and stop at :meth:`close`.

    Args:
        processes: how many.
        niceness: added to the workers' scheduling niceness (``os.nice``): work that can wait
            yields the CPU to work that cannot.
        idle_release_s: seconds a worker keeps a decoder or VAD no stream uses (beyond its
            warm one) before dropping it and returning the memory to the system.
    """

    def __init__(
        self, processes: int, niceness: int = 0, idle_release_s: float = resources.IDLE_S
    ) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self._size = processes
        self._niceness = niceness
        self._idle_release_s = idle_release_s
        self._workers: list[_Worker] = []
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._warming: list[asyncio.Future[None]] = []
        self._closing = False  # close() has begun

    def start(self) -> None:
        """Spawn the worker processes (they import the engines while the gateway goes on)."""
        if not self._workers:
            self._workers = [
                _Worker(self._ctx, i, self._niceness, self._idle_release_s)
                for i in range(self._size)
            ]

    def alive(self) -> bool:
        """Whether every worker process runs (none started yet counts as alive: they start
        with the app or the first session)."""
        return all(w.is_alive() for w in self._workers)

    @property
    def pids(self) -> list[int | None]:
        """Process ids of the workers (operators and tests)."""
        return [w.pid for w in self._workers]

    async def open(self, spec: RecognizerSpec) -> WorkerStream:
        """Build ``spec``'s recogniser in the least busy live worker (replacing a dead one).

        Raises:
            EngineError: the recogniser could not be built, or the worker died.
        """
        self.start()
        worker = min((self._live(i) for i in range(self._size)), key=lambda w: w.streams)
        stream = WorkerStream(self, worker, next(self._ids))
        worker.streams += 1
        try:
            await worker.call(stream._id, Op.OPEN, spec)
        except BaseException:
            stream._release()
            raise
        return stream

    async def run(self, index: int, job: Callable[[], T]) -> T:
        """Run ``job`` (picklable, no arguments) in worker ``index`` (``0 ≤ index <
        processes``, replaced first if it died); what it returned.

        Jobs sent to one worker run one at a time, in order.

        Raises:
            EngineError: the job raised (its exception named) or the worker died.
        """
        self.start()
        result: T = await self._live(index).call(0, Op.RUN, job)
        return result

    def warm(self, job: Callable[[], object]) -> None:
        """Run ``job`` (picklable, hashable) once in every worker process that has not run it
        yet, in the background (see :meth:`warm_worker`). Needs a running event loop."""
        self.start()
        pending = [
            asyncio.ensure_future(self.warm_worker(index, job))
            for index in range(self._size)
            if job not in self._workers[index].warmed
        ]
        for future in pending:
            future.add_done_callback(self._warming.remove)
        self._warming += pending

    async def warm_worker(self, index: int, job: Callable[[], object]) -> None:
        """Run warm-up ``job`` (picklable, hashable) in worker ``index`` unless that process
        already ran it (a pool shared by several apps warms once). Its failure is logged,
        never raised."""
        worker = self._live(index)
        if job in worker.warmed:
            return
        try:
            await worker.call(0, Op.RUN, job)
        except Exception:
            if not self._closing:  # a warm-up cut short by close() is no failure
                log.exception("engine worker %d failed to warm up", index)
        else:
            worker.warmed.add(job)

    async def ready(self) -> None:
        """Return once the warm-up jobs given to :meth:`warm` have run (at once if none wait)."""
        if self._warming:
            await asyncio.gather(*list(self._warming))

    def _live(self, index: int) -> _Worker:
        """Worker ``index``, replaced by a new process first if it died."""
        if self._workers[index].dead:
            log.warning("engine worker %d died; starting a new one", index)
            self._workers[index] = _Worker(self._ctx, index, self._niceness, self._idle_release_s)
        return self._workers[index]

    @property
    def size(self) -> int:
        """How many worker processes the pool runs."""
        return self._size

    def _background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def close(self) -> None:
        """Stop every worker at once (see :meth:`_Worker.stop`)."""
        self._closing = True
        workers, self._workers = self._workers, []
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in workers))
