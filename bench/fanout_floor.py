"""The fan-out floor: a bare aiohttp server that does only what fan-out must.

It answers the four calls ``bench/fanout.py`` makes of a gateway (create a session, count its
subscribers, POST audio, DELETE) for one session, and for each POSTed chunk writes one event
of the gateway's size, framed once, to every subscriber's transport — no session, no engine,
no log, no queues, no back-pressure. What ``fanout.py`` measures against it is what this box,
aiohttp's server and the subscriber processes cost by themselves; the gateway's row beside it
is that plus the gateway.

Run: ``python bench/fanout_floor.py --port 8001`` (``fanout.py`` starts it itself).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import sys
import time
from pathlib import Path

from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import raise_fd_limit  # noqa: E402

SESSION = "floor"
_TEXT = "the quick brown fox jumps over the lazy dog"  # the instant engine's interim
BYTES_PER_S = 32_000  # PCM16 at 16 kHz


class Floor:
    """The one session's subscribers and audio position."""

    def __init__(self) -> None:
        self.sse: set[asyncio.Transport] = set()
        self.ws: set[asyncio.Transport] = set()
        self.audio_bytes = 0
        self.seq = 0
        self.ended = asyncio.Event()

    def publish(self, event_type: str, data: dict[str, object]) -> None:
        self.seq += 1
        payload = json.dumps(
            {
                "event_type": event_type,
                "seq": self.seq,
                "session_id": SESSION,
                "timestamp": time.time(),
                "data": data,
            },
            separators=(",", ":"),
        ).encode()
        sse = b"id: %d\r\ndata: %b\r\n\r\n" % (self.seq, payload)
        sse = b"%x\r\n%b\r\n" % (len(sse), sse)  # one HTTP/1.1 chunk
        ws = _ws_text_frame(payload)
        for transport in self.sse:
            transport.write(sse)
        for transport in self.ws:
            transport.write(ws)


def _ws_text_frame(payload: bytes) -> bytes:
    """An unmasked WebSocket text frame (RFC 6455 §5.2)."""
    if len(payload) < 126:
        return struct.pack("!BB", 0x81, len(payload)) + payload
    if len(payload) < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, len(payload)) + payload
    return struct.pack("!BBQ", 0x81, 127, len(payload)) + payload


FLOOR = web.AppKey("floor", Floor)


async def create(request: web.Request) -> web.Response:
    base = f"http://{request.host}"
    return web.json_response(
        {
            "session_id": SESSION,
            "stream_url": f"{base}/stream",
            "ws_url": f"ws://{request.host}/ws",
            "audio_url": f"{base}/audio",
        }
    )


async def info(request: web.Request) -> web.Response:
    floor = request.app[FLOOR]
    return web.json_response({"subscribers": len(floor.sse) + len(floor.ws)})


async def audio(request: web.Request) -> web.Response:
    floor = request.app[FLOOR]
    floor.audio_bytes += len(await request.read())
    end = floor.audio_bytes / BYTES_PER_S
    floor.publish("token", {"text": _TEXT, "confidence": 0.9, "start": 0.0, "end": end})
    return web.json_response({"accepted": True}, status=202)


async def end(request: web.Request) -> web.Response:
    floor = request.app[FLOOR]
    audio_s = floor.audio_bytes / BYTES_PER_S
    floor.publish("session_end", {"reason": "client_closed", "audio_seconds": audio_s})
    floor.ended.set()
    return web.json_response({})


async def stream(request: web.Request) -> web.StreamResponse:
    floor = request.app[FLOOR]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(b"retry: 1000\r\n\r\n")  # sends the headers; the body is chunked
    assert request.transport is not None
    floor.sse.add(request.transport)
    try:
        await floor.ended.wait()
    finally:
        floor.sse.discard(request.transport)
    return resp


async def websocket(request: web.Request) -> web.StreamResponse:
    floor = request.app[FLOOR]
    ws = web.WebSocketResponse(compress=False)
    await ws.prepare(request)
    assert request.transport is not None
    floor.ws.add(request.transport)
    try:
        await floor.ended.wait()
        await ws.close()
    finally:
        floor.ws.discard(request.transport)
    return ws


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    raise_fd_limit()
    app = web.Application()
    app[FLOOR] = Floor()
    app.router.add_post("/sessions", create)
    app.router.add_get(f"/sessions/{SESSION}", info)
    app.router.add_delete(f"/sessions/{SESSION}", end)
    app.router.add_post("/audio", audio)
    app.router.add_get("/stream", stream)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/health", health)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, backlog=4096)


if __name__ == "__main__":
    main()
