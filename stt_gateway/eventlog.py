"""A session's event log: ``seq`` assignment and a bounded replay ring, in front of its hub.

Each event is serialised once, at publish, into the frames it travels in (a
:class:`~stt_gateway.hub.Record`); the log keeps the newest in its ring and hands each to the
session's :class:`~stt_gateway.hub.Hub`, which fans it out to this process's subscribers, and
to its mirror, if any (the shared store other gateway processes read: :mod:`stt_gateway.cluster`).
The ring keeps each record as a plain tuple, which the garbage collector stops tracking, so
thousands of held events add nothing to its walks. Publishing never awaits.

Replay and live delivery meet without gap or duplicate because :meth:`EventLog.subscribe` takes
its snapshot of the ring and joins the hub in one synchronous step: no event can be published
between the two. The ring is bounded in events and in bytes; a resume from a ``seq`` the ring
no longer holds starts with a ``replay_gap`` error naming the first ``seq`` it can give. A log
may also be a *replica*, numbered by another process (:meth:`EventLog.append`).
"""

from __future__ import annotations

import itertools
import json
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from .events import ErrorData, EventData, encode_event, event_type_of
from .hub import Hub, Record, Subscription

if TYPE_CHECKING:
    from .observer import SessionObserver

_Frozen = tuple[int | None, str, bytes, bytes]
"""A :class:`Record`'s fields as a plain tuple (see ``EventLog._ring``)."""


class EventLog:
    """Assigns ``seq`` 1, 2, … to a session's events, keeps the newest for replay, and hands
    each to the session's :class:`~stt_gateway.hub.Hub` (and mirror).

    Args:
        session_id: stamped on every event.
        ring_events: most events kept for replay.
        ring_bytes: most bytes of event JSON kept for replay (the newest event always stays).
        queue_size, max_lag_s, max_subscribers: the hub's subscriber limits (see
            :class:`~stt_gateway.hub.Hub`).
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
        self._session_id_json = json.dumps(session_id).encode()
        # The ring holds each record as a plain tuple, which the collector stops tracking (it
        # untracks exact tuples of untracked items only, not a NamedTuple): thousands of events
        # per session would otherwise be walked by every full collection.
        self._ring: deque[_Frozen] = deque()
        self._ring_events = ring_events
        self._ring_bytes = ring_bytes
        self._bytes = 0
        self._observer = observer
        self._hub = Hub(
            session_id,
            self._session_id_json,
            queue_size=queue_size,
            max_lag_s=max_lag_s,
            max_subscribers=max_subscribers,
            observer=observer,
        )
        self._last_seq = 0
        self._mirror: Callable[[Record], None] | None = None

    def mirror_to(self, mirror: Callable[[Record], None]) -> None:
        """Hand every record published from now on to ``mirror`` too, in order, as it is
        stored (the shared store other processes read: :mod:`stt_gateway.cluster`).
        ``mirror`` must not block."""
        self._mirror = mirror

    @property
    def closed(self) -> bool:
        """True once ``session_end`` is published."""
        return self._hub.closed

    @property
    def last_seq(self) -> int:
        """``seq`` of the newest event; 0 before the first."""
        return self._last_seq

    @property
    def first_held_seq(self) -> int:
        """``seq`` of the oldest event the ring holds (``last_seq + 1`` when empty)."""
        oldest = self._ring[0][0] if self._ring else None
        return oldest if oldest is not None else self._last_seq + 1

    @property
    def ring_size(self) -> tuple[int, int]:
        """(events, bytes) held for replay."""
        return len(self._ring), self._bytes

    @property
    def subscriber_count(self) -> int:
        return self._hub.subscriber_count

    def publish(self, data: EventData) -> Record:
        """Wrap ``data`` in its event envelope with the next ``seq``, store it and fan it out.

        Raises:
            RuntimeError: the log is closed (``session_end`` was already published).
        """
        if self.closed:
            raise RuntimeError(f"event log of session {self.session_id} is closed")
        seq = self._last_seq + 1
        payload = encode_event(data, seq=seq, session_id_json=self._session_id_json)
        record = Record.frame(seq, event_type_of(data), payload)
        self._store(record)
        self._hub.deliver(record)
        if self._mirror is not None:
            self._mirror(record)
        if self._observer is not None:
            code = data.code if isinstance(data, ErrorData) else None
            self._observer.published(record.event_type, code)
        return record

    def append(self, record: Record) -> None:
        """Store and fan out a record numbered elsewhere: this log is a replica of a session
        another process owns (:mod:`stt_gateway.cluster`). Records arrive in ``seq`` order; one
        that skips seqs (the shared store lost them) first gives every subscriber a
        ``replay_gap`` error naming them, so nothing is lost silently. Records at or below
        ``last_seq`` and records after ``session_end`` are ignored (a re-read).
        """
        assert record.seq is not None
        if self.closed or record.seq <= self._last_seq:
            return
        if self._last_seq and record.seq > self._last_seq + 1:
            self._hub.deliver(
                self._hub.error(
                    "replay_gap",
                    f"events {self._last_seq + 1}–{record.seq - 1} were lost by the shared "
                    f"event store (Redis); the stream goes on at {record.seq} (every final is "
                    f"in GET /sessions/{self.session_id}/transcript)",
                )
            )
        self._store(record)
        self._hub.deliver(record)

    def held(self) -> list[Record]:
        """Every record the ring holds, oldest first."""
        return [Record._make(kept) for kept in self._ring]

    def _store(self, record: Record) -> None:
        """Keep ``record`` (the next seq) in the ring, dropping the oldest past its bounds."""
        seq = self._last_seq = record.seq or 0
        self._ring.append((seq, record.event_type, record.sse, record.ws))
        self._bytes += len(record.ws)
        while len(self._ring) > 1 and (
            len(self._ring) > self._ring_events or self._bytes > self._ring_bytes
        ):
            self._bytes -= len(self._ring.popleft()[3])  # its ws frame

    def subscribe(self, since: int | None = None) -> Subscription:
        """A subscription to every event after ``since`` that the ring still holds, then live.

        ``since=None`` starts at the oldest event held. A ``since`` older than the ring starts
        with a ``replay_gap`` error (no seq) naming the first seq that follows. A ``since``
        beyond ``last_seq`` gets the events after it as they come (``docs/api.md``: "every
        event after that seq"): a replica can be behind the owner a resuming client last read
        from, and must not give it again what it already has.

        Raises:
            TooManySubscribers: ``max_subscribers`` are subscribed already.
        """
        first = self.first_held_seq
        start = 0 if since is None else since
        skip = min(len(self._ring), max(0, start - first + 1))
        backlog = [Record._make(kept) for kept in itertools.islice(self._ring, skip, None)]
        if since is not None and since + 1 < first:
            gap = self._hub.error(
                "replay_gap",
                f"events {since + 1}–{first - 1} are no longer held; replay starts at "
                f"{first} (every final is in GET /sessions/{self.session_id}/transcript)",
            )
            backlog.insert(0, gap)
        return self._hub.join(backlog, after=start)
