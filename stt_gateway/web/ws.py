"""``GET /sessions/{id}/ws``: audio in as binary frames, control as JSON text, events out as JSON.

Control messages: ``{"type": "finalize"}`` (final for the utterance in progress now),
``{"type": "close"}`` (as ``DELETE``), ``{"type": "keepalive"}`` (no-op). ``?since=<seq>``
replays events after that seq first. The socket closes (1000) after ``session_end`` is sent.

The first socket that sends audio is the session's producer until it closes; audio from any
other socket meanwhile is not heard. An error caused by this socket's own frames (a bad frame or
control message, audio after the session closed, audio while another socket produces) is sent
to this socket only, as an ``error`` event without ``seq``; the session's subscribers never see
it. A socket that sends ``ws_max_bad_frames`` such frames within a minute is closed with 1008
(policy violation): a flood costs its sender, not the session.

``?events=false`` makes the socket audio-in only (a phone bridge that never reads): it gets no
session events, so it can never fall behind and be cut off as a slow consumer, which would
close the socket its audio comes in on; it still gets its own errors, and closes when the
session ends.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web
from pydantic import ValidationError

from ..auth import Scope
from ..cluster import Replica
from ..errors import BadControlMessage, BadRequestBody, Forbidden, GatewayError
from ..events import ErrorData, make_event
from ..hub import Subscription
from ..models import ControlMessage
from ..session import Session
from .common import (
    METRICS,
    SETTINGS,
    bool_param,
    bound_send_buffer,
    caller,
    cluster_of,
    local_session,
    resume_id_param,
    validation_message,
)
from .credentials import WS_PROTOCOLS
from .delivery import WS_FRAME, FrameSink
from .frames import read_frames
from .remote import RemoteFront, replica

routes = web.RouteTableDef()


@routes.get("/sessions/{id}/ws")
async def websocket(request: web.Request) -> web.StreamResponse:
    """Upgrade and serve one session socket.

    Answers before the upgrade: 401/403 (credentials: ``session:publish`` or ``session:read``
    for this session; ``session:publish`` with ``events=false``), 404 unknown session, 400
    ``invalid_resume_id`` (``since``) or ``bad_request`` (``events``), 503
    ``too_many_subscribers``. A socket whose credential can only read gets ``error``
    ``forbidden`` for each audio or control frame (to it alone; they count as bad frames).
    """
    events = bool_param(request.query.get("events"), "events", default=True)
    scopes: tuple[Scope, ...] = (
        ("session:publish", "session:read") if events else ("session:publish",)
    )
    local = local_session(request, *scopes)
    may_publish = caller(request).allows("session:publish", request.match_info["id"])
    settings = request.app[SETTINGS]
    since = resume_id_param(request.query.get("since"), "since")
    if not events and since is not None:
        raise BadRequestBody("since replays events: it cannot go with events=false")
    # Frames over the chunk limit but under 4x get an error event; beyond that aiohttp closes
    # the socket with 1009 rather than buffer an unbounded frame.
    ws = web.WebSocketResponse(
        heartbeat=settings.ws_ping_s,
        max_msg_size=4 * settings.max_chunk_bytes,
        protocols=WS_PROTOCOLS,  # a credential sent as a subprotocol pair: select its scheme
        # No permessage-deflate: every subscriber gets the same frame bytes, built once at
        # publish; a deflate context per socket would make each frame per socket (and holds
        # ~300 KB of zlib state per connection for events of a few hundred bytes).
        compress=False,
    )
    front: _Front | RemoteFront
    if local is not None:
        session: Session | Replica = local
        front = _Front(local, ws, may_publish)
    else:
        cluster = cluster_of(request)
        session = await replica(cluster, request.match_info["id"])
        front = RemoteFront(request, cluster, ws, may_publish)
        if not events:
            await front.open()  # before the upgrade: 502 owner_unreachable is an HTTP answer
    # Subscribed before the upgrade: 503 too_many_subscribers is an HTTP answer.
    sub = session.subscribe(since) if events else None
    bound_send_buffer(request, settings.subscriber_send_buffer)
    try:
        stream = await ws.prepare(request)
        if sub is None:
            out = _close_when_ended(ws, front)
        else:
            sink = FrameSink.of(request, stream, WS_FRAME, settings, closed=lambda: ws.closed)
            sub.attach(sink)
            out = _send_events(ws, sub, sink)
    except BaseException:
        if sub is not None:
            sub.close()
        raise
    writer = asyncio.create_task(out, name=f"ws-out-{session.id}")
    metrics = request.app[METRICS]
    connected = metrics.subscribers.labels("ws")
    if sub is not None:  # an audio-only socket is no subscriber
        connected.inc()
    try:
        await read_frames(ws, front, max_bad_frames=settings.ws_max_bad_frames, metrics=metrics)
    finally:
        await front.close()
        if sub is not None:
            connected.dec()
            sub.close()
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
    return ws


class _Front:
    """Frames on a session socket of ours: binary audio, JSON control messages, ``error``
    events without ``seq`` (see the module docstring)."""

    def __init__(self, session: Session, ws: web.WebSocketResponse, may_publish: bool) -> None:
        self._session = session
        self._ws = ws
        self._may_publish = may_publish

    async def wait_closed(self) -> None:
        """Until the session has ended."""
        await self._session.wait_ended()

    async def close(self) -> None:
        """The socket closed: give up the session's audio if it held it."""
        await self._session.release_producer(self._ws)

    def _check_may_publish(self) -> None:
        if not self._may_publish:
            raise Forbidden(
                "forbidden", "this socket's credential may read the session, not feed it"
            )

    async def binary(self, data: bytes) -> None:
        self._check_may_publish()
        await self._session.feed(data, producer=self._ws)

    async def text(self, data: str) -> None:
        self._check_may_publish()
        await _control(self._session, data, self._ws)

    def error_frame(self, exc: GatewayError) -> str:
        error = ErrorData(code=exc.code, message=exc.message)
        return make_event(error, seq=None, session_id=self._session.id).model_dump_json(
            exclude_none=True
        )


async def _control(session: Session, text: str, producer: object) -> None:
    """Run one control message from ``producer``'s socket.

    Raises:
        BadControlMessage, SessionClosed, ProducerConflict (finalize from a non-producer).
    """
    try:
        command = ControlMessage.model_validate_json(text).type
    except ValidationError as exc:
        raise BadControlMessage(
            f'not a control message ({validation_message(exc)}); send {{"type": '
            f'"finalize"}}, {{"type": "close"}} or {{"type": "keepalive"}}; audio goes in '
            f"binary frames"
        ) from None
    if command == "finalize":
        await session.finalize(producer)
    elif command == "close":
        await session.close()


async def _close_when_ended(ws: web.WebSocketResponse, front: _Front | RemoteFront) -> None:
    """An audio-only socket: close it when its session ends."""
    await front.wait_closed()
    with contextlib.suppress(ConnectionError):
        await ws.close(message=b"session ended")


async def _send_events(ws: web.WebSocketResponse, sub: Subscription, sink: FrameSink) -> None:
    """Send what the sink could not take at once (replay, and whenever the peer is behind),
    then close after ``session_end``."""
    try:
        async for record in sub:
            await sink.send(record)
        await ws.close(message=b"session ended")
    except (ConnectionError, TimeoutError):
        pass  # the peer left or froze (its connection was aborted); the reader loop ends too
