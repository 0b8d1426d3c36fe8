"""The event log with no sockets: seq, replay, fan-out, slow consumers."""

from __future__ import annotations

import asyncio
import json

import pytest

from stt_gateway.eventlog import EventLog, Record, Subscription
from stt_gateway.events import EVENT_ADAPTER, SessionEndData, SpeechStartData


def publish(log: EventLog, n: int) -> None:
    for _ in range(n):
        log.publish(SpeechStartData(timestamp=float(log.last_seq)))


async def drain(sub: Subscription) -> list[Record]:
    return [r async for r in sub]


async def test_seq_counts_from_one_and_every_subscriber_gets_the_same_json() -> None:
    log = EventLog("s1", ring_size=100, queue_size=100)
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
    log = EventLog("s1", ring_size=100, queue_size=100)
    publish(log, 5)
    sub = log.subscribe(since=3)
    publish(log, 2)
    log.publish(SessionEndData(reason="client_closed", audio_seconds=0.0))
    assert [r.seq for r in await drain(sub)] == [4, 5, 6, 7, 8]


async def test_subscribe_starts_at_the_oldest_event_the_ring_holds() -> None:
    log = EventLog("s1", ring_size=4, queue_size=100)
    publish(log, 10)
    assert [r.seq for r in log.subscribe()._backlog] == [7, 8, 9, 10]
    assert [r.seq for r in log.subscribe(since=8)._backlog] == [9, 10]
    assert list(log.subscribe(since=10)._backlog) == []


async def test_a_subscriber_that_falls_behind_is_cut_off_and_the_others_are_not() -> None:
    log = EventLog("s1", ring_size=100, queue_size=3)
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
    log = EventLog("s1", ring_size=100, queue_size=10)
    sub = log.subscribe()
    waiter = asyncio.create_task(sub.next())
    await asyncio.sleep(0)
    publish(log, 1)
    assert (await asyncio.wait_for(waiter, 1)).seq == 1


async def test_after_session_end_new_subscribers_get_the_replay_and_stop() -> None:
    log = EventLog("s1", ring_size=100, queue_size=10)
    publish(log, 2)
    log.publish(SessionEndData(reason="client_closed", audio_seconds=0.0))
    assert [r.event_type for r in await drain(log.subscribe())] == [
        "speech_start",
        "speech_start",
        "session_end",
    ]
    with pytest.raises(RuntimeError):
        publish(log, 1)
