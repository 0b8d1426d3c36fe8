"""``GET /sessions/{id}/ws``: audio in as binary frames, control as JSON text, events out as JSON.

Control messages: ``{"type": "finalize"}`` (final for the utterance in progress now),
``{"type": "close"}`` (as ``DELETE``), ``{"type": "keepalive"}`` (no-op). A bad frame gets an
``error`` event and the socket stays open. ``?since=<seq>`` replays events after that seq first.
The socket closes (1000) after ``session_end`` is sent.

``?events=false`` makes the socket audio-in only (a phone bridge that never reads): it gets no
events, so it can never fall behind and be cut off as a slow consumer, which would close the
socket its audio comes in on; it still closes when the session ends.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import WSMsgType, web
from pydantic import ValidationError

from ..errors import BadControlMessage, BadRequestBody, GatewayError
from ..eventlog import Subscription
from ..models import ControlMessage
from ..session import Session
from .common import (
    METRICS,
    SETTINGS,
    bool_param,
    bound_send_buffer,
    int_param,
    session_of,
    validation_message,
)

routes = web.RouteTableDef()


@routes.get("/sessions/{id}/ws")
async def websocket(request: web.Request) -> web.StreamResponse:
    """Upgrade and serve one session socket; 404 (before the upgrade) for an unknown session."""
    session = session_of(request)
    settings = request.app[SETTINGS]
    since = int_param(request.query.get("since"), "since")
    events = bool_param(request.query.get("events"), "events", default=True)
    if not events and since is not None:
        raise BadRequestBody("since replays events: it cannot go with events=false")
    # Frames over the chunk limit but under 4x get an error event; beyond that aiohttp closes
    # the socket with 1009 rather than buffer an unbounded frame.
    ws = web.WebSocketResponse(
        heartbeat=settings.ws_ping_s, max_msg_size=4 * settings.max_chunk_bytes
    )
    bound_send_buffer(request, settings.subscriber_send_buffer)
    await ws.prepare(request)
    sub = session.subscribe(since) if events else None
    writer = asyncio.create_task(
        _send_events(ws, sub) if sub is not None else _close_when_ended(ws, session),
        name=f"ws-out-{session.id}",
    )
    connected = request.app[METRICS].subscribers.labels("ws")
    if sub is not None:  # an audio-only socket is no subscriber
        connected.inc()
    try:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                try:
                    await session.feed(msg.data)
                except GatewayError as exc:
                    session.report_error(exc)
            elif msg.type == WSMsgType.TEXT:
                await _control(session, msg.data)
    finally:
        if sub is not None:
            connected.dec()
            sub.close()
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
    return ws


async def _control(session: Session, text: str) -> None:
    try:
        command = ControlMessage.model_validate_json(text).type
    except ValidationError as exc:
        session.report_error(
            BadControlMessage(
                f'not a control message ({validation_message(exc)}); send {{"type": '
                f'"finalize"}}, {{"type": "close"}} or {{"type": "keepalive"}}; audio goes in '
                f"binary frames"
            )
        )
        return
    try:
        if command == "finalize":
            await session.finalize()
        elif command == "close":
            await session.close()
    except GatewayError as exc:
        session.report_error(exc)


async def _close_when_ended(ws: web.WebSocketResponse, session: Session) -> None:
    await session.wait_ended()
    with contextlib.suppress(ConnectionError):
        await ws.close(message=b"session ended")


async def _send_events(ws: web.WebSocketResponse, sub: Subscription) -> None:
    try:
        async for record in sub:
            await ws.send_str(record.json)
        await ws.close(message=b"session ended")
    except ConnectionError:
        pass  # the peer left; the reader loop ends too
