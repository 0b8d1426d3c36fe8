"""This process as one of several sharing sessions: its lease, its owned sessions' writer, its
replicas of the others' sessions, and the search for sessions whose owner is gone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from pydantic import TypeAdapter
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from ..errors import SessionNotFound
from ..events import FinalEvent, SessionEndData, encode_event
from ..hub import SESSION_END
from ..models import SessionInfo, Transcript
from .keys import (
    LIVE,
    SessionRecord,
    count_followers,
    entry_id,
    events_key,
    finals_key,
    followers_key,
    lost_key,
    node_key,
    record_key,
    seq_of,
    session_keys,
)
from .replica import ENDED_KEEP_S, IDLE_S, Follower, Replica
from .writer import Publisher

if TYPE_CHECKING:
    from ..limits import SessionLimits
    from ..session import Session

log = logging.getLogger(__name__)

_FINAL_EVENT: TypeAdapter[FinalEvent] = TypeAdapter(FinalEvent)


class Cluster:
    """This process's side of the shared Redis (see the package docstring).

    Args:
        url: ``redis://…`` of the shared Redis.
        limits: ring and queue sizes for replicas (as for the sessions of this process).
        retention_s: how long an ended session's keys stay.
        lease_s: see :class:`~stt_gateway.settings.Settings` ``lease_s``.
    """

    def __init__(self, url: str, limits: SessionLimits, retention_s: float, lease_s: float):
        self.node_id = secrets.token_hex(6)
        self.node_url = ""
        self._redis = aioredis.Redis.from_url(url, socket_connect_timeout=2.0)
        self._limits = limits
        self._retention_ms = max(1, int(retention_s * 1000))
        self._lease_s = lease_s
        self._lease_ms = max(1, int(lease_s * 1000))
        self._publisher: Publisher | None = None
        self._follower: Follower | None = None
        self._opening: dict[str, asyncio.Task[Replica]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._suspects: set[bytes] = set()  # owners whose lease had lapsed at the last sweep

    async def start(self, node_url: str) -> None:
        """Take this process's lease and start renewing it and watching the others.

        Raises:
            redis.exceptions.RedisError: Redis cannot be reached now.
        """
        self.node_url = node_url
        await self._redis.set(node_key(self.node_id), node_url, px=self._lease_ms)
        self._publisher = Publisher(
            self._redis,
            self.node_id,
            node_url,
            self._lease_ms,
            self._limits.ring_events,
            self._retention_ms,
        )
        self._follower = Follower(self._redis, self.node_id)
        self._tasks = [
            asyncio.create_task(self._every(self._lease_s / 3, self._heartbeat), name="lease"),
            asyncio.create_task(self._every(self._lease_s / 4, self._reap), name="reaper"),
        ]
        log.info("cluster node %s at %s", self.node_id, node_url)

    async def close(self, wait_s: float = 5.0) -> None:
        """Write what the owned sessions still hold (at most ``wait_s``), drop the lease and
        every replica, and disconnect."""
        if self._publisher is not None:
            await self._publisher.close(wait_s)
        if self._follower is not None:
            self._follower.close()
        for task in [*self._tasks, *self._opening.values()]:
            task.cancel()
        with contextlib.suppress(RedisError):
            await self._redis.delete(node_key(self.node_id))
        await self._redis.aclose()

    # -- owned sessions --------------------------------------------------------------------

    async def own(self, session: Session) -> None:
        """Share ``session`` (call before its first event).

        Raises:
            redis.exceptions.RedisError: Redis cannot be reached: the session is not shared.
        """
        assert self._publisher is not None, "start() first"
        await self._publisher.own(session)

    async def forget(self, session_id: str) -> None:
        """Remove a session that never started (its creation failed); Redis errors ignored."""
        if self._publisher is not None:
            await self._publisher.forget(session_id)

    # -- sessions owned elsewhere ----------------------------------------------------------

    async def record(self, session_id: str) -> SessionRecord:
        """The session's record.

        Raises:
            SessionNotFound: Redis holds no such session.
            redis.exceptions.RedisError: Redis cannot be reached.
        """
        fields = await self._redis.hgetall(record_key(session_id))
        if not fields:
            raise SessionNotFound(session_id)
        return SessionRecord(session_id, fields)

    async def replica(self, session_id: str) -> Replica:
        """This process's replica of a session another process owns, its history read.

        Raises:
            SessionNotFound: Redis holds no such session.
            redis.exceptions.RedisError: Redis cannot be reached.
        """
        assert self._follower is not None, "start() first"
        if (replica := self._follower.replicas.get(session_id)) is not None:
            return replica
        task = self._opening.get(session_id)
        if task is None:
            task = asyncio.create_task(self._open_replica(session_id))
            self._opening[session_id] = task
            task.add_done_callback(lambda _t: self._opening.pop(session_id, None))
        return await asyncio.shield(task)

    async def _open_replica(self, session_id: str) -> Replica:
        assert self._follower is not None
        record = await self.record(session_id)
        replica = Replica(record, self._limits)
        replica.take(await self._redis.xrange(events_key(session_id)))
        # It opens for a subscriber: tell the owner now, not at the next heartbeat, so the
        # session does not idle out meanwhile.
        until = int((time.time() + self._lease_s) * 1000)
        await self._redis.hset(followers_key(session_id), self.node_id, f"1:{until}")
        await self._follower.follow(replica)
        if replica.log.closed:
            self._follower.unfollow(replica)
            self._keep_ended(replica)
        return replica

    def _keep_ended(self, replica: Replica) -> None:
        """An ended session's replica stays ``ENDED_KEEP_S`` for reconnecting subscribers."""
        assert self._follower is not None
        self._follower.replicas[replica.id] = replica
        asyncio.get_running_loop().call_later(ENDED_KEEP_S, self._follower.unfollow, replica)

    async def info(self, session_id: str) -> SessionInfo:
        """``GET /sessions/{id}`` of a session another process owns (or owned).

        Raises:
            SessionNotFound, redis.exceptions.RedisError.
        """
        record = await self.record(session_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.xlen(events_key(session_id))
        pipe.hgetall(followers_key(session_id))
        held, followers = await pipe.execute()
        replica = self._follower.replicas.get(session_id) if self._follower else None
        here = replica.log.subscriber_count if replica is not None else 0
        now_ms = int(time.time() * 1000)
        return SessionInfo(
            session_id=session_id,
            state=record.state,
            created_at=record.created_at,
            audio_seconds=round(record.audio_seconds, 3),
            subscribers=here + count_followers(followers, now_ms, skip=self.node_id),
            last_seq=max(record.last_seq, replica.log.last_seq if replica is not None else 0),
            replay_events=held,
            replay_bytes=replica.log.ring_size[1] if replica is not None else 0,
            config=record.config,
            summary=record.summary,
        )

    async def transcript(self, session_id: str) -> Transcript:
        """Every final of a session another process owns (or owned), in order.

        Raises:
            SessionNotFound, redis.exceptions.RedisError.
        """
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(record_key(session_id))
        pipe.lrange(finals_key(session_id), 0, -1)
        fields, payloads = await pipe.execute()
        if not fields:
            raise SessionNotFound(session_id)
        finals = [_FINAL_EVENT.validate_json(p).data for p in payloads]
        return Transcript.of(session_id, finals, SessionRecord(session_id, fields).summary)

    # -- liveness --------------------------------------------------------------------------

    async def _every(self, period_s: float, step: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(period_s)
            try:
                await step()
            except RedisError as exc:
                log.warning("cluster: %s failed: %s", getattr(step, "__name__", step), exc)

    async def _heartbeat(self) -> None:
        """Renew the lease; tell each session's owner how many subscribers this process has
        (``stt:s:{id}:followers``) and, as owner, learn how many the others have; stop
        reading replicas nobody has followed for ``IDLE_S``."""
        assert self._publisher is not None
        assert self._follower is not None
        now_ms = int(time.time() * 1000)
        until = now_ms + self._lease_ms
        owned = [w.session for w in self._publisher.writers.values()]
        counts = {s.id: s.local_subscriber_count for s in owned}
        now = time.monotonic()
        for replica in list(self._follower.replicas.values()):
            if replica.idle_for(now) > IDLE_S:
                self._follower.unfollow(replica)
            else:
                counts[replica.id] = replica.log.subscriber_count
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(node_key(self.node_id), self.node_url, px=self._lease_ms)
        for sid, count in counts.items():
            if count:
                pipe.hset(followers_key(sid), self.node_id, f"{count}:{until}")
                pipe.pexpire(followers_key(sid), self._retention_ms)
            else:
                pipe.hdel(followers_key(sid), self.node_id)
        for session in owned:
            pipe.hgetall(followers_key(session.id))
        answers = await pipe.execute()
        for session, followers in zip(owned, answers[len(answers) - len(owned) :], strict=True):
            session.remote_subscribers = count_followers(followers, now_ms, skip=self.node_id)

    async def _reap(self) -> None:
        """End every live session whose owner's lease lapsed at two sweeps in a row
        (``node_lost``): within ``lease_s`` and a half of its last renewal."""
        ids = sorted(await self._redis.smembers(LIVE))
        if not ids:
            self._suspects = set()
            return
        pipe = self._redis.pipeline(transaction=False)
        for raw in ids:
            pipe.hget(record_key(raw.decode()), "owner")
        owners: list[bytes | None] = await pipe.execute()
        nodes = sorted({o for o in owners if o is not None})
        leases = await self._redis.mget([node_key(n.decode()) for n in nodes])
        lapsed = {n for n, lease in zip(nodes, leases, strict=True) if lease is None}
        lapsed.discard(self.node_id.encode())
        confirmed, self._suspects = lapsed & self._suspects, lapsed
        for raw, owner in zip(ids, owners, strict=True):
            if owner is None:
                await self._redis.srem(LIVE, raw)  # its record expired
            elif owner in confirmed:
                await self._end_lost(raw.decode())

    async def _end_lost(self, session_id: str) -> None:
        """Append ``session_end`` ``node_lost`` to a session whose owner is gone; one process
        does it (a claim with ``SET NX``)."""
        if not await self._redis.set(
            lost_key(session_id), self.node_id, nx=True, px=self._retention_ms
        ):
            return
        record = await self.record(session_id)
        top = await self._redis.xrevrange(events_key(session_id), count=1)
        seq = max(record.last_seq, seq_of(top[0][0]) if top else 0) + 1
        end = SessionEndData(reason="node_lost", audio_seconds=round(record.audio_seconds, 3))
        payload = encode_event(end, seq=seq, session_id_json=json.dumps(session_id).encode())
        pipe = self._redis.pipeline(transaction=True)
        pipe.xadd(events_key(session_id), {"t": SESSION_END, "j": payload}, id=entry_id(seq))
        pipe.hset(
            record_key(session_id),
            mapping={"state": "closed", "reason": "node_lost", "last_seq": seq},
        )
        pipe.srem(LIVE, session_id)
        for key in session_keys(session_id):
            pipe.pexpire(key, self._retention_ms)
        await pipe.execute()
        log.warning(
            "session %s ended node_lost: its process %s stopped renewing its lease",
            session_id,
            record.owner,
        )
