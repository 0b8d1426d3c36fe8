"""A slow engine stream delays only its own session."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import aiohttp
from aiohttp.test_utils import TestServer

from stt_gateway.app import create_app
from tests.conftest import ServerFactory, make_settings
from tests.fakes import EchoProvider
from tests.gateway_client import Received, create_session, follow_ws


async def test_a_slow_session_does_not_delay_another(
    aiohttp_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    with ThreadPoolExecutor(2) as executor:
        app = create_app(
            make_settings(engine_threads=2), providers={"local": EchoProvider(executor)}
        )
        server: TestServer = await aiohttp_server(app)
        base = str(server.make_url("")).rstrip("/")
        slow = await create_session(http, base, {"model": "slow"})
        fast = await create_session(http, base, {"model": "fast"})
        slow_ws = await http.ws_connect(slow["ws_url"])
        fast_ws = await http.ws_connect(fast["ws_url"])
        slow_got, fast_got = Received(), Received()
        readers = [asyncio.create_task(follow_ws(slow_ws, slow_got))]
        for _ in range(5):  # ≥ 0.3 s of engine work each time it is picked up
            await slow_ws.send_bytes(b"\0\0" * 320)
            await asyncio.sleep(0.05)
        sent = time.monotonic()
        await fast_ws.send_bytes(b"\0\0" * 320)
        first = await asyncio.wait_for(fast_ws.receive_json(), 5)
        fast_latency = time.monotonic() - sent
        assert first["event_type"] == "token"
        fast_got.add(first)
        readers.append(asyncio.create_task(follow_ws(fast_ws, fast_got)))
        for ws in (slow_ws, fast_ws):
            await ws.send_json({"type": "close"})
        await asyncio.wait_for(asyncio.gather(*readers), 10)
    print(f"\nfast session's token {fast_latency * 1000:.0f} ms after its audio")
    assert fast_latency < 0.2
    assert slow_got.of_type("token")[-1]["data"]["text"] == f"{5 * 640} bytes"
    assert slow_got.arrived[-1] > fast_got.arrived[0]
