"""The engine interface: what a session needs from a speech recogniser.

An :class:`Engine` is one recognition stream (one per session). It is fed PCM16 at the
session's sample rate and yields :data:`~stt_gateway.events.EngineResult` items — interim
``TokenData``, ``FinalData``, ``SpeechStartData``, ``SpeechEndData`` and ``ErrorData`` — from
:meth:`Engine.results`. Vendor payloads and vendor exceptions never leave an engine module.

An :class:`EngineProvider` knows one kind of engine: whether it can run on this install, what
languages it has, how to fill a config's defaults, and how to make an engine for a session.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from ..events import EngineResult
from ..models import SessionConfig

WAIT_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
"""Upper bounds (s) of the queue-wait histogram's buckets (``+Inf`` is implied)."""


@dataclass
class SecondPassStats:
    """Counters since the pool started (for metrics and ``/info``).

    ``wait_buckets[i]`` counts jobs that waited at most ``WAIT_BUCKETS_S[i]`` seconds
    (not cumulative; the last entry counts longer waits).
    """

    queued: int = 0
    running: int = 0
    done: int = 0
    refused: int = 0
    failed: int = 0
    late: int = 0
    """Jobs whose result came too late to be used (the caller gave up waiting)."""
    wait_sum_s: float = 0.0
    wait_buckets: list[int] = field(default_factory=lambda: [0] * (len(WAIT_BUCKETS_S) + 1))


class Engine(ABC):
    """One recognition stream.

    Call order: :meth:`start` once, then any number of :meth:`feed` / :meth:`finalize`, then
    :meth:`close` once. :meth:`results` is iterated by exactly one consumer from before the
    first ``feed``; it ends after ``close`` once every last result has been yielded.
    """

    @abstractmethod
    async def start(self) -> None:
        """Load what the stream needs. Raises :class:`~stt_gateway.errors.EngineError`."""

    @abstractmethod
    async def feed(self, pcm: bytes) -> None:
        """Queue PCM16 audio (whole samples, session rate). The session bounds how much may
        wait (see :meth:`backlog_bytes`); an engine may also await here (a network send)."""

    @abstractmethod
    async def finalize(self) -> None:
        """Ask for the utterance in progress to be finalized now (a ``final`` follows)."""

    @abstractmethod
    async def close(self) -> None:
        """End the stream: flush queued audio, finalize, then let :meth:`results` end."""

    @abstractmethod
    def results(self) -> AsyncIterator[EngineResult]:
        """The stream's results in order; ends after :meth:`close` has flushed.

        Raises:
            EngineError: the stream failed for good; the session ends with its ``code``.
        """

    def backlog_bytes(self) -> int:
        """Audio taken by :meth:`feed` and not yet recognised, in bytes (0: none waits here)."""
        return 0

    async def wait_backlog_below(self, max_bytes: int) -> None:  # noqa: B027 - no-op default
        """Return once :meth:`backlog_bytes` is below ``max_bytes`` (at once if it is): the
        wait a producer that is too far ahead of its engine feels."""

    def upstream_id(self) -> str | None:
        """The upstream service's id for this stream (e.g. Deepgram's ``request_id``)."""
        return None

    def final_lag_s(self) -> float:
        """How long (s) the oldest ended utterance has waited for its final; 0 when none
        waits. Engines whose finals come from a separate, possibly saturated pass report it."""
        return 0.0


class EngineProvider(ABC):
    """Factory and description of one engine kind (``local``, ``deepgram``, …)."""

    falls_back = False
    """Whether its engines can hand a session to an embedded engine when they give up (an
    upstream service's; their engines are then :class:`~.fallback.Resumable`)."""

    name: str
    """The ``engine`` value in a session config."""

    @property
    @abstractmethod
    def languages(self) -> list[str]:
        """BCP-47 tags this engine recognises; the first is its default."""

    @property
    def default_model(self) -> str | None:
        """The model a session gets when its config names none (``None``: not known here)."""
        return None

    @abstractmethod
    def unavailable_reason(self) -> str | None:
        """``None`` when the engine can serve on this install, else why not (for people)."""

    @abstractmethod
    def resolve(self, config: SessionConfig) -> SessionConfig:
        """Return ``config`` with this engine's defaults filled in.

        Raises:
            InvalidConfig: a value this engine cannot honour (the message names the field).
        """

    @abstractmethod
    def create(self, config: SessionConfig) -> Engine:
        """A new, not yet started engine for a session with the resolved ``config``."""

    def prepare(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Start what a first session would otherwise wait for (app start, default engine;
        needs a running event loop)."""

    def second_pass_stats(self) -> SecondPassStats | None:
        """Counters of the engine's second-pass pool, if it has one (for metrics)."""
        return None

    async def close(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release what the provider holds (app cleanup)."""

    async def not_ready_reason(self) -> str | None:
        """``None`` when the engine can take a session now (for ``/ready``), else why not.
        Defaults to :meth:`unavailable_reason`; engines with an upstream also check it."""
        return self.unavailable_reason()
