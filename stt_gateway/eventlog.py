"""A session's event log: ``seq`` assignment, a bounded replay ring, and fan-out.

Each event is serialised to JSON once, at publish, and the same string goes to every
subscriber (SSE and WebSocket send identical text). Fan-out never awaits: each subscriber has
its own bounded queue; a subscriber whose queue is full is cut off (``slow_consumer``) and may
come back with the last ``seq`` it saw, so one slow reader costs only itself.

Replay and live delivery meet without gap or duplicate because :meth:`EventLog.subscribe` takes
its snapshot of the ring and registers the subscriber in one synchronous step: no event can be
published between the two.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from .events import ErrorData, EventData, make_event


@dataclass(frozen=True, slots=True)
class Record:
    """One published event: its ``seq`` (``None`` off the log), type and wire JSON."""

    seq: int | None
    event_type: str
    json: str


SESSION_END = "session_end"


class Subscription:
    """One subscriber's view of a log: a replayed backlog, then live records.

    Iterate with ``async for``; iteration ends after the ``session_end`` record, or after a
    ``slow_consumer`` error record (seq ``None``) when the subscriber fell too far behind.
    :meth:`next` inside ``asyncio.timeout`` lets a transport send heartbeats while idle.
    """

    def __init__(self, log: EventLog, backlog: list[Record], maxsize: int) -> None:
        self._log = log
        self._backlog = deque(backlog)
        self._queue: asyncio.Queue[Record] = asyncio.Queue(maxsize)
        self._cut: Record | None = None
        self._ended = False

    def _offer(self, record: Record) -> bool:
        """Queue a live record without waiting; ``False`` when the queue is full."""
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            return False
        return True

    def _cut_off(self, record: Record) -> None:
        self._cut = record
        # Wake a reader blocked on an empty queue (cannot happen when full, but a reader may
        # have drained it since): the sentinel is never returned, _cut is checked first.
        if self._queue.empty():
            self._queue.put_nowait(record)

    async def next(self) -> Record:
        """The next record. Cancel-safe: a caller may wrap it in ``asyncio.timeout``.

        Raises:
            StopAsyncIteration: the subscription has ended.
        """
        if self._ended:
            raise StopAsyncIteration
        if self._cut is None and self._backlog:
            record = self._backlog.popleft()
        elif self._cut is None:
            record = await self._queue.get()
        if self._cut is not None:
            record = self._cut
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


class EventLog:
    """Assigns ``seq`` 1, 2, … to a session's events, keeps the last ``ring_size`` for replay,
    and fans each out to every :class:`Subscription`.

    Args:
        session_id: stamped on every event.
        ring_size: events kept for replay (counted in events).
        queue_size: live events a subscriber may have pending before it is cut off.
    """

    def __init__(self, session_id: str, *, ring_size: int, queue_size: int) -> None:
        self.session_id = session_id
        self._ring: deque[Record] = deque(maxlen=ring_size)
        self._queue_size = queue_size
        self._subscribers: set[Subscription] = set()
        self._last_seq = 0
        self._closed = False

    @property
    def last_seq(self) -> int:
        """``seq`` of the newest event; 0 before the first."""
        return self._last_seq

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def publish(self, data: EventData) -> Record:
        """Wrap ``data`` in its event envelope with the next ``seq``, store it and fan it out.

        Raises:
            RuntimeError: the log is closed (``session_end`` was already published).
        """
        if self._closed:
            raise RuntimeError(f"event log of session {self.session_id} is closed")
        self._last_seq += 1
        event = make_event(data, seq=self._last_seq, session_id=self.session_id)
        record = Record(self._last_seq, event.event_type, event.model_dump_json(exclude_none=True))
        self._ring.append(record)
        if record.event_type == SESSION_END:
            self._closed = True
        for sub in list(self._subscribers):
            if not sub._offer(record):
                self._drop_slow(sub)
        return record

    def subscribe(self, since: int | None = None) -> Subscription:
        """A subscription to every event after ``since`` that the ring still holds, then live.

        ``since=None`` starts at the oldest event still held. A ``since`` older than the
        ring is served from the oldest held event on.
        """
        start = 0 if since is None else since
        first_held = self._ring[0].seq if self._ring else self._last_seq + 1
        assert first_held is not None
        skip = max(0, start - first_held + 1)
        backlog = list(itertools.islice(self._ring, skip, None))
        sub = Subscription(self, backlog, self._queue_size)
        if not self._closed:
            self._subscribers.add(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    def _drop_slow(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)
        error = make_event(
            ErrorData(
                code="slow_consumer",
                message=f"this subscriber fell {self._queue_size} events behind and was cut "
                f"off; reconnect with the last seq it received to resume",
            ),
            seq=None,
            session_id=self.session_id,
        )
        sub._cut_off(Record(None, "error", error.model_dump_json(exclude_none=True)))
