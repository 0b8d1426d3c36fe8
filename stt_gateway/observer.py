"""What the session core reports as it runs, for metrics: the core knows nothing of
Prometheus, and the metrics module implements these hooks (:mod:`.metrics`)."""

from __future__ import annotations

from typing import Protocol


class SessionObserver(Protocol):
    """Receives what the metrics need; the core knows nothing of Prometheus."""

    def published(self, event_type: str, code: str | None) -> None:
        """An event went out (``code`` for ``error`` events)."""

    def latency(self, kind: str, seconds: float) -> None:
        """``ttft`` (speech onset → first interim), ``final`` (end of speech → final) or
        ``added`` (audio in → the result covering it published), in seconds."""

    def dropped(self, kind: str, count: int = 1) -> None:
        """``coalesced`` interims or ``slow_consumer`` cuts."""

    def ended(self, reason: str) -> None:
        """The session ended with ``session_end`` ``reason``."""


class NullObserver:
    """Observes nothing."""

    def published(self, event_type: str, code: str | None) -> None:
        pass

    def latency(self, kind: str, seconds: float) -> None:
        pass

    def dropped(self, kind: str, count: int = 1) -> None:
        pass

    def ended(self, reason: str) -> None:
        pass


class ObserverFactory(Protocol):
    """Makes one :class:`SessionObserver` per session (the registry asks at creation)."""

    def observer(self, engine: str) -> SessionObserver:
        """Hooks for one session on ``engine``."""
        ...
