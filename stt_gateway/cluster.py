"""Sessions shared by several gateway processes on Redis (``STT_GATEWAY_REDIS_URL``).

A session lives in the process that created it, its *owner*: the one whose engine holds its
audio stream. The owner's event log stays where ``seq`` is assigned and where its own
subscribers are served; every record it publishes is also appended, in order, to the
session's Redis stream, and each final to its transcript list. Any other process serves the
session's subscribers from a *replica*: an :class:`~stt_gateway.eventlog.EventLog` fed by one
``XREAD`` loop per session per process (not one per subscriber), filled with the stream's
history before its first subscriber joins, so a subscriber there gets every event in order,
once, with resume, exactly as on the owner. Audio and control for a session go to its owner
(the transports proxy them there; see the README).

Redis keys (``{id}``: the session id)::

    stt:node:{node}       the process's URL, with a lease (PX lease_s): alive while it renews
    stt:live              SET of live session ids (what a survivor checks for lost owners)
    stt:s:{id}            HASH: owner, owner_url, state, created_at, config, audio_seconds,
                          last_seq, epoch, reason
    stt:s:{id}:events     STREAM: entry id "<seq>-0" (so Last-Event-ID n reads from "n-0"),
                          fields t (event type), j (event JSON); MAXLEN ~ replay_events
    stt:s:{id}:finals     LIST of final events' JSON (the transcript, whole)
    stt:s:{id}:followers  HASH: process → "<subscribers>:<until, Unix ms>", renewed with the
                          lease: the owner counts every process's subscribers (idle timeout,
                          GET's subscribers)

An ended session's keys expire ``retention_s`` after its ``session_end``.

Failures, and what each costs:

- Redis unreachable or restarted: the owner keeps serving its own subscribers from memory
  and keeps each record until Redis takes it; on reconnect it re-reads what Redis holds and
  writes what is missing from its ring, and rewrites the session record and the whole
  transcript under a new *epoch* when Redis lost them (``epoch`` as in centrifuge's stream
  positions). A replica resumes its ``XREAD`` after the last ``seq`` it has, so no subscriber
  gets an event twice; events Redis lost and the owner no longer holds reach subscribers as a
  ``replay_gap`` error naming them, never as silence.
- An owner gone (killed, or cut off from Redis) stops renewing its lease; within ``lease_s``
  and a half another process appends ``session_end`` reason ``node_lost`` to each of its live
  sessions, so no subscriber anywhere waits forever. Their transcripts stay readable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from pydantic import TypeAdapter
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from .errors import SessionNotFound
from .eventlog import SESSION_END, EventLog, Record, Subscription
from .events import FinalEvent, SessionEndData, encode_event
from .models import Segment, SessionConfig, SessionInfo, SessionState, Transcript

if TYPE_CHECKING:
    from .session import Session, SessionLimits

log = logging.getLogger(__name__)

LIVE = "stt:live"
FINAL = "final"
_FINAL_EVENT: TypeAdapter[FinalEvent] = TypeAdapter(FinalEvent)
_READ_BLOCK_MS = 2_000
"""Longest one XREAD waits: how soon a replica nobody follows notices it may stop."""
_REPLICA_IDLE_S = 30.0
"""A replica with no subscriber this long stops reading and is dropped."""
_RETRY_S = (0.1, 0.2, 0.5, 1.0, 2.0)
"""Waits between attempts while Redis is unreachable (the last repeats)."""

T = TypeVar("T")


def _node_key(node: str) -> str:
    return f"stt:node:{node}"


def _record_key(session_id: str) -> str:
    return f"stt:s:{session_id}"


def _events_key(session_id: str) -> str:
    return f"stt:s:{session_id}:events"


def _finals_key(session_id: str) -> str:
    return f"stt:s:{session_id}:finals"


def _followers_key(session_id: str) -> str:
    return f"stt:s:{session_id}:followers"


def _seq_of(entry_id: bytes) -> int:
    return int(entry_id.split(b"-", 1)[0])


def _count(followers: dict[bytes, bytes], now_ms: int, skip: str | None = None) -> int:
    """Subscribers in a ``followers`` hash whose entries are still fresh."""
    total = 0
    for node, value in followers.items():
        count, until = value.split(b":")
        if int(until) > now_ms and node.decode() != skip:
            total += int(count)
    return total


class SessionRecord:
    """A session's record as Redis holds it (the ``stt:s:{id}`` hash).

    Attributes:
        owner: id of the owning process; ``owner_url``: where it takes the session's audio.
        state, created_at (Unix s), audio_seconds (s, as of the newest final or state change),
        last_seq, config, reason (of ``session_end``, once ended).
    """

    def __init__(self, session_id: str, fields: dict[bytes, bytes]) -> None:
        self.session_id = session_id
        self.owner = fields[b"owner"].decode()
        self.owner_url = fields[b"owner_url"].decode()
        self.state: SessionState = fields[b"state"].decode()  # type: ignore[assignment]
        self.created_at = float(fields[b"created_at"])
        self.audio_seconds = float(fields.get(b"audio_seconds", b"0"))
        self.last_seq = int(fields.get(b"last_seq", b"0"))
        self.config = SessionConfig.model_validate_json(fields[b"config"])


class Cluster:
    """This process's side of the shared Redis: its lease, the sessions it owns, replicas of
    the ones it does not, and the search for sessions whose owner is gone.

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
        self._append = self._redis.register_script(_APPEND)
        self._writers: dict[str, _Writer] = {}
        self._replicas: dict[str, asyncio.Task[Replica]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, node_url: str) -> None:
        """Take this process's lease and start renewing it and watching the others.

        Raises:
            redis.exceptions.RedisError: Redis cannot be reached now.
        """
        self.node_url = node_url
        await self._heartbeat()
        self._tasks = [
            asyncio.create_task(self._every(self._lease_s / 3, self._heartbeat), name="lease"),
            asyncio.create_task(self._every(self._lease_s / 2, self._reap), name="reaper"),
        ]
        log.info("cluster node %s at %s", self.node_id, node_url)

    async def close(self, wait_s: float = 5.0) -> None:
        """Write what the owned sessions still hold (at most ``wait_s``), drop the lease and
        every replica, and disconnect."""
        writers = [w.task for w in self._writers.values()]
        if writers:
            await asyncio.wait(writers, timeout=wait_s)
        for task in [*self._tasks, *writers, *self._replicas.values()]:
            task.cancel()
        for session_id in list(self._replicas):
            if (replica := self._ready_replica(session_id)) is not None:
                replica.stop()
        with contextlib.suppress(RedisError):
            await self._redis.delete(_node_key(self.node_id))
        await self._redis.aclose()

    # -- owned sessions --------------------------------------------------------------------

    async def own(self, session: Session) -> None:
        """Write ``session``'s record and mirror its events from now on (before its first).

        Raises:
            redis.exceptions.RedisError: Redis cannot be reached: the session is not shared.
        """
        writer = _Writer(self, session)
        try:
            await writer.write_record()
        except BaseException:
            writer.task.cancel()
            raise
        session.replicate(writer.add)
        self._writers[session.id] = writer
        writer.task.add_done_callback(lambda _t: self._writers.pop(session.id, None))

    async def forget(self, session_id: str) -> None:
        """Remove a session that never started (its creation failed); Redis errors ignored."""
        if (writer := self._writers.pop(session_id, None)) is not None:
            writer.task.cancel()
        with contextlib.suppress(RedisError):
            pipe = self._redis.pipeline(transaction=True)
            pipe.srem(LIVE, session_id)
            pipe.delete(_record_key(session_id), _events_key(session_id), _finals_key(session_id))
            await pipe.execute()

    # -- sessions owned elsewhere ----------------------------------------------------------

    async def record(self, session_id: str) -> SessionRecord:
        """The session's record.

        Raises:
            SessionNotFound: Redis holds no such session.
            redis.exceptions.RedisError: Redis cannot be reached.
        """
        fields = await self._redis.hgetall(_record_key(session_id))
        if not fields:
            raise SessionNotFound(session_id)
        return SessionRecord(session_id, fields)

    async def replica(self, session_id: str) -> Replica:
        """This process's replica of a session another process owns, its history read.

        Raises:
            SessionNotFound: Redis holds no such session.
            redis.exceptions.RedisError: Redis cannot be reached.
        """
        task = self._replicas.get(session_id)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = asyncio.create_task(self._open_replica(session_id))
            self._replicas[session_id] = task
        return await asyncio.shield(task)

    async def _open_replica(self, session_id: str) -> Replica:
        try:
            record = await self.record(session_id)
            replica = Replica(self, record, self._limits)
            await replica.load()
            # It opens for a subscriber: tell the owner now, not at the next heartbeat, so
            # the session does not idle out meanwhile.
            until = int((time.time() + self._lease_s) * 1000)
            await self._redis.hset(_followers_key(session_id), self.node_id, f"1:{until}")
        except BaseException:
            self._replicas.pop(session_id, None)
            raise
        replica.start()
        return replica

    def _ready_replica(self, session_id: str) -> Replica | None:
        """The replica of this session whose history is read, if this process has one."""
        task = self._replicas.get(session_id)
        if task is None or not task.done() or task.cancelled() or task.exception() is not None:
            return None
        return task.result()

    def _drop_replica(self, replica: Replica) -> None:
        if self._ready_replica(replica.id) is replica:
            del self._replicas[replica.id]

    async def info(self, session_id: str) -> SessionInfo:
        """``GET /sessions/{id}`` of a session another process owns (or owned).

        Raises:
            SessionNotFound, redis.exceptions.RedisError.
        """
        record = await self.record(session_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.xlen(_events_key(session_id))
        pipe.hgetall(_followers_key(session_id))
        held, followers = await pipe.execute()
        replica = self._ready_replica(session_id)
        here = replica.log.subscriber_count if replica is not None else 0
        return SessionInfo(
            session_id=session_id,
            state=record.state,
            created_at=record.created_at,
            audio_seconds=round(record.audio_seconds, 3),
            subscribers=here + _count(followers, int(time.time() * 1000), skip=self.node_id),
            last_seq=max(record.last_seq, replica.log.last_seq if replica is not None else 0),
            replay_events=held,
            replay_bytes=replica.log.ring_size[1] if replica is not None else 0,
            config=record.config,
        )

    async def transcript(self, session_id: str) -> Transcript:
        """Every final of a session another process owns (or owned), in order.

        Raises:
            SessionNotFound, redis.exceptions.RedisError.
        """
        pipe = self._redis.pipeline(transaction=False)
        pipe.exists(_record_key(session_id))
        pipe.lrange(_finals_key(session_id), 0, -1)
        exists, payloads = await pipe.execute()
        if not exists:
            raise SessionNotFound(session_id)
        finals = [_FINAL_EVENT.validate_json(p).data for p in payloads]
        return Transcript(
            session_id=session_id,
            text=" ".join(f.text for f in finals),
            segments=[
                Segment(
                    text=f.text,
                    start=f.start,
                    end=f.end,
                    confidence=f.confidence,
                    source=f.source,
                    channel=f.channel,
                )
                for f in finals
            ],
        )

    # -- liveness --------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        """Renew the lease, and tell each session's owner how many subscribers this process
        has (``stt:s:{id}:followers``); as owner, learn how many the others have."""
        now_ms = int(time.time() * 1000)
        until = now_ms + int(self._lease_s * 1000)
        counts = {sid: w.session.local_subscriber_count for sid, w in self._writers.items()}
        for sid in list(self._replicas):
            if (replica := self._ready_replica(sid)) is not None:
                counts[sid] = replica.log.subscriber_count
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(_node_key(self.node_id), self.node_url, px=max(1, int(self._lease_s * 1000)))
        for sid, count in counts.items():
            if count:
                pipe.hset(_followers_key(sid), self.node_id, f"{count}:{until}")
                pipe.pexpire(_followers_key(sid), self._retention_ms)
            else:
                pipe.hdel(_followers_key(sid), self.node_id)
        owned = list(self._writers.values())
        for writer in owned:
            pipe.hgetall(_followers_key(writer.session.id))
        answers = await pipe.execute()
        for writer, followers in zip(owned, answers[len(answers) - len(owned) :], strict=True):
            writer.session.remote_subscribers = _count(followers, now_ms, skip=self.node_id)

    async def _every(self, period_s: float, step: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(period_s)
            try:
                await step()
            except RedisError as exc:
                log.warning("cluster: %s failed: %s", getattr(step, "__name__", step), exc)

    async def _reap(self) -> None:
        """End every live session whose owner's lease has lapsed (``node_lost``)."""
        ids = sorted(await self._redis.smembers(LIVE))
        if not ids:
            return
        pipe = self._redis.pipeline(transaction=False)
        for raw in ids:
            pipe.hget(_record_key(raw.decode()), "owner")
        owners: list[bytes | None] = await pipe.execute()
        nodes = sorted({o for o in owners if o is not None})
        leases = await self._redis.mget([_node_key(n.decode()) for n in nodes])
        alive = dict(zip(nodes, leases, strict=True))
        for raw, owner in zip(ids, owners, strict=True):
            session_id = raw.decode()
            if owner is None:
                await self._redis.srem(LIVE, raw)  # expired record
            elif alive.get(owner) is None and owner.decode() != self.node_id:
                await self._end_lost(session_id)

    async def _end_lost(self, session_id: str) -> None:
        """Append ``session_end`` ``node_lost`` to a session whose owner is gone; one process
        does it (a claim with ``SET NX``)."""
        claim = f"stt:s:{session_id}:lost"
        if not await self._redis.set(claim, self.node_id, nx=True, px=self._retention_ms):
            return
        record = await self.record(session_id)
        top = await self._redis.xrevrange(_events_key(session_id), count=1)
        seq = max(record.last_seq, _seq_of(top[0][0]) if top else 0) + 1
        end = SessionEndData(reason="node_lost", audio_seconds=round(record.audio_seconds, 3))
        payload = encode_event(end, seq=seq, session_id_json=json.dumps(session_id).encode())
        pipe = self._redis.pipeline(transaction=True)
        pipe.xadd(_events_key(session_id), {"t": SESSION_END, "j": payload}, id=f"{seq}-0")
        pipe.hset(
            _record_key(session_id),
            mapping={"state": "closed", "reason": "node_lost", "last_seq": seq},
        )
        pipe.srem(LIVE, session_id)
        for key in (_record_key(session_id), _events_key(session_id), _finals_key(session_id)):
            pipe.pexpire(key, self._retention_ms)
        await pipe.execute()
        log.warning(
            "session %s ended node_lost: its process %s stopped renewing its lease",
            session_id,
            record.owner,
        )

    async def retrying(self, what: str, step: Callable[[], Awaitable[T]]) -> T:
        """``step()`` until Redis answers it, waiting longer between attempts."""
        for attempt in range(10**9):
            try:
                return await step()
            except RedisError as exc:
                if attempt == 0:
                    log.warning("cluster: %s: Redis unreachable (%s); retrying", what, exc)
                await asyncio.sleep(_RETRY_S[min(attempt, len(_RETRY_S) - 1)])
        raise AssertionError("unreachable")


_APPEND = """
-- Append records to a session's stream (and finals to its transcript) if, and only if, Redis
-- still holds the session's record under the writer's epoch; 0 (nothing written) otherwise.
-- KEYS: record, events, finals, live. ARGV: epoch, maxlen, retention_ms, state, audio_seconds,
-- last_seq, ended (0/1), session_id, push_finals (0/1), then (entry id, type, json) per record.
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
for i = 10, #ARGV, 3 do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], ARGV[i], 't', ARGV[i + 1], 'j', ARGV[i + 2])
  if ARGV[9] == '1' and ARGV[i + 1] == 'final' then redis.call('RPUSH', KEYS[3], ARGV[i + 2]) end
end
redis.call('HSET', KEYS[1], 'state', ARGV[4], 'audio_seconds', ARGV[5], 'last_seq', ARGV[6])
if ARGV[7] == '1' then
  redis.call('SREM', KEYS[4], ARGV[8])
  for k = 1, 3 do redis.call('PEXPIRE', KEYS[k], ARGV[3]) end
end
return 1
"""


class _Writer:
    """Appends one owned session's records to Redis, in order, a batch per round trip.

    Each batch is one Lua script (atomic) that writes only while Redis still holds the
    session's record under this writer's epoch: a Redis that restarted empty is noticed at
    the first write after it, not silently filled with a partial session. On a failure the
    writer keeps its records and, once Redis answers, writes what Redis lacks: the records
    after the newest it holds, or, when Redis lost the session, everything again under a new
    epoch (the record, the whole transcript, every event the ring holds).
    """

    def __init__(self, cluster: Cluster, session: Session) -> None:
        self._cluster = cluster
        self._redis = cluster._redis
        self._script = cluster._append
        self.session = session
        self._id = session.id
        self._keys = [_record_key(self._id), _events_key(self._id), _finals_key(self._id)]
        self._epoch = ""
        self._pending: list[Record] = []
        self._wake = asyncio.Event()
        self._written = 0  # seq of the newest record Redis is known to hold
        self._ended = False  # session_end is written
        self.task = asyncio.create_task(self._run(), name=f"redis-writer-{session.id}")

    def add(self, record: Record) -> None:
        """Queue ``record`` (never blocks; the ring bounds what a long outage holds)."""
        self._pending.append(record)
        self._wake.set()

    async def write_record(self) -> None:
        """Write the session's record under a new epoch (before its first event).

        Raises:
            redis.exceptions.RedisError.
        """
        pipe = self._redis.pipeline(transaction=True)
        self._queue_record(pipe)
        await pipe.execute()

    def _queue_record(self, pipe: aioredis.client.Pipeline) -> None:
        self._epoch = secrets.token_hex(8)
        s = self.session
        pipe.hset(
            self._keys[0],
            mapping={
                "owner": self._cluster.node_id,
                "owner_url": self._cluster.node_url,
                "state": s.state,
                "created_at": repr(s.created_at),
                "config": s.config.model_dump_json(),
                "audio_seconds": repr(s.audio_seconds),
                "last_seq": 0,
                "epoch": self._epoch,
            },
        )
        pipe.sadd(LIVE, self._id)
        # The owner's lease with it: after a Redis restart, its sessions are not taken for
        # lost before its next renewal.
        pipe.set(
            _node_key(self._cluster.node_id),
            self._cluster.node_url,
            px=max(1, int(self._cluster._lease_s * 1000)),
        )

    async def _run(self) -> None:
        while not self._ended:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            try:
                written = await self._append(batch)
            except RedisError:
                written = False
            if not written:
                await self._cluster.retrying(f"session {self._id}", self._resync)
                self._pending = [r for r in self._pending if (r.seq or 0) > self._written]
                if self._pending:
                    self._wake.set()

    async def _append(self, records: list[Record], push_finals: bool = True) -> bool:
        """Write ``records`` (oldest first, at least one); whether Redis still held the session
        under this epoch (``False``: nothing was written)."""
        s = self.session
        ended = records[-1].event_type == SESSION_END
        args: list[str | bytes | int] = [
            self._epoch,
            self._cluster._limits.ring_events,
            self._cluster._retention_ms,
            "closed" if ended else s.state,
            repr(s.audio_seconds),
            records[-1].seq or 0,
            int(ended),
            self._id,
            int(push_finals),
        ]
        for record in records:
            args += [f"{record.seq}-0", record.event_type, record.payload]
        if not await self._script(keys=[*self._keys, LIVE], args=args):
            return False
        self._written = records[-1].seq or 0
        self._ended = ended
        return True

    async def _resync(self) -> None:
        """Once Redis answers again: write what it lacks of this session."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hget(self._keys[0], "epoch")
        pipe.xrevrange(self._keys[1], count=1)
        epoch, top = await pipe.execute()
        held = self.session.held_records()
        if epoch == self._epoch.encode():
            newest = _seq_of(top[0][0]) if top else 0
            missing = [r for r in held if (r.seq or 0) > newest]
            if not missing or await self._append(missing):
                return
        # Redis lost the session (restarted without persistence, or evicted it): write it
        # again, under a new epoch, whole.
        finals = self.session.final_records()
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(*self._keys)
        self._queue_record(pipe)
        if finals:
            pipe.rpush(self._keys[2], *(f.payload for f in finals))
        await pipe.execute()
        if held:
            await self._append(held, push_finals=False)
        log.warning(
            "session %s: Redis had lost it; wrote its record, %d finals and %d events again",
            self._id,
            len(finals),
            len(held),
        )


class Replica:
    """A session another process owns, as this process serves it: an event log numbered by
    the owner, fed from the session's Redis stream by one reader task.

    Use ``log.subscribe(since)`` exactly as on the owner.
    """

    def __init__(self, cluster: Cluster, record: SessionRecord, limits: SessionLimits) -> None:
        self._cluster = cluster
        self._redis = cluster._redis
        self.id = record.session_id
        self.record = record
        self.log = EventLog(
            record.session_id,
            ring_events=limits.ring_events,
            ring_bytes=limits.ring_bytes,
            queue_size=limits.queue_size,
            max_lag_s=limits.max_lag_s,
            max_subscribers=limits.max_subscribers,
        )
        self._last_id = b"0-0"
        self._task: asyncio.Task[None] | None = None

    @property
    def state(self) -> SessionState:
        return "closed" if self.log.closed else self.record.state

    @property
    def last_seq(self) -> int:
        return self.log.last_seq

    def subscribe(self, since: int | None = None) -> Subscription:
        """As :meth:`EventLog.subscribe`."""
        return self.log.subscribe(since)

    async def load(self) -> None:
        """Read the stream's history into the log (before anyone subscribes)."""
        entries = await self._redis.xrange(_events_key(self.id))
        self._take(entries)

    def start(self) -> None:
        if not self.log.closed:
            self._task = asyncio.create_task(self._follow(), name=f"replica-{self.id}")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _take(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        for entry_id, fields in entries:
            self.log.append(Record.frame(_seq_of(entry_id), fields[b"t"].decode(), fields[b"j"]))
            self._last_id = entry_id

    async def _read(self) -> list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]:
        """Entries after the newest this replica has, waiting up to ``_READ_BLOCK_MS``."""
        found = await self._redis.xread(
            {_events_key(self.id): self._last_id}, count=500, block=_READ_BLOCK_MS
        )
        return found or []

    async def _follow(self) -> None:
        """Read new entries until ``session_end``, or until nobody has followed for a while."""
        idle_since: float | None = None
        try:
            while not self.log.closed:
                if self.log.subscriber_count:
                    idle_since = None
                elif idle_since is None:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > _REPLICA_IDLE_S:
                    break
                entries = await self._cluster.retrying(f"replica {self.id}", self._read)
                for _stream, got in entries:
                    self._take(got)
        finally:
            self._cluster._drop_replica(self)
