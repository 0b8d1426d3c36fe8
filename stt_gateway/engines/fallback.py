"""Engine fallback: a session whose upstream gives up continues on an embedded engine.

:class:`FallbackEngine` runs a primary engine (Deepgram) until its results end in an
:class:`~stt_gateway.errors.UpstreamError` — reconnect attempts exhausted, the key refused on
reconnect, 429 past the attempts — and then, instead of ending the session, builds the fallback
engine (``whisper`` or ``local``), feeds it the audio no final covers yet (the primary's replay
ring, see :meth:`~stt_gateway.fronts.deepgram.upstream.DeepgramEngine.unsettled_audio`) and goes on
with it: every later chunk goes to the fallback, and its results are shifted by the session
time where that audio began, so timestamps keep rising. An ``error`` ``engine_fallback``
event says when and why.

Nothing is lost in the switch: chunks that arrive while the fallback starts wait in order and
follow the unsettled audio; a ``finalize`` or ``close`` asked meanwhile is passed on after them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol, cast

from ..errors import UpstreamError
from ..events import (
    EngineResult,
    ErrorData,
    FinalData,
    SpeechEndData,
    SpeechStartData,
    TokenData,
    Word,
)
from .base import Engine


class Resumable(Protocol):
    """A primary engine that can hand over the audio it has not settled."""

    def unsettled_audio(self) -> tuple[float, bytes]:
        """(session time in s where the audio begins, PCM16 no final covers yet)."""
        ...


class FallbackEngine(Engine):
    """``primary`` until it gives up, then ``make_fallback()`` (see the module docstring).

    Args:
        primary: the engine to run first; must also be :class:`Resumable`.
        make_fallback: builds the (not yet started) fallback engine.
        fallback_name: the fallback engine's config name, for the ``engine_fallback`` event.
    """

    def __init__(
        self, primary: Engine, make_fallback: Callable[[], Engine], fallback_name: str
    ) -> None:
        assert hasattr(primary, "unsettled_audio"), "the primary must be Resumable"
        self._primary = primary
        self._make_fallback = make_fallback
        self._fallback_name = fallback_name
        self._active: Engine = primary
        self._waiting: list[bytes] | None = None  # chunks fed while the fallback starts
        self._finalize_wanted = False
        self._close_wanted = False

    async def start(self) -> None:
        await self._primary.start()

    async def feed(self, pcm: bytes) -> None:
        if self._waiting is not None:
            self._waiting.append(pcm)
        else:
            await self._active.feed(pcm)

    async def finalize(self) -> None:
        if self._waiting is not None:
            self._finalize_wanted = True
        else:
            await self._active.finalize()

    async def close(self) -> None:
        self._close_wanted = True
        if self._waiting is None:
            await self._active.close()

    def backlog_bytes(self) -> int:
        return self._active.backlog_bytes()

    async def wait_backlog_below(self, max_bytes: int) -> None:
        await self._active.wait_backlog_below(max_bytes)

    def upstream_id(self) -> str | None:
        return self._primary.upstream_id()

    def final_lag_s(self) -> float:
        return self._active.final_lag_s()

    async def results(self) -> AsyncIterator[EngineResult]:
        try:
            async for result in self._primary.results():
                yield result
            return
        except UpstreamError as exc:
            gave_up = exc.message
        resumable = cast(Resumable, self._primary)
        offset_s, pcm = resumable.unsettled_audio()
        self._waiting = [pcm] if pcm else []
        fallback = self._make_fallback()
        await fallback.start()
        yield ErrorData(
            code="engine_fallback",
            message=f"{gave_up}; the session goes on with engine {self._fallback_name!r} "
            f"from {offset_s:.2f} s of session audio",
        )
        while self._waiting:  # in order; feeds arriving meanwhile join the end
            await fallback.feed(self._waiting.pop(0))
        self._waiting = None
        self._active = fallback  # no await since the last check: nothing can slip between
        if self._finalize_wanted:
            await fallback.finalize()
        if self._close_wanted:
            await fallback.close()
        async for result in fallback.results():
            yield shifted(result, offset_s)


def shifted(result: EngineResult, offset_s: float) -> EngineResult:
    """``result`` with its session times moved ``offset_s`` later."""
    if not offset_s:
        return result
    if isinstance(result, FinalData):
        words = [
            Word(
                word=w.word,
                start=round(w.start + offset_s, 3),
                end=round(w.end + offset_s, 3),
                confidence=w.confidence,
            )
            for w in result.words
        ]
        return result.model_copy(
            update={
                "start": round(result.start + offset_s, 3),
                "end": round(result.end + offset_s, 3),
                "words": words,
            }
        )
    if isinstance(result, TokenData):
        return result.model_copy(
            update={
                "start": round(result.start + offset_s, 3),
                "end": round(result.end + offset_s, 3),
            }
        )
    if isinstance(result, SpeechStartData):
        return SpeechStartData(timestamp=round(result.timestamp + offset_s, 3))
    if isinstance(result, SpeechEndData):
        return SpeechEndData(last_word_end=round(result.last_word_end + offset_s, 3))
    return result
