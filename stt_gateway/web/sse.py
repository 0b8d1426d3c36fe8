"""``GET /sessions/{id}/stream``: a session's events as Server-Sent Events (aiohttp-sse).

Each event is ``id: <seq>`` + ``data: <json>`` with no ``event:`` line, so a browser's
``EventSource.onmessage`` sees every event. Resume: the ``Last-Event-ID`` header (what
``EventSource`` sends by itself on reconnect) or ``?last_event_id=``. While idle, a ``heartbeat``
event (no ``id``) goes out every ``heartbeat_s``. The stream ends after ``session_end``; a
reconnect after that gets ``204``, which stops a browser's automatic reconnects.

aiohttp-sse's ``EventSourceResponse`` sets the stream up (headers, chunked body, its ``: ping``
comments, ``TCP_USER_TIMEOUT``); the events themselves are the SSE chunks the event log framed
once at publish, in aiohttp-sse's line format, shared by every subscriber
(:mod:`~stt_gateway.web.delivery`).
"""

from __future__ import annotations

from aiohttp import web
from aiohttp_sse import EventSourceResponse

from ..cluster import Replica
from ..events import HeartbeatData, make_event
from ..hub import Record
from ..session import Session
from .common import (
    METRICS,
    SETTINGS,
    bound_send_buffer,
    cluster_of,
    local_session,
    resume_id_param,
)
from .delivery import SSE_FRAME, FrameSink
from .remote import replica

routes = web.RouteTableDef()


@routes.get("/sessions/{id}/stream")
async def stream(request: web.Request) -> web.StreamResponse:
    """Stream the session's events; 404 unknown session, 400 ``invalid_resume_id``."""
    local = local_session(request, "session:read")
    session: Session | Replica = (
        local if local is not None else await replica(cluster_of(request), request.match_info["id"])
    )
    settings = request.app[SETTINGS]
    since = resume_id_param(
        request.headers.get("Last-Event-ID") or request.query.get("last_event_id"),
        "Last-Event-ID",
    )
    if session.state == "closed" and since is not None and since >= session.last_seq:
        # Nothing left after the client's last event: 204 tells EventSource to stop
        # reconnecting (WHATWG HTML, server-sent events §9.2.3).
        return web.Response(status=204)
    sub = session.subscribe(since)  # before the answer starts: 503 too_many_subscribers
    # send_timeout sets TCP_USER_TIMEOUT: the kernel drops a peer that acknowledges nothing.
    resp = EventSourceResponse(send_timeout=settings.subscriber_stall_s)
    bound_send_buffer(request, settings.subscriber_send_buffer)
    try:
        writer = await resp.prepare(request)
    except BaseException:
        sub.close()
        raise
    connected = request.app[METRICS].subscribers.labels("sse")
    connected.inc()
    try:
        # A block with only `retry:` sets the browser's reconnect delay (WHATWG HTML §9.2);
        # written through aiohttp, it also sends the headers and starts the chunked body.
        await resp.write(f"retry: {settings.sse_retry_ms}\r\n\r\n".encode())
        sink = FrameSink.of(request, writer, SSE_FRAME, settings)
        sub.attach(sink)
        while True:
            try:
                record = await sub.next_or_idle(settings.heartbeat_s)
            except StopAsyncIteration:
                break
            await sink.send(_heartbeat(session.id) if record is None else record)
    except (ConnectionError, TimeoutError):
        pass  # the subscriber left or froze (its connection was aborted); it may resume
    finally:
        connected.dec()
        sub.close()
        resp.stop_streaming()
    return resp


def _heartbeat(session_id: str) -> Record:
    """A ``heartbeat`` event (no ``id``), sent after ``heartbeat_s`` with nothing else sent."""
    beat = make_event(HeartbeatData(), seq=None, session_id=session_id)
    return Record.frame(None, "heartbeat", beat.model_dump_json(exclude_none=True).encode())
