"""A session's event log: ``seq`` assignment, a bounded replay ring, and fan-out.

Each event is serialised to JSON once, at publish, and the same string goes to every
subscriber (SSE and WebSocket send identical text). Publishing never awaits: each subscriber has
its own bounded queue. When a subscriber falls behind, its pending interims are coalesced (a new
``token`` replaces a pending ``token`` of the same utterance); finals and control events are
never dropped. Past the hard limits — too many events pending, or the oldest pending one too
old — the subscriber is cut off with a ``slow_consumer`` error and may come back with the last
``seq`` it saw. One slow reader costs only itself.

Replay and live delivery meet without gap or duplicate because :meth:`EventLog.subscribe` takes
its snapshot of the ring and registers the subscriber in one synchronous step: no event can be
published between the two. The ring is bounded in events and in bytes; a resume from a ``seq``
the ring no longer holds starts with a ``replay_gap`` error naming the first ``seq`` it can give.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import TooManySubscribers
from .events import ErrorData, EventData, make_event

if TYPE_CHECKING:
    from .session import SessionObserver


@dataclass(frozen=True, slots=True)
class Record:
    """One published event: its ``seq`` (``None`` off the log), type and wire JSON."""

    seq: int | None
    event_type: str
    json: str


SESSION_END = "session_end"
TOKEN = "token"


class Subscription:
    """One subscriber's view of a log: a replayed backlog, then live records.

    Iterate with ``async for``; iteration ends after the ``session_end`` record, or after a
    ``slow_consumer`` error record (seq ``None``) when the subscriber fell too far behind.
    ``next()`` inside ``asyncio.timeout`` lets a transport send heartbeats while idle.

    Args:
        log: the log it reads.
        backlog: records replayed before the live ones.
        limit: live records pending before the subscriber is cut off.
        coalesce_after: live records pending before interims are coalesced.
        max_lag_s: age (s) of the oldest pending live record past which it is cut off.
    """

    def __init__(
        self,
        log: EventLog,
        backlog: list[Record],
        limit: int,
        coalesce_after: int,
        max_lag_s: float,
    ) -> None:
        self._log = log
        self._backlog = deque(backlog)
        self._live: deque[tuple[float, Record]] = deque()  # (monotonic s queued, record)
        self._limit = limit
        self._max_lag_s = max_lag_s
        self._coalesce_after = coalesce_after
        self._waiter: asyncio.Future[None] | None = None
        self._cut: Record | None = None
        self._ended = False
        self.coalesced = 0
        """Interims replaced by a newer one before this subscriber read them."""

    @property
    def pending(self) -> int:
        """Records waiting to be read (backlog and live)."""
        return len(self._backlog) + len(self._live)

    def _offer(self, record: Record, now: float) -> bool:
        """Queue a live record without waiting; ``False`` when past a hard limit."""
        live = self._live
        if live and now - live[0][0] > self._max_lag_s:
            return False
        if (
            record.event_type == TOKEN
            and len(live) >= self._coalesce_after
            and live[-1][1].event_type == TOKEN
        ):
            # The newest interim of the same utterance supersedes the pending one; it keeps
            # the older queue time, so coalescing never hides how far behind the reader is.
            live[-1] = (live[-1][0], record)
            self.coalesced += 1
        elif len(live) >= self._limit:
            return False
        else:
            live.append((now, record))
        self._wake()
        return True

    def _cut_off(self, record: Record) -> None:
        self._cut = record
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next(self) -> Record:
        """The next record. Cancel-safe: a caller may wrap it in ``asyncio.timeout``.

        Raises:
            StopAsyncIteration: the subscription has ended.
        """
        while True:
            if self._ended:
                raise StopAsyncIteration
            if self._cut is not None:
                record = self._cut
            elif self._backlog:
                record = self._backlog.popleft()
            elif self._live:
                record = self._live.popleft()[1]
            elif self._log.closed:
                self.close()  # everything up to session_end was already read
                continue
            else:
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
                continue
            if record is self._cut or record.event_type == SESSION_END:
                self.close()
            return record

    def __aiter__(self) -> AsyncIterator[Record]:
        return self

    async def __anext__(self) -> Record:
        return await self.next()

    def close(self) -> None:
        """Stop receiving (idempotent); the transport calls this when its peer leaves."""
        self._ended = True
        self._log._unsubscribe(self)
        self._wake()


class EventLog:
    """Assigns ``seq`` 1, 2, … to a session's events, keeps the newest for replay, and fans
    each out to every :class:`Subscription`.

    Args:
        session_id: stamped on every event.
        ring_events: most events kept for replay.
        ring_bytes: most bytes of event JSON kept for replay (the newest event always stays).
        queue_size: live events a subscriber may have pending before it is cut off; past a
            half of it, its pending interims are coalesced.
        max_lag_s: a subscriber whose oldest pending event is older than this is cut off.
        max_subscribers: subscribers at once.
        observer: told of every publish, coalesced interim and cut (metrics).
    """

    def __init__(
        self,
        session_id: str,
        *,
        ring_events: int,
        ring_bytes: int,
        queue_size: int,
        max_lag_s: float = 30.0,
        max_subscribers: int = 1_000,
        observer: SessionObserver | None = None,
    ) -> None:
        self.session_id = session_id
        self._ring: deque[Record] = deque()
        self._ring_events = ring_events
        self._ring_bytes = ring_bytes
        self._bytes = 0
        self._queue_size = queue_size
        self._max_lag_s = max_lag_s
        self._max_subscribers = max_subscribers
        self._observer = observer
        self._subscribers: set[Subscription] = set()
        self._last_seq = 0
        self.closed = False
        """True once ``session_end`` is published."""

    @property
    def last_seq(self) -> int:
        """``seq`` of the newest event; 0 before the first."""
        return self._last_seq

    @property
    def first_held_seq(self) -> int:
        """``seq`` of the oldest event the ring holds (``last_seq + 1`` when empty)."""
        return self._ring[0].seq if self._ring and self._ring[0].seq else self._last_seq + 1

    @property
    def ring_size(self) -> tuple[int, int]:
        """(events, bytes) held for replay."""
        return len(self._ring), self._bytes

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def publish(self, data: EventData) -> Record:
        """Wrap ``data`` in its event envelope with the next ``seq``, store it and fan it out.

        Raises:
            RuntimeError: the log is closed (``session_end`` was already published).
        """
        if self.closed:
            raise RuntimeError(f"event log of session {self.session_id} is closed")
        self._last_seq += 1
        event = make_event(data, seq=self._last_seq, session_id=self.session_id)
        record = Record(self._last_seq, event.event_type, event.model_dump_json(exclude_none=True))
        self._ring.append(record)
        self._bytes += len(record.json)
        while len(self._ring) > 1 and (
            len(self._ring) > self._ring_events or self._bytes > self._ring_bytes
        ):
            self._bytes -= len(self._ring.popleft().json)
        if record.event_type == SESSION_END:
            self.closed = True
        now = time.monotonic()
        for sub in list(self._subscribers):
            coalesced = sub.coalesced
            if not sub._offer(record, now):
                self._drop_slow(sub)
            elif sub.coalesced != coalesced and self._observer is not None:
                self._observer.dropped("coalesced")
        if self._observer is not None:
            code = data.code if isinstance(data, ErrorData) else None
            self._observer.published(record.event_type, code)
        return record

    def subscribe(self, since: int | None = None) -> Subscription:
        """A subscription to every event after ``since`` that the ring still holds, then live.

        ``since=None`` starts at the oldest event held. A ``since`` older than the ring starts
        with a ``replay_gap`` error (no seq) naming the first seq that follows.

        Raises:
            TooManySubscribers: ``max_subscribers`` are subscribed already.
        """
        if len(self._subscribers) >= self._max_subscribers and not self.closed:
            raise TooManySubscribers(
                f"session {self.session_id} has its limit of {self._max_subscribers} "
                f"subscribers; try again when one leaves"
            )
        first = self.first_held_seq
        start = 0 if since is None else since
        skip = min(len(self._ring), max(0, start - first + 1))
        backlog = list(itertools.islice(self._ring, skip, None))
        if since is not None and since + 1 < first:
            gap = self._error(
                "replay_gap",
                f"events {since + 1}–{first - 1} are no longer held; replay starts at "
                f"{first} (every final is in GET /sessions/{self.session_id}/transcript)",
            )
            backlog.insert(0, gap)
        sub = Subscription(
            self, backlog, self._queue_size, max(1, self._queue_size // 2), self._max_lag_s
        )
        if not self.closed:
            self._subscribers.add(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    def _drop_slow(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)
        if self._observer is not None:
            self._observer.dropped("slow_consumer")
        sub._cut_off(
            self._error(
                "slow_consumer",
                f"this subscriber fell {self._queue_size} events behind and was cut off; "
                f"reconnect with the last seq it received to resume",
            )
        )

    def _error(self, code: str, message: str) -> Record:
        """An ``error`` record for one subscriber only: not in the log, no seq."""
        event = make_event(
            ErrorData(code=code, message=message), seq=None, session_id=self.session_id
        )
        return Record(None, "error", event.model_dump_json(exclude_none=True))
