"""The other processes' side: a session another process owns, served from this one.

A :class:`Replica` is an :class:`~stt_gateway.eventlog.EventLog` numbered by the owner: filled
with the session's stream before its first subscriber joins, then fed from the stream by the
process's one :class:`Follower`, so its subscribers get every event in order, once, with
resume, exactly as on the owner (subscribing takes the log's snapshot and joins its fan-out in
one step, as there). It does what centrifuge's recovery does (subscribe live, read history,
de-duplicate by position) once per process rather than once per subscriber: the follower reads
each stream on from the newest entry the replica holds, so history and live never overlap.

The follower is one task with one ``XREAD`` over every followed stream (not one per session or
per subscriber): a busy process reads many sessions' events in one round trip. Following one
more stream wakes it through this process's wake stream (``stt:wake:{node}``), which it reads
too.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import TYPE_CHECKING

from redis import asyncio as aioredis

from ..eventlog import EventLog
from ..hub import Record, Subscription
from ..models import SessionState
from .keys import SessionRecord, events_key, seq_of, wake_key
from .retry import retrying

if TYPE_CHECKING:
    from ..limits import SessionLimits

READ_BLOCK_MS = 5_000
"""Longest one XREAD waits with nothing new (new streams wake it sooner)."""
READ_COUNT = 500
"""Most entries one XREAD takes from each stream."""
IDLE_S = 30.0
"""A replica no subscriber has followed this long stops being read and is dropped."""
ENDED_KEEP_S = 30.0
"""How long a replica of an ended session stays in memory (reconnecting subscribers get
``204`` or their replay from it)."""

Entries = list[tuple[bytes, dict[bytes, bytes]]]


class Replica:
    """A session another process owns, as this process serves it.

    Args:
        record: the session's record in Redis.
        limits: ring and queue sizes (those of this process's sessions).
    """

    def __init__(self, record: SessionRecord, limits: SessionLimits) -> None:
        self.id = record.session_id
        self.record = record
        self.key = events_key(record.session_id)
        self.log = EventLog(
            record.session_id,
            ring_events=limits.ring_events,
            ring_bytes=limits.ring_bytes,
            queue_size=limits.queue_size,
            max_lag_s=limits.max_lag_s,
            max_subscribers=limits.max_subscribers,
        )
        self.last_id = b"0-0"
        self._unfollowed_since = time.monotonic()

    @property
    def state(self) -> SessionState:
        return "closed" if self.log.closed else self.record.state

    @property
    def last_seq(self) -> int:
        return self.log.last_seq

    def subscribe(self, since: int | None = None) -> Subscription:
        """As :meth:`EventLog.subscribe`."""
        return self.log.subscribe(since)

    def take(self, entries: Entries) -> None:
        """Append stream entries (oldest first) to the log."""
        for entry, fields in entries:
            self.log.append(Record.frame(seq_of(entry), fields[b"t"].decode(), fields[b"j"]))
            self.last_id = entry

    def idle_for(self, now: float) -> float:
        """Seconds since the replica last had a subscriber (0 while it has one)."""
        if self.log.subscriber_count:
            self._unfollowed_since = now
        return now - self._unfollowed_since


class Follower:
    """This process's one reader of every stream it replicates (module docstring).

    Args:
        redis: the shared Redis (a connection of its own is held by the blocked read).
        node_id: this process (names its wake stream).
    """

    def __init__(self, redis: aioredis.Redis, node_id: str) -> None:
        self._redis = redis
        self._wake = wake_key(node_id)
        self.replicas: dict[str, Replica] = {}
        """Replicas being followed, by session id."""
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="redis-follower")

    async def follow(self, replica: Replica) -> None:
        """Read ``replica``'s stream from now on (from its newest entry).

        Raises:
            redis.exceptions.RedisError: the wake-up could not be sent.
        """
        self.replicas[replica.id] = replica
        self._changed.set()
        await self._redis.xadd(self._wake, {"w": b"1"}, maxlen=16, approximate=True)

    def unfollow(self, replica: Replica) -> None:
        """Stop reading ``replica``'s stream (it may still be read once more)."""
        if self.replicas.get(replica.id) is replica:
            del self.replicas[replica.id]

    def close(self) -> None:
        self._task.cancel()

    async def _run(self) -> None:
        while True:
            if not self.replicas:
                await self._changed.wait()
            self._changed.clear()
            following = dict(self.replicas)
            streams: dict[str, bytes | str] = {r.key: r.last_id for r in following.values()}
            streams[self._wake] = "$"
            found = await retrying("the shared stream reader", partial(self._read, streams))
            for key, entries in found:
                name = key.decode()
                if name == self._wake:
                    continue
                session_id = name.split(":")[2]
                replica = following.get(session_id)
                if replica is not None:
                    replica.take(entries)
                    if replica.log.closed:
                        self.unfollow(replica)

    async def _read(self, streams: dict[str, bytes | str]) -> list[tuple[bytes, Entries]]:
        found = await self._redis.xread(streams, count=READ_COUNT, block=READ_BLOCK_MS)  # type: ignore[arg-type]
        return found or []
