"""A session's subscribers in this process: each one's view, the fan-out, and the policies
that keep one slow reader from costing anyone else.

A :class:`Record` is one event framed once for the wire (its ``seq``, type, SSE chunk and
WebSocket frame); the same bytes go to every subscriber. Delivering never awaits. A subscriber
whose connection gave its :class:`Sink` and whose writer is idle gets each live record written
straight to its socket while the socket's send buffer is below its bound: no task wakes up.
Otherwise the record waits in the subscriber's own bounded queue for its writer task. When a
subscriber falls behind, its pending interims are coalesced (a new ``token`` replaces a pending
``token`` of the same utterance) and so are a summary's pieces (consecutive ``summary_token``s
become one with both texts); finals, the ``summary`` and control events are never dropped.
Past the hard limits — too many events pending, or the oldest pending one too old — the
subscriber is cut off with a ``slow_consumer`` error and may come back with the last ``seq``
it saw.

The :class:`Hub` knows nothing of ``seq`` assignment or replay: the event log
(:mod:`stt_gateway.eventlog`) numbers and keeps the records and hands each new one to its hub,
and a subscriber joins with the backlog the log gave it. Transports see only this module.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, NamedTuple, Protocol

from .errors import TooManySubscribers
from .events import ErrorData, SummaryTokenData, encode_event

if TYPE_CHECKING:
    from .observer import SessionObserver


class Record(NamedTuple):
    """One published event, framed for the wire once.

    Attributes:
        seq: its ``seq``; ``None`` for an error meant for one subscriber only.
        event_type: ``token``, ``final``, … (``docs/api.md`` § Events out).
        sse: the whole SSE event (``id: <seq>`` and ``data: <json>`` lines, CRLF-separated as
            aiohttp-sse writes them) as one HTTP/1.1 chunk (RFC 9112 §7.1): bytes for the socket.
        ws: the event JSON as one unmasked, uncompressed WebSocket text frame (RFC 6455 §5.2).
    """

    seq: int | None
    event_type: str
    sse: bytes
    ws: bytes

    @property
    def payload(self) -> bytes:
        """The event JSON, UTF-8."""
        size = self.ws[1]
        return self.ws[2 if size < 126 else 4 if size == 126 else 10 :]

    @property
    def json(self) -> str:
        """The event JSON as text (what a client receives)."""
        return self.payload.decode()

    @classmethod
    def frame(cls, seq: int | None, event_type: str, payload: bytes) -> Record:
        """Frame ``payload`` (the event JSON, UTF-8) for SSE and WebSocket."""
        if seq is None:
            event = b"data: %b\r\n\r\n" % payload
        else:
            event = b"id: %d\r\ndata: %b\r\n\r\n" % (seq, payload)
        size = len(payload)
        if size < 126:
            header = struct.pack("!BB", 0x81, size)
        elif size < 1 << 16:
            header = struct.pack("!BBH", 0x81, 126, size)
        else:
            header = struct.pack("!BBQ", 0x81, 127, size)
        return cls(seq, event_type, b"%x\r\n%b\r\n" % (len(event), event), header + payload)


class Sink(Protocol):
    """A subscriber's connection, written to directly while it keeps up."""

    def write_now(self, record: Record) -> bool:
        """Write ``record`` at once if the connection's send buffer is below its bound.

        Returns:
            whether it was written; ``False`` writes nothing (the record is then queued).
        """
        ...


SESSION_END = "session_end"
TOKEN = "token"
SUMMARY_TOKEN = "summary_token"


class Subscription:
    """One subscriber's view of a log: a replayed backlog, then live records.

    Iterate with ``async for``, or call :meth:`next_or_idle` to learn of idle periods (an SSE
    heartbeat); iteration ends after the ``session_end`` record, or after a ``slow_consumer``
    error record (seq ``None``) when the subscriber fell too far behind. A transport that can
    write frames itself gives its :class:`Sink` with :meth:`attach`: live records then skip the
    queue and the reader's wake-up while it keeps up.

    Args:
        hub: the hub delivering to it.
        backlog: records replayed before the live ones.
        after: live records with a ``seq`` at or below this are skipped (the subscriber
            already has them: it resumed from a position its log had not reached yet, as a
            replica behind the owner it last read from can be).
        limit: live records pending before the subscriber is cut off.
        coalesce_after: live records pending before interims are coalesced.
        max_lag_s: age (s) of the oldest pending live record past which it is cut off.
    """

    def __init__(
        self,
        hub: Hub,
        backlog: list[Record],
        after: int,
        limit: int,
        coalesce_after: int,
        max_lag_s: float,
    ) -> None:
        self._hub = hub
        self._after = after
        # Replayed records, read from _replayed on; the list is dropped once read. No deques
        # until needed: an empty deque takes ~760 B, and most subscribers never queue.
        self._backlog = backlog
        self._replayed = 0
        # (monotonic s queued, record), made when a record first has to wait.
        self._live: deque[tuple[float, Record]] | None = None
        self._limit = limit
        self._max_lag_s = max_lag_s
        self._coalesce_after = coalesce_after
        self._waiter: asyncio.Future[None] | None = None
        self._sink: Sink | None = None
        self._last_out = time.monotonic()  # when a record last went out (s, monotonic)
        self._cut: Record | None = None
        self._ended = False
        self.coalesced = 0
        """Interims replaced by a newer one before this subscriber read them."""

    @property
    def pending(self) -> int:
        """Records waiting to be read (backlog and live)."""
        return len(self._backlog) - self._replayed + len(self._live or ())

    def attach(self, sink: Sink) -> None:
        """Let live records go straight to ``sink`` whenever this subscriber's reader is
        waiting with nothing pending (so order is kept); call once the connection is ready."""
        self._sink = sink

    def _offer(self, record: Record, now: float) -> bool:
        """Deliver a live record without waiting; ``False`` when past a hard limit."""
        if record.seq is not None and record.seq <= self._after:
            if record.event_type == SESSION_END:
                self._wake()  # nothing more will come: the reader ends (hub closed)
            return True
        waiter = self._waiter
        if (
            waiter is not None
            and self._sink is not None
            and not waiter.done()
            and self._sink.write_now(record)
        ):
            # The reader is parked with nothing pending, so nothing can be ahead of this
            # record: it is on the socket with no task woken.
            self._last_out = now
            if record.event_type == SESSION_END:
                self.close()
            return True
        live = self._live
        if live is None:
            live = self._live = deque()
        elif live and now - live[0][0] > self._max_lag_s:
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
        elif (
            record.event_type == SUMMARY_TOKEN
            and len(live) >= self._coalesce_after
            and live[-1][1].event_type == SUMMARY_TOKEN
        ):
            # A summary's pieces are deltas: the pending one and this one become one piece
            # with both texts (under this one's seq), so nothing of the summary is lost.
            live[-1] = (live[-1][0], self._hub.joined(live[-1][1], record))
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
        """The next record.

        Raises:
            StopAsyncIteration: the subscription has ended.
        """
        record = await self.next_or_idle(None)
        assert record is not None  # no idle limit, so never idle
        return record

    async def next_or_idle(self, idle_s: float | None) -> Record | None:
        """The next record, or ``None`` once nothing has gone out for ``idle_s`` seconds
        (records written through the sink count). Cancel-safe.

        Raises:
            StopAsyncIteration: the subscription has ended.
        """
        loop = asyncio.get_running_loop()
        while True:
            if self._ended:
                raise StopAsyncIteration
            if self._cut is not None:
                record = self._cut
            elif self._backlog:
                record = self._backlog[self._replayed]
                self._replayed += 1
                if self._replayed == len(self._backlog):
                    self._backlog, self._replayed = [], 0
            elif self._live:
                record = self._live.popleft()[1]
            elif self._hub.closed:
                self.close()  # everything up to session_end was already read
                continue
            else:
                now = loop.time()  # time.monotonic(), the clock _offer stamps with
                if idle_s is not None and now - self._last_out >= idle_s:
                    self._last_out = now
                    return None
                waiter = self._waiter = loop.create_future()
                # One timer per wait, not per record: while the sink takes every record,
                # this reader sleeps and the timer fires only when the stream is idle.
                timer = (
                    None
                    if idle_s is None
                    else loop.call_at(self._last_out + idle_s, _resolve, waiter)
                )
                try:
                    await waiter
                finally:
                    self._waiter = None
                    if timer is not None:
                        timer.cancel()
                continue
            if record is self._cut or record.event_type == SESSION_END:
                self.close()
            self._last_out = loop.time()
            return record

    def __aiter__(self) -> AsyncIterator[Record]:
        return self

    async def __anext__(self) -> Record:
        return await self.next()

    def close(self) -> None:
        """Stop receiving (idempotent); the transport calls this when its peer leaves."""
        self._ended = True
        self._hub._unsubscribe(self)
        self._wake()


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Hub:
    """Fans each record out to every :class:`Subscription` of one session in this process.

    Args:
        session_id: the session's id (its errors name it).
        session_id_json: the id as a JSON string literal (quotes included).
        queue_size: live events a subscriber may have pending before it is cut off; past a
            half of it, its pending interims are coalesced.
        max_lag_s: a subscriber whose oldest pending event is older than this is cut off.
        max_subscribers: subscribers at once.
        observer: told of every coalesced interim and cut (metrics).
    """

    def __init__(
        self,
        session_id: str,
        session_id_json: bytes,
        *,
        queue_size: int,
        max_lag_s: float,
        max_subscribers: int,
        observer: SessionObserver | None,
    ) -> None:
        self.session_id = session_id
        self._session_id_json = session_id_json
        self._queue_size = queue_size
        self._max_lag_s = max_lag_s
        self._max_subscribers = max_subscribers
        self._observer = observer
        self._subscribers: set[Subscription] = set()
        # _subscribers as a tuple, rebuilt at the first delivery after a change: delivery
        # iterates a snapshot (a subscriber may leave during it) without copying the set.
        self._fanout: tuple[Subscription, ...] | None = ()
        self.closed = False
        """True once ``session_end`` has been delivered."""

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def deliver(self, record: Record) -> None:
        """Offer ``record`` (the session's next) to every subscriber; cut off those past
        their limits."""
        if record.event_type == SESSION_END:
            self.closed = True
        now = time.monotonic()
        fanout = self._fanout
        if fanout is None:
            fanout = self._fanout = tuple(self._subscribers)
        for sub in fanout:
            coalesced = sub.coalesced
            if not sub._offer(record, now):
                self._drop_slow(sub)
            elif sub.coalesced != coalesced and self._observer is not None:
                self._observer.dropped("coalesced")

    def join(self, backlog: list[Record], after: int = 0) -> Subscription:
        """A subscription that reads ``backlog`` first, then every record delivered from now
        whose ``seq`` is above ``after`` (errors without seq always).

        Raises:
            TooManySubscribers: ``max_subscribers`` are subscribed already.
        """
        if len(self._subscribers) >= self._max_subscribers and not self.closed:
            raise TooManySubscribers(
                f"session {self.session_id} has its limit of {self._max_subscribers} "
                f"subscribers; try again when one leaves"
            )
        sub = Subscription(
            self, backlog, after, self._queue_size, max(1, self._queue_size // 2), self._max_lag_s
        )
        if not self.closed:
            self._subscribers.add(sub)
            self._fanout = None
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subscribers:
            self._subscribers.discard(sub)
            self._fanout = None

    def _drop_slow(self, sub: Subscription) -> None:
        self._unsubscribe(sub)
        if self._observer is not None:
            self._observer.dropped("slow_consumer")
        sub._cut_off(
            self.error(
                "slow_consumer",
                f"this subscriber fell {self._queue_size} events behind and was cut off; "
                f"reconnect with the last seq it received to resume",
            )
        )

    def joined(self, first: Record, then: Record) -> Record:
        """One ``summary_token`` record with the text of ``first`` then ``then`` (consecutive
        pieces), under ``then``'s seq: for one subscriber that fell behind."""
        text = json.loads(first.payload)["data"]["text"] + json.loads(then.payload)["data"]["text"]
        payload = encode_event(
            SummaryTokenData(text=text), seq=then.seq, session_id_json=self._session_id_json
        )
        return Record.frame(then.seq, SUMMARY_TOKEN, payload)

    def error(self, code: str, message: str) -> Record:
        """An ``error`` record for subscribers only: not in the log, no seq."""
        data = ErrorData(code=code, message=message)
        return Record.frame(
            None, "error", encode_event(data, seq=None, session_id_json=self._session_id_json)
        )
