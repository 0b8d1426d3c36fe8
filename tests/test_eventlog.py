"""The event log with no sockets: seq, replay, fan-out, slow consumers."""

from __future__ import annotations

import asyncio
import gc
import json

import pytest

from stt_gateway.eventlog import EventLog
from stt_gateway.events import (
    EVENT_ADAPTER,
    FinalData,
    SessionEndData,
    SpeechStartData,
    SummaryData,
    SummaryTokenData,
    TokenData,
)
from stt_gateway.hub import Record, Subscription
from tests.timing import budget


def make_log(ring_events: int = 100, ring_bytes: int = 10**6, queue_size: int = 100) -> EventLog:
    return EventLog("s1", ring_events=ring_events, ring_bytes=ring_bytes, queue_size=queue_size)


def publish(log: EventLog, n: int) -> None:
    for _ in range(n):
        log.publish(SpeechStartData(timestamp=float(log.last_seq)))


async def drain(sub: Subscription) -> list[Record]:
    return [r async for r in sub]


async def test_seq_counts_from_one_and_every_subscriber_gets_the_same_json() -> None:
    log = make_log()
    a, b = log.subscribe(), log.subscribe()
    publish(log, 3)
    log.publish(SessionEndData(reason="client_closed", audio_seconds=1.0))
    got_a, got_b = await drain(a), await drain(b)
    assert [r.seq for r in got_a] == [1, 2, 3, 4]
    assert got_a == got_b
    event = EVENT_ADAPTER.validate_json(got_a[0].json)
    assert (event.event_type, event.seq, event.session_id) == ("speech_start", 1, "s1")
    assert log.subscriber_count == 0


async def test_subscribe_since_replays_the_rest_then_goes_live_without_gap_or_duplicate() -> None:
    log = make_log()
    publish(log, 5)
    sub = log.subscribe(since=3)
    publish(log, 2)
    log.publish(SessionEndData(reason="client_closed", audio_seconds=0.0))
    assert [r.seq for r in await drain(sub)] == [4, 5, 6, 7, 8]


async def test_a_replica_behind_the_resume_position_gives_only_the_events_after_it() -> None:
    # The owner's log, and a replica that has only its first three events when a client
    # resumes on it from seq 5 (read from the owner): 4 and 5 must not reach the client again.
    owner = make_log()
    publish(owner, 7)
    owner.publish(SessionEndData(reason="client_closed", audio_seconds=0.0))
    records = [Record._make(kept) for kept in owner.held()]
    replica = make_log()
    for record in records[:3]:
        replica.append(record)
    sub = replica.subscribe(since=5)
    for record in records[3:]:
        replica.append(record)
    assert [r.seq for r in await drain(sub)] == [6, 7, 8]
    # Resumed past session_end on a replica that has not read it yet: nothing, and the
    # subscription still ends with the session.
    late = make_log()
    late.append(records[0])
    sub = late.subscribe(since=8)
    for record in records[1:]:
        late.append(record)
    assert await asyncio.wait_for(drain(sub), budget(1)) == []


async def test_a_subscriber_behind_during_a_summary_gets_its_pieces_joined_and_none_lost() -> None:
    log = make_log(queue_size=4)  # pieces are joined past 2 pending
    slow = log.subscribe()  # reads nothing until the end
    pieces = [f"piece{i} " for i in range(12)]
    for piece in pieces:
        log.publish(SummaryTokenData(text=piece))
    log.publish(SummaryData(text="".join(pieces), model="m"))
    log.publish(SessionEndData(reason="client_closed", audio_seconds=0.0))
    got = await drain(slow)
    assert [r.seq for r in got] == [1, 12, 13, 14]  # pieces 2–12 joined, under the newest seq
    assert [r.event_type for r in got] == ["summary_token"] * 2 + ["summary", "session_end"]
    assert slow.coalesced == 10
    texts = [json.loads(r.payload)["data"]["text"] for r in got[:2]]
    assert "".join(texts) == "".join(pieces)  # nothing of the summary lost
    assert got[2:] == log.held()[-2:]  # the summary itself is never coalesced


async def test_subscribe_starts_at_the_oldest_event_the_ring_holds() -> None:
    log = make_log(ring_events=4)
    publish(log, 10)
    assert [r.seq for r in log.subscribe()._backlog] == [7, 8, 9, 10]
    assert [r.seq for r in log.subscribe(since=8)._backlog] == [9, 10]
    assert list(log.subscribe(since=10)._backlog) == []


async def test_a_subscriber_that_falls_behind_is_cut_off_and_the_others_are_not() -> None:
    log = make_log(queue_size=3)
    slow, fast = log.subscribe(), log.subscribe()
    received: list[int | None] = []
    for _ in range(6):
        publish(log, 1)
        received.append((await fast.next()).seq)
    cut = await slow.next()
    assert cut.seq is None
    assert json.loads(cut.json)["data"]["code"] == "slow_consumer"
    with pytest.raises(StopAsyncIteration):
        await slow.next()
    assert received == [1, 2, 3, 4, 5, 6]
    assert log.subscriber_count == 1


async def test_a_reader_waiting_on_an_empty_queue_wakes_for_a_new_event() -> None:
    log = make_log(queue_size=10)
    sub = log.subscribe()
    waiter = asyncio.create_task(sub.next())
    await asyncio.sleep(0)
    publish(log, 1)
    assert (await asyncio.wait_for(waiter, budget(1))).seq == 1


async def test_after_session_end_new_subscribers_get_the_replay_and_stop() -> None:
    log = make_log(queue_size=10)
    publish(log, 2)
    log.publish(SessionEndData(reason="client_closed", audio_seconds=0.0))
    assert [r.event_type for r in await drain(log.subscribe())] == [
        "speech_start",
        "speech_start",
        "session_end",
    ]
    with pytest.raises(RuntimeError):
        publish(log, 1)


def token(text: str) -> TokenData:
    return TokenData(text=text, confidence=0.0, start=0.0, end=1.0)


async def test_a_lagging_subscriber_gets_interims_coalesced_but_every_final() -> None:
    log = make_log(queue_size=5)  # coalesces past 2 pending
    lagging, keeping_up = log.subscribe(), log.subscribe()
    seen: list[int | None] = []
    for i in range(10):
        log.publish(token(f"t{i}"))
        seen.append((await keeping_up.next()).seq)
    log.publish(FinalData(text="t9", confidence=1.0, start=0, end=1, words=[], speech_final=True))
    log.publish(token("next"))
    log.publish(SessionEndData(reason="client_closed", audio_seconds=1.0))
    got = await drain(lagging)
    assert [json.loads(r.json)["data"].get("text") for r in got] == ["t0", "t9", "t9", "next", None]
    assert lagging.coalesced == 8
    assert seen == list(range(1, 11))  # the one keeping up got every interim


async def test_resume_from_a_seq_the_ring_dropped_starts_with_replay_gap() -> None:
    log = make_log(ring_events=4)
    publish(log, 10)
    got = log.subscribe(since=2)._backlog
    gap = json.loads(got[0].json)
    assert (got[0].seq, gap["data"]["code"]) == (None, "replay_gap")
    assert "replay starts at 7" in gap["data"]["message"]
    assert [r.seq for r in list(got)[1:]] == [7, 8, 9, 10]
    assert [r.seq for r in log.subscribe(since=6)._backlog] == [7, 8, 9, 10]


async def test_the_ring_is_bounded_in_bytes_too() -> None:
    one = len(make_event_json())
    log = make_log(ring_events=1000, ring_bytes=5 * one)
    publish(log, 20)
    events, size = log.ring_size
    assert 4 <= events <= 5  # event sizes differ by a few bytes (digits of seq and time)
    assert size <= 5 * one
    assert log.first_held_seq == 20 - events + 1


async def test_resuming_a_finished_session_at_its_end_ends_at_once() -> None:
    log = make_log()
    publish(log, 2)
    log.publish(SessionEndData(reason="client_closed", audio_seconds=0.0))
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(log.subscribe(since=3).next(), budget(1))


def make_event_json() -> str:
    log = make_log()
    log.publish(SpeechStartData(timestamp=0.0))
    return log.subscribe()._backlog[0].json


class _Socket:
    """A sink with a send buffer that is full while ``full`` is set."""

    def __init__(self) -> None:
        self.written: list[int | None] = []
        self.full = False

    def write_now(self, record: Record) -> bool:
        if self.full:
            return False
        self.written.append(record.seq)
        return True


async def test_a_keeping_up_subscriber_gets_records_through_its_sink_in_order_and_once() -> None:
    log = make_log(queue_size=100)
    publish(log, 2)  # replayed through the reader, never the sink
    sub, socket = log.subscribe(), _Socket()
    sub.attach(socket)
    read: list[int | None] = []

    async def reader() -> None:
        async for record in sub:
            read.append(record.seq)
            await asyncio.sleep(0)  # a write that takes a moment

    task = asyncio.create_task(reader())
    await asyncio.sleep(0.01)  # replay read, reader parked
    publish(log, 3)  # 3, 4, 5 straight to the socket
    socket.full = True
    publish(log, 2)  # 6, 7 queued: the buffer is full
    socket.full = False
    publish(log, 1)  # 8 queued behind them although the socket has room again
    await asyncio.sleep(0.01)
    publish(log, 1)  # 9: the reader is parked again, so straight to the socket
    log.publish(SessionEndData(reason="client_closed", audio_seconds=1.0))
    await asyncio.wait_for(task, budget(1))
    assert read == [1, 2, 6, 7, 8]
    assert socket.written == [3, 4, 5, 9, 10]
    assert log.subscriber_count == 0


async def test_the_ring_holds_nothing_the_garbage_collector_walks() -> None:
    log = make_log(ring_events=50)
    publish(log, 100)
    gc.collect()
    assert not any(gc.is_tracked(kept) for kept in log._ring)


@pytest.mark.parametrize(
    ("size", "length_field"),
    [
        (10, b"\x0a"),
        (125, b"\x7d"),
        (126, b"\x7e\x00\x7e"),  # 126: a 16-bit length follows
        (65_535, b"\x7e\xff\xff"),
        (65_536, b"\x7f" + (65_536).to_bytes(8, "big")),  # 127: a 64-bit length follows
    ],
)
def test_the_frames_carry_the_payload_as_rfc_6455_and_rfc_9112_say(
    size: int, length_field: bytes
) -> None:
    payload = b"x" * size
    record = Record.frame(7, "final", payload)
    assert record.ws == b"\x81" + length_field + payload  # FIN + text, unmasked
    event = b"id: 7\r\ndata: " + payload + b"\r\n\r\n"
    assert record.sse == f"{len(event):x}\r\n".encode() + event + b"\r\n"  # one chunk
    assert record.payload == payload
