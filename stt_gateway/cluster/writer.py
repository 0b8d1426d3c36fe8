"""The owner's side: every record an owned session publishes, appended to Redis in order.

One task per process writes for every owned session: each round takes what every session has
published since the last round and sends it as one Lua script call (atomic), so a busy process
makes one round trip per round, not one per event. For each session the script writes only
while Redis still holds the session's record under its writer's *epoch*: a Redis that
restarted empty is noticed at the first write after it, not silently refilled with half a
session. A session whose write failed (Redis down, or it lost the session) keeps its records
and sits out the rounds until a resync, once Redis answers, has written what Redis lacks: the
records after the newest it holds, or, when Redis lost the session, everything again under a
new epoch (its record, its whole transcript, every event its ring holds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import TYPE_CHECKING

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from ..hub import SESSION_END, Record
from .keys import LIVE, finals_key, node_key, seq_of, session_keys
from .retry import retrying

if TYPE_CHECKING:
    from ..session import Session

log = logging.getLogger(__name__)

FINAL = "final"
ROUND_S = 0.005
"""How long a writing round gathers records before it writes them (s)."""

_APPEND = """
-- Append the records of one or more sessions, each only while Redis still holds that
-- session's record under its writer's epoch. Returns 1 (written) or 0 (nothing) per session.
-- ARGV[1]: MAXLEN of a stream; ARGV[2]: retention (ms) of an ended session's keys; ARGV[3]:
-- the round, one blob (one argument to pack, not several per record): per session a line
-- "<id> <epoch> <state> <audio_seconds> <ended 0/1> <push_finals 0/1> <first seq> <n>", then
-- n records, each a line "<type> <bytes>" and that many bytes of event JSON (a final is also
-- pushed to the transcript list, a summary kept in the record's "summary"). The keys are
-- named here from the session ids (stt:s:<id>…): this is one standalone Redis.
local blob, pos, out = ARGV[3], 1, {}
while pos <= #blob do
  local eol = string.find(blob, '\\n', pos, true)
  local id, epoch, state, audio, ended, push, first, n = string.match(
    string.sub(blob, pos, eol - 1), '^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%d+) (%d+)$')
  pos = eol + 1
  first, n = tonumber(first), tonumber(n)
  local record = 'stt:s:' .. id
  local events, finals = record .. ':events', record .. ':finals'
  local ok = redis.call('HGET', record, 'epoch') == epoch
  for i = 0, n - 1 do
    eol = string.find(blob, '\\n', pos, true)
    local kind, size = string.match(string.sub(blob, pos, eol - 1), '^(%S+) (%d+)$')
    local json = string.sub(blob, eol + 1, eol + tonumber(size))
    pos = eol + tonumber(size) + 1
    if ok then
      redis.call('XADD', events, 'MAXLEN', '~', ARGV[1], (first + i) .. '-0', 't', kind, 'j', json)
      if push == '1' and kind == 'final' then redis.call('RPUSH', finals, json) end
      if kind == 'summary' then redis.call('HSET', record, 'summary', json) end
    end
  end
  if ok then
    redis.call('HSET', record, 'state', state, 'audio_seconds', audio, 'last_seq', first + n - 1)
    if ended == '1' then
      redis.call('SREM', 'stt:live', id)
      redis.call('PEXPIRE', record, ARGV[2])
      redis.call('PEXPIRE', events, ARGV[2])
      redis.call('PEXPIRE', finals, ARGV[2])
    end
  end
  out[#out + 1] = ok and 1 or 0
end
return out
"""


class SessionWriter:
    """One owned session's records on their way to Redis."""

    def __init__(self, session: Session, publisher: Publisher) -> None:
        self.session = session
        self.id = session.id
        self.keys = session_keys(session.id)
        self._publisher = publisher
        self.epoch = ""
        self.pending: list[Record] = []
        self.written = 0  # seq of the newest record Redis is known to hold
        self.ended = False  # session_end is written
        self.resyncing = False

    def add(self, record: Record) -> None:
        """Queue ``record`` (never blocks; the session's ring bounds what an outage holds)."""
        self.pending.append(record)
        self._publisher.mark(self)

    def part(self, records: list[Record], push_finals: bool = True) -> bytes:
        """This session's part of an append round for ``records`` (consecutive seqs, at least
        one): see the script's format."""
        s = self.session
        ended = records[-1].event_type == SESSION_END
        head = b"%s %s %s %r %d %d %d %d\n" % (
            self.id.encode(),
            self.epoch.encode(),
            b"closed" if ended else s.state.encode(),
            s.audio_seconds,
            ended,
            push_finals,
            records[0].seq or 0,
            len(records),
        )
        return head + b"".join(
            b"%s %d\n%s" % (r.event_type.encode(), len(r.payload), r.payload) for r in records
        )

    def wrote(self, records: list[Record]) -> None:
        self.written = records[-1].seq or 0
        self.ended = records[-1].event_type == SESSION_END

    def queue_record(self, pipe: aioredis.client.Pipeline, node_id: str, node_url: str) -> None:
        """Queue on ``pipe`` the session's record under a new epoch."""
        self.epoch = secrets.token_hex(8)
        s = self.session
        pipe.hset(
            self.keys[0],
            mapping={
                "owner": node_id,
                "owner_url": node_url,
                "state": s.state,
                "created_at": repr(s.created_at),
                "config": s.config.model_dump_json(),
                "audio_seconds": repr(s.audio_seconds),
                "last_seq": 0,
                "epoch": self.epoch,
            },
        )
        pipe.sadd(LIVE, self.id)


class Publisher:
    """Writes every owned session's records to Redis (module docstring).

    Args:
        redis: the shared Redis.
        node_id, node_url: this process, as the session records name their owner.
        lease_ms: this process's lease, renewed with each record written anew (after a Redis
            restart its sessions must not look lost before its next heartbeat).
        ring_events: ``MAXLEN ~`` of each session's stream.
        retention_ms: how long an ended session's keys stay.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        node_id: str,
        node_url: str,
        lease_ms: int,
        ring_events: int,
        retention_ms: int,
    ) -> None:
        self._redis = redis
        self._node_id = node_id
        self._node_url = node_url
        self._lease_ms = lease_ms
        self._ring_events = ring_events
        self._retention_ms = retention_ms
        self._script = redis.register_script(_APPEND)
        self.writers: dict[str, SessionWriter] = {}
        """The sessions owned and not yet ended (written), by id."""
        self._dirty: dict[str, SessionWriter] = {}  # with records to write, in order of need
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="redis-publisher")
        self._resyncs: set[asyncio.Task[None]] = set()

    async def own(self, session: Session) -> None:
        """Write ``session``'s record and mirror its events from now on (before its first).

        Raises:
            redis.exceptions.RedisError: Redis cannot be reached: the session is not shared.
        """
        writer = SessionWriter(session, self)
        pipe = self._redis.pipeline(transaction=True)
        writer.queue_record(pipe, self._node_id, self._node_url)
        await pipe.execute()
        session.replicate(writer.add)
        self.writers[session.id] = writer

    async def forget(self, session_id: str) -> None:
        """Remove a session that never started (its creation failed); Redis errors ignored."""
        self.writers.pop(session_id, None)
        self._dirty.pop(session_id, None)
        with contextlib.suppress(RedisError):
            pipe = self._redis.pipeline(transaction=True)
            pipe.srem(LIVE, session_id)
            pipe.delete(*session_keys(session_id))
            await pipe.execute()

    def mark(self, writer: SessionWriter) -> None:
        """``writer`` has records to write."""
        self._dirty[writer.id] = writer
        self._drained.clear()
        self._wake.set()

    async def close(self, wait_s: float) -> None:
        """Write what is pending (at most ``wait_s``), then stop."""
        if self._dirty or self._resyncs:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._drained.wait()
        for task in (self._task, *self._resyncs):
            task.cancel()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            # Let the round gather what every session publishes meanwhile: one script call
            # then carries many records (a replica's subscribers get them this much later).
            await asyncio.sleep(ROUND_S)
            self._wake.clear()
            round_ = [(w, w.pending) for w in self._dirty.values() if not w.resyncing]
            self._dirty = {k: w for k, w in self._dirty.items() if w.resyncing}
            for writer, _records in round_:
                writer.pending = []
            round_ = [(w, records) for w, records in round_ if records]
            if round_:
                try:
                    written = await self._append(round_)
                except RedisError:
                    written = [False] * len(round_)
                for (writer, records), ok in zip(round_, written, strict=True):
                    if ok:
                        writer.wrote(records)
                        if writer.ended:
                            self.writers.pop(writer.id, None)
                    else:
                        writer.pending = records + writer.pending
                        self._resync(writer)
            if not self._dirty and not self._resyncs:
                self._drained.set()

    async def _append(
        self, round_: list[tuple[SessionWriter, list[Record]]], push_finals: bool = True
    ) -> list[bool]:
        """One script call for every session of ``round_``; whether each was written."""
        blob = b"".join(writer.part(records, push_finals) for writer, records in round_)
        written = await self._script(args=[self._ring_events, self._retention_ms, blob])
        return [bool(ok) for ok in written]

    def _resync(self, writer: SessionWriter) -> None:
        writer.resyncing = True
        task = asyncio.create_task(self._resync_until_done(writer))
        self._resyncs.add(task)
        task.add_done_callback(self._resyncs.discard)

    async def _resync_until_done(self, writer: SessionWriter) -> None:
        await retrying(f"session {writer.id}", lambda: self._write_missing(writer))
        writer.resyncing = False
        writer.pending = [r for r in writer.pending if (r.seq or 0) > writer.written]
        if writer.ended:
            self.writers.pop(writer.id, None)
        if writer.pending:
            self.mark(writer)
        elif not self._dirty and len(self._resyncs) <= 1:
            self._drained.set()

    async def _write_missing(self, writer: SessionWriter) -> None:
        """Once Redis answers again: write what it lacks of ``writer``'s session."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hget(writer.keys[0], "epoch")
        pipe.xrevrange(writer.keys[1], count=1)
        epoch, top = await pipe.execute()
        held = writer.session.held_records()
        if epoch == writer.epoch.encode():
            newest = seq_of(top[0][0]) if top else 0
            missing = [r for r in held if (r.seq or 0) > newest]
            if not missing or (await self._append([(writer, missing)]))[0]:
                if missing:
                    writer.wrote(missing)
                return
        # Redis lost the session (restarted without persistence, or evicted it): write it
        # again, under a new epoch, whole.
        finals = writer.session.final_records()
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(*writer.keys)
        writer.queue_record(pipe, self._node_id, self._node_url)
        pipe.set(node_key(self._node_id), self._node_url, px=self._lease_ms)
        if finals:
            pipe.rpush(finals_key(writer.id), *(f.payload for f in finals))
        await pipe.execute()
        if held:
            await self._append([(writer, held)], push_finals=False)
            writer.wrote(held)
        log.warning(
            "session %s: Redis had lost it; wrote its record, %d finals and %d events again",
            writer.id,
            len(finals),
            len(held),
        )
