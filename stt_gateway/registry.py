"""The in-process session registry: creates sessions, enforces limits, forgets closed ones."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from functools import partial

from redis.exceptions import RedisError

from .cluster import Cluster
from .engines.base import Engine, EngineProvider
from .engines.fallback import FallbackEngine
from .engines.multichannel import MultichannelEngine
from .errors import (
    EngineUnavailable,
    InvalidConfig,
    RateLimited,
    SessionNotFound,
    StoreUnavailable,
    TooManySessions,
)
from .limits import SessionLimits
from .models import SessionConfig
from .observer import ObserverFactory
from .session import Session
from .settings import Settings
from .summary import Summarizer

log = logging.getLogger(__name__)

NO_FALLBACK = "none"
"""``fallback_engine`` value: the session ends when its upstream gives up."""


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
        metrics: ObserverFactory | None = None,
    ) -> None:
        self._settings = settings
        self.providers = providers
        self._metrics = metrics
        self.cluster: Cluster | None = None
        """The processes sharing sessions on Redis (``redis_url``), once started."""
        self.summarizer: Summarizer | None = None
        """The LLM that writes session summaries (``llm_url``), if any."""
        self._sessions: dict[str, Session] = {}
        self.removed_audio_seconds: dict[str, float] = {}
        """Audio seconds of sessions already removed, by engine (metrics are counters)."""
        self._live = 0
        self._removals: dict[str, asyncio.TimerHandle] = {}
        self.owners: dict[str, str] = {}
        """Session id → id of the API key that created it (auth on)."""
        self.live_by_key: dict[str, int] = {}
        """Live sessions by API key id."""
        self.removed_audio_by_key: dict[str, float] = {}
        """Audio seconds of removed sessions, by API key id (metrics are counters)."""
        # Monotonic times of each key's latest creations, at most a minute's allowance each.
        self._creations: dict[str, deque[float]] = {}
        s = settings
        self._limits = SessionLimits(
            max_chunk_bytes=s.max_chunk_bytes,
            max_audio_lead_s=s.max_audio_lead_s,
            close_timeout_s=s.close_timeout_s,
            close_max_wait_s=s.close_max_wait_s,
            idle_timeout_s=s.idle_timeout_s,
            max_duration_s=s.max_session_s,
            max_subscribers=s.max_subscribers,
            ring_events=s.replay_events,
            ring_bytes=s.replay_bytes,
            queue_size=s.subscriber_queue,
            max_lag_s=s.subscriber_max_lag_s,
        )

    @property
    def limits(self) -> SessionLimits:
        """What each session of this process may hold and how long it waits."""
        return self._limits

    def resolve(self, config: SessionConfig) -> tuple[EngineProvider, SessionConfig]:
        """The provider for ``config.engine`` and the config with its defaults filled in.

        Raises:
            EngineUnavailable: that engine cannot serve on this install.
            InvalidConfig: a value the engine cannot honour, or a summary without an LLM.
        """
        if config.summary_options is not None and self.summarizer is None:
            raise InvalidConfig(
                "summary: this gateway has no LLM endpoint for summaries "
                "(STT_GATEWAY_LLM_URL); GET /info says whether it has one"
            )
        name = config.engine or self._settings.default_engine
        provider = self._provider("engine", name)
        resolved = provider.resolve(config.model_copy(update={"engine": name}))
        fallback = self._fallback_name(provider, resolved, config.fallback_engine)
        return provider, resolved.model_copy(update={"fallback_engine": fallback})

    def _provider(self, field: str, name: str) -> EngineProvider:
        """The available provider called ``name``. Raises InvalidConfig, EngineUnavailable."""
        provider = self.providers.get(name)
        if provider is None:
            raise InvalidConfig(f"{field}: {name!r} is not an engine of this gateway")
        reason = provider.unavailable_reason()
        if reason is not None:
            raise EngineUnavailable(f"{field}: {name!r} is not available here: {reason}")
        return provider

    def _fallback_name(
        self, provider: EngineProvider, resolved: SessionConfig, asked: str | None
    ) -> str | None:
        """The fallback engine a session gets: ``None`` where its engine cannot fall back,
        ``"none"`` where none serves it. Raises InvalidConfig for an explicit ask that cannot
        be honoured."""
        if not provider.falls_back:
            if asked not in (None, NO_FALLBACK):
                raise InvalidConfig(
                    f"fallback_engine: engine {resolved.engine!r} runs here and does not fall "
                    f"back; only an upstream engine (deepgram) does"
                )
            return None
        name = asked or self._settings.fallback_engine
        if name == NO_FALLBACK:
            return NO_FALLBACK
        try:
            self.fallback_for(name, resolved)
        except (InvalidConfig, EngineUnavailable) as exc:
            if asked is None:
                return NO_FALLBACK  # the gateway's default does not serve this session
            raise InvalidConfig(exc.message) from None
        return name

    def fallback_for(
        self, name: str, resolved: SessionConfig
    ) -> tuple[EngineProvider, SessionConfig]:
        """The provider and config a session with ``resolved`` config continues on when its
        upstream gives up. Raises InvalidConfig, EngineUnavailable."""
        provider = self._provider("fallback_engine", name)
        if provider.falls_back:
            raise InvalidConfig(f"fallback_engine: {name!r} is not an embedded engine")
        try:
            config = provider.resolve(
                SessionConfig(
                    engine=name,
                    language=resolved.language,
                    sample_rate=resolved.sample_rate,
                    interim_results=resolved.interim_results,
                )
            )
        except InvalidConfig as exc:
            raise InvalidConfig(f"fallback_engine: {exc.message}") from None
        return provider, config

    async def create(self, config: SessionConfig, owner: str | None = None) -> Session:
        """Create and start a session.

        Args:
            config: as the client sent it.
            owner: id of the API key creating it (auth on): its own limits apply and the
                session counts against it.

        Raises:
            TooManySessions: ``max_sessions`` live sessions already exist.
            RateLimited: ``owner`` holds ``key_max_sessions`` live sessions, or created
                ``key_sessions_per_minute`` within the last minute.
            InvalidConfig, EngineUnavailable: see :meth:`resolve`.
            EngineError: the engine failed to start.
        """
        if self._live >= self._settings.max_sessions:
            raise TooManySessions(
                f"the gateway holds its limit of {self._settings.max_sessions} live sessions; "
                f"close one or try again later"
            )
        if owner is not None:
            self._check_key_limits(owner)
        provider, resolved = self.resolve(config)
        # Each engine hears one channel: mono PCM16 at the session's rate.
        mono = resolved.model_copy(update={"channels": 1, "multichannel": False})
        engines: list[Engine] = []
        for _ in range(resolved.channels if resolved.multichannel else 1):
            engine = provider.create(mono)
            if resolved.fallback_engine not in (None, NO_FALLBACK):
                assert resolved.fallback_engine is not None
                fallback, fallback_config = self.fallback_for(resolved.fallback_engine, mono)
                engine = FallbackEngine(
                    engine, partial(fallback.create, fallback_config), resolved.fallback_engine
                )
            engines.append(engine)
        engine = engines[0] if len(engines) == 1 else MultichannelEngine(engines)
        session = Session(
            uuid.uuid4().hex,
            resolved,
            engine,
            self._limits,
            on_closed=self._closed,
            observer=self._metrics.observer(provider.name) if self._metrics else None,
            summarizer=self.summarizer,
        )
        self._live += 1
        try:
            if self.cluster is not None:
                await self._share(session, self.cluster)
            await session.start()
        except BaseException:
            self._live -= 1
            if self.cluster is not None:
                await self.cluster.forget(session.id)
            raise
        self._sessions[session.id] = session
        if owner is not None:
            self.owners[session.id] = owner
            self.live_by_key[owner] = self.live_by_key.get(owner, 0) + 1
            self._creations[owner].append(time.monotonic())
        log.info(
            "session created id=%s engine=%s language=%s sample_rate=%d",
            session.id,
            resolved.engine,
            resolved.language,
            resolved.sample_rate,
        )
        return session

    async def _share(self, session: Session, cluster: Cluster) -> None:
        """Make ``session`` readable on every process (before its first event).

        Raises:
            StoreUnavailable: Redis cannot be reached; the session is not created.
        """
        try:
            await cluster.own(session)
        except RedisError as exc:
            raise StoreUnavailable(
                f"the shared session store (Redis) cannot be reached ({exc}); the session "
                f"was not created, try again shortly"
            ) from None

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

    def _check_key_limits(self, owner: str) -> None:
        """Raises RateLimited when ``owner`` may not create a session now."""
        limit = self._settings.key_max_sessions
        if limit is not None and self.live_by_key.get(owner, 0) >= limit:
            raise RateLimited(
                f"API key {owner!r} holds its limit of {limit} live sessions; close one first",
                retry_after_s=5.0,
            )
        per_minute = self._settings.key_sessions_per_minute
        recent = self._creations.setdefault(owner, deque(maxlen=per_minute))
        if len(recent) == per_minute and (age := time.monotonic() - recent[0]) < 60.0:
            raise RateLimited(
                f"API key {owner!r} created its limit of {per_minute} sessions within a minute",
                retry_after_s=60.0 - age,
            )

    def _closed(self, session: Session) -> None:
        self._live -= 1
        if (owner := self.owners.get(session.id)) is not None:
            self.live_by_key[owner] -= 1
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
            if (owner := self.owners.pop(session_id, None)) is not None:
                self.removed_audio_by_key[owner] = (
                    self.removed_audio_by_key.get(owner, 0.0) + session.audio_seconds
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
