"""Nothing lost under pressure: producers far ahead of the engine are held back (WebSocket) or
told to retry (POST) and every accepted second is transcribed; a starved engine's last words
survive the close; every limit has its documented answer."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time

import aiohttp
import pytest

from stt_gateway.app import create_app
from stt_gateway.web.common import WORKERS
from tests.audio_files import Clip, clip, clips
from tests.conftest import ServerFactory, StartGateway, direct_finals, make_settings
from tests.fakes.echo import EchoProvider
from tests.gateway_client import (
    Received,
    create_session,
    follow_sse,
    follow_ws,
    frames,
    session_info,
    wait_for_info,
)
from tests.timing import budget

ALL = Clip(
    name="all-clips",
    pcm=b"".join(c.pcm for c in clips()),
    sample_rate=16_000,
    reference=" ".join(c.reference for c in clips()),
)
"""Every shared clip back to back (~34 s of speech)."""


def expected_text(c: Clip) -> str:
    return " ".join(f.text for f in direct_finals(c))


async def test_ws_producer_far_ahead_is_held_to_the_lead_and_all_its_audio_transcribed(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    lead_s = 2.0
    gw = await start_gateway(max_audio_lead_s=lead_s)
    session = await create_session(http, gw.base)
    sid = session["session_id"]
    ws = await http.ws_connect(session["ws_url"] + "?events=false")

    async def send_unpaced() -> None:
        for frame in frames(ALL.pcm, 16_000, 100):
            await ws.send_bytes(frame)

    sender = asyncio.create_task(send_unpaced())
    peak = 0.0
    while not sender.done():  # sample the engine's backlog while the producer pushes
        peak = max(peak, (await session_info(http, gw.base, sid))["engine_backlog_s"])
        await asyncio.sleep(0.02)
    await sender
    # Close on the same socket: a DELETE could overtake the frames the gateway holds back.
    await ws.send_json({"type": "close"})
    await asyncio.wait_for(follow_ws(ws, Received()), budget(60))
    async with http.get(f"{gw.base}/sessions/{sid}/transcript") as resp:
        transcript = (await resp.json())["text"]
    print(f"\nengine backlog peak {peak:.2f} s (lead limit {lead_s} s)")
    assert peak > 0
    assert peak <= lead_s + 0.1 + 1e-6  # the limit, plus the one 100 ms frame let in at it
    assert transcript == expected_text(ALL)


async def test_post_producer_far_ahead_gets_429_and_every_accepted_chunk_is_transcribed(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(max_audio_lead_s=1.0)
    session = await create_session(http, gw.base)
    refused = 0
    octets = {"Content-Type": "application/octet-stream"}
    for chunk in frames(ALL.pcm, 16_000, 500):
        while True:
            async with http.post(session["audio_url"], data=chunk, headers=octets) as resp:
                if resp.status == 202:
                    break
                assert resp.status == 429
                assert (await resp.json())["error"]["code"] == "audio_lead_exceeded"
                assert int(resp.headers["Retry-After"]) >= 1
                refused += 1
            await asyncio.sleep(0.05)  # sooner than Retry-After: a hint, and this is a test
    async with http.delete(f"{gw.base}/sessions/{session['session_id']}") as resp:
        transcript = (await resp.json())["transcript"]
    print(f"\n{refused} chunks refused with 429 and sent again")
    assert refused > 0
    assert transcript == expected_text(ALL)


async def test_a_starved_engine_worker_still_leaves_the_words_its_interims_showed(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(engine_processes=1, close_timeout_s=1.0)
    speech = clip("librivox-sns-0870")
    session = await create_session(http, gw.base)
    sid = session["session_id"]
    got = Received()
    reader = asyncio.create_task(follow_sse(http, session["stream_url"], got))
    ws = await http.ws_connect(session["ws_url"] + "?events=false")
    cut = len(speech.pcm) * 2 // 3 // 2 * 2  # mid-utterance: no endpoint closes it
    for frame in frames(speech.pcm[:cut], 16_000):
        await ws.send_bytes(frame)
    await wait_for_info(  # every byte recognised, so the interims are current
        http,
        gw.base,
        sid,
        lambda i: i["engine_backlog_s"] == 0 and i["audio_seconds"] >= cut / 32_000 - 1e-3,
    )
    (pid,) = gw.app[WORKERS].pids
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # the engine gets no CPU at all
    try:
        async with http.delete(f"{gw.base}/sessions/{sid}") as resp:
            transcript = (await resp.json())["transcript"]
        await asyncio.wait_for(reader, budget(30))
    finally:
        os.kill(pid, signal.SIGCONT)
    last_interim = got.of_type("token")[-1]["data"]["text"]
    salvaged = got.of_type("final")[-1]["data"]
    assert salvaged["source"] == "interim"
    assert salvaged["text"] == last_interim
    assert transcript.endswith(last_interim)
    errors = got.of_type("error")
    assert [e["data"]["code"] for e in errors] == ["engine_timeout"]
    assert "last interim" in errors[0]["data"]["message"]
    assert got.logged[-1]["data"]["reason"] == "client_closed"
    async with http.get(f"{gw.base}/sessions/{sid}/transcript") as resp:
        assert (await resp.json())["segments"][-1]["source"] == "interim"


async def test_close_waits_for_an_engine_that_is_slow_but_progressing(
    aiohttp_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    # 0.3 s per job, 0.5 s without progress allowed: ten jobs (3 s) finish all the same.
    app = create_app(
        make_settings(
            engine_processes=1, close_timeout_s=0.5, max_audio_lead_s=100.0, default_engine="echo"
        ),
        providers=lambda r: {"echo": EchoProvider(r.workers)},
    )
    base = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    session = await create_session(http, base, {"model": "slow"})
    ws = await http.ws_connect(session["ws_url"])
    got = Received()
    reader = asyncio.create_task(follow_ws(ws, got))
    frame = b"\0\0" * 32_000  # 64,000 bytes: one job each (the batch size)
    await ws.send_bytes(frame)
    await wait_for_info(http, base, session["session_id"], lambda i: i["last_seq"] >= 1)
    for _ in range(9):  # the worker is up (a token came): from here on it only works slowly
        await ws.send_bytes(frame)
    await ws.send_json({"type": "close"})
    await asyncio.wait_for(reader, budget(30))
    assert got.of_type("error") == [], [e["data"] for e in got.of_type("error")]
    assert got.of_type("final")[-1]["data"]["text"] == f"{10 * len(frame)} bytes"
    assert "source" not in got.of_type("final")[-1]["data"]


async def test_subscribers_past_the_limit_get_503_until_one_leaves(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(max_subscribers=2)
    session = await create_session(http, gw.base)
    first = await http.ws_connect(session["ws_url"])
    second_got = Received()
    second = asyncio.create_task(follow_sse(http, session["stream_url"], second_got))
    await wait_for_info(http, gw.base, session["session_id"], lambda i: i["subscribers"] == 2)
    async with http.get(session["stream_url"]) as resp:
        assert resp.status == 503
        assert (await resp.json())["error"]["code"] == "too_many_subscribers"
        assert int(resp.headers["Retry-After"]) >= 1
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(session["ws_url"])
    assert refused.value.status == 503
    # A producer that reads nothing is no subscriber: it is let in and heard.
    producer = await http.ws_connect(session["ws_url"] + "?events=false")
    await producer.send_bytes(clip("goforward").pcm)
    await first.close()
    await wait_for_info(http, gw.base, session["session_id"], lambda i: i["subscribers"] == 1)
    third = await http.ws_connect(session["ws_url"])
    third_got = Received()
    third_reader = asyncio.create_task(follow_ws(third, third_got))
    await producer.send_json({"type": "close"})
    await asyncio.wait_for(asyncio.gather(second, third_reader), budget(30))
    await producer.close()
    for got in (second_got, third_got):
        assert got.finals_text() == expected_text(clip("goforward"))


async def test_a_session_past_its_longest_duration_is_warned_then_ended(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(max_session_s=1.0)
    session = await create_session(http, gw.base)
    got = Received()
    await asyncio.wait_for(follow_sse(http, session["stream_url"], got), budget(30))
    assert [e["event_type"] for e in got.logged] == ["error", "session_end"]
    assert got.logged[0]["data"]["code"] == "max_duration_soon"
    assert got.logged[1]["data"]["reason"] == "max_duration"


def slowloris(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    return sock


def closed_by_server(sock: socket.socket, within_s: float) -> bool:
    """Trickle header bytes (one per 0.1 s) until the server closes the socket."""
    deadline = time.monotonic() + within_s
    sock.settimeout(0.1)
    try:
        while time.monotonic() < deadline:
            try:
                if sock.recv(1024) == b"":
                    return True
            except TimeoutError:
                pass
            sock.sendall(b"X")
    except (ConnectionResetError, BrokenPipeError):
        return True
    finally:
        sock.close()
    return False


async def test_slow_header_clients_are_closed_while_a_real_stream_goes_on(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gw = await start_gateway(header_timeout_s=1.0)
    port = int(gw.base.rsplit(":", 1)[1])
    socks = [slowloris(port) for _ in range(50)]
    speech = clip("librivox-sns-0880")
    session = await create_session(http, gw.base)
    async with http.post(
        session["audio_url"], data=speech.pcm, headers={"Content-Type": "application/octet-stream"}
    ) as resp:
        assert resp.status == 202
    closed = await asyncio.gather(*(asyncio.to_thread(closed_by_server, s, 30) for s in socks))
    async with http.delete(f"{gw.base}/sessions/{session['session_id']}") as resp:
        assert (await resp.json())["transcript"] == expected_text(speech)
    assert all(closed)


def rss_mb(pid: int | None) -> float:
    """Resident set size (MB) of process ``pid``, from ``/proc``."""
    assert pid is not None
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


async def test_engine_memory_follows_active_streams_not_created_sessions(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    # A decoder is ~95 MB and a VAD ~10 MB: 20 silent sessions holding one each would add
    # ~2 GB to the worker; four streams' decoders must be freed once idle past the setting.
    gw = await start_gateway(engine_processes=1, engine_idle_release_s=0.5)
    workers = gw.app[WORKERS]
    workers.start()
    await workers.ready()
    (pid,) = workers.pids
    baseline = rss_mb(pid)
    silent = [await create_session(http, gw.base) for _ in range(20)]
    speech = clips()[:4]

    async def stream(c: Clip) -> str:
        session = await create_session(http, gw.base)
        ws = await http.ws_connect(session["ws_url"] + "?events=false")
        for frame in frames(c.pcm, 16_000, 100):
            await ws.send_bytes(frame)
        await ws.close()
        async with http.delete(f"{gw.base}/sessions/{session['session_id']}") as resp:
            return str((await resp.json())["transcript"])

    # The worker serves requests in order: once these streams are done, so are the silent
    # sessions' stream opens before them.
    transcripts = await asyncio.gather(*(stream(c) for c in speech))
    busy = after = rss_mb(pid) - baseline
    async with asyncio.timeout(budget(30)):
        while after > 50:
            await asyncio.sleep(0.1)
            after = rss_mb(pid) - baseline
    print(
        f"\nworker RSS {baseline:.0f} MB at start; +{busy:.0f} MB after 4 streams beside 20 "
        f"silent sessions; +{after:.0f} MB once idle"
    )
    assert transcripts == [expected_text(c) for c in speech]
    for s in silent:  # the silent sessions were open all along
        async with http.delete(f"{gw.base}/sessions/{s['session_id']}") as resp:
            assert resp.status == 200
