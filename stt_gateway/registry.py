"""The in-process session registry: creates sessions, enforces limits, forgets closed ones."""

from __future__ import annotations

import asyncio
import logging
import uuid

from .engines.base import EngineProvider
from .errors import EngineUnavailable, InvalidConfig, SessionNotFound, TooManySessions
from .metrics import GatewayMetrics
from .models import SessionConfig
from .session import Session
from .settings import Settings

log = logging.getLogger(__name__)


class SessionRegistry:
    """Every session of this process, by id.

    A closed session stays readable (``GET``, transcript, replay up to ``session_end``) for
    ``settings.retention_s``, then is removed.

    Args:
        settings: limits and timings.
        providers: the engines, by config name (``"local"``, ``"deepgram"``).
    """

    def __init__(
        self,
        settings: Settings,
        providers: dict[str, EngineProvider],
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self._settings = settings
        self.providers = providers
        self._metrics = metrics
        self._sessions: dict[str, Session] = {}
        self.removed_audio_seconds: dict[str, float] = {}
        """Audio seconds of sessions already removed, by engine (metrics are counters)."""
        self._live = 0
        self._removals: dict[str, asyncio.TimerHandle] = {}

    def resolve(self, config: SessionConfig) -> tuple[EngineProvider, SessionConfig]:
        """The provider for ``config.engine`` and the config with its defaults filled in.

        Raises:
            EngineUnavailable: that engine cannot serve on this install.
            InvalidConfig: a value the engine cannot honour.
        """
        name = config.engine or self._settings.default_engine
        provider = self.providers.get(name)
        if provider is None:
            raise InvalidConfig(f"engine: {name!r} is not an engine of this gateway")
        reason = provider.unavailable_reason()
        if reason is not None:
            raise EngineUnavailable(f"engine: {name!r} is not available here: {reason}")
        return provider, provider.resolve(config.model_copy(update={"engine": name}))

    async def create(self, config: SessionConfig) -> Session:
        """Create and start a session.

        Raises:
            TooManySessions: ``max_sessions`` live sessions already exist.
            InvalidConfig, EngineUnavailable: see :meth:`resolve`.
            EngineError: the engine failed to start.
        """
        if self._live >= self._settings.max_sessions:
            raise TooManySessions(
                f"the gateway holds its limit of {self._settings.max_sessions} live sessions; "
                f"close one or try again later"
            )
        provider, resolved = self.resolve(config)
        s = self._settings
        session = Session(
            uuid.uuid4().hex,
            resolved,
            provider.create(resolved),
            max_chunk_bytes=s.max_chunk_bytes,
            ring_events=s.replay_events,
            ring_bytes=s.replay_bytes,
            queue_size=s.subscriber_queue,
            max_lag_s=s.subscriber_max_lag_s,
            close_timeout_s=s.close_timeout_s,
            idle_timeout_s=s.idle_timeout_s,
            on_closed=self._closed,
            observer=self._metrics.observer(provider.name) if self._metrics else None,
        )
        self._live += 1
        try:
            await session.start()
        except BaseException:
            self._live -= 1
            raise
        self._sessions[session.id] = session
        log.info(
            "session created id=%s engine=%s language=%s sample_rate=%d",
            session.id,
            resolved.engine,
            resolved.language,
            resolved.sample_rate,
        )
        return session

    def get(self, session_id: str) -> Session:
        """The session with this id.

        Raises:
            SessionNotFound: there is none (or it was removed after its retention time).
        """
        try:
            return self._sessions[session_id]
        except KeyError:
            raise SessionNotFound(session_id) from None

    @property
    def live_count(self) -> int:
        """Sessions not yet closed."""
        return self._live

    def _closed(self, session: Session) -> None:
        self._live -= 1
        self._removals[session.id] = asyncio.get_running_loop().call_later(
            self._settings.retention_s, self._remove, session.id
        )

    def _remove(self, session_id: str) -> None:
        session = self._sessions.pop(session_id, None)
        self._removals.pop(session_id, None)
        if session is not None:
            engine = session.engine_name
            self.removed_audio_seconds[engine] = (
                self.removed_audio_seconds.get(engine, 0.0) + session.audio_seconds
            )

    def all(self) -> list[Session]:
        """Every session held (live, and closed ones within their retention time)."""
        return list(self._sessions.values())

    async def close_all(self, reason: str = "shutdown") -> None:
        """Close every live session (server shutdown) and cancel pending removals."""
        await asyncio.gather(
            *(s.close(reason) for s in list(self._sessions.values()) if s.state != "closed"),
            return_exceptions=True,
        )
        for handle in self._removals.values():
            handle.cancel()
        self._removals.clear()
