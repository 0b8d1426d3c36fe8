"""One engine per channel: a ``multichannel`` session transcribes each channel as its own
stream, as Deepgram's ``multichannel=true`` does (every result carries its ``channel``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import numpy as np

from ..events import EngineResult, ErrorData
from .base import Engine

_DONE = None


class MultichannelEngine(Engine):
    """``N`` engines behind one: fed interleaved PCM16 of ``N`` channels, each engine gets its
    channel; their results come out merged as they are ready, each with ``channel`` set.

    Backlog and the wait on it are in interleaved bytes: the slowest channel's backlog × N.

    Args:
        engines: one not yet started engine per channel, in channel order.
    """

    def __init__(self, engines: list[Engine]) -> None:
        self._engines = engines
        self._n = len(engines)
        # Bounded: a channel whose results are not taken holds its engine back.
        self._merged: asyncio.Queue[EngineResult | BaseException | None] = asyncio.Queue(64)
        self._readers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await asyncio.gather(*(engine.start() for engine in self._engines))
        self._readers = [
            asyncio.create_task(self._read(i, engine), name=f"channel-{i}")
            for i, engine in enumerate(self._engines)
        ]

    async def _read(self, channel: int, engine: Engine) -> None:
        try:
            async for result in engine.results():
                if not isinstance(result, ErrorData):
                    result = result.model_copy(update={"channel": channel})
                await self._merged.put(result)
        except Exception as exc:  # the session's pump reports it as it would for one engine
            await self._merged.put(exc)
        else:
            await self._merged.put(_DONE)

    async def feed(self, pcm: bytes) -> None:
        frames = np.frombuffer(pcm, dtype="<i2").reshape(-1, self._n)
        for channel, engine in enumerate(self._engines):
            await engine.feed(frames[:, channel].tobytes())

    async def finalize(self) -> None:
        await asyncio.gather(*(engine.finalize() for engine in self._engines))

    async def close(self) -> None:
        await asyncio.gather(*(engine.close() for engine in self._engines))

    async def results(self) -> AsyncIterator[EngineResult]:
        ended = 0
        try:
            while ended < self._n:
                item = await self._merged.get()
                if item is _DONE:
                    ended += 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            for reader in self._readers:
                reader.cancel()
            for reader in self._readers:
                with contextlib.suppress(asyncio.CancelledError):
                    await reader

    def backlog_bytes(self) -> int:
        return max(engine.backlog_bytes() for engine in self._engines) * self._n

    async def wait_backlog_below(self, max_bytes: int) -> None:
        for engine in self._engines:
            await engine.wait_backlog_below(max(1, max_bytes // self._n))

    def upstream_id(self) -> str | None:
        return self._engines[0].upstream_id()

    def final_lag_s(self) -> float:
        return max(engine.final_lag_s() for engine in self._engines)
