"""Writing a subscriber's events to its socket: the frames built once at publish, no re-framing.

:class:`FrameSink` is the :class:`~stt_gateway.hub.Sink` of one SSE or WebSocket
connection. While the connection keeps up, the event log writes each live event's shared frame
bytes straight to its transport (``write_now``); when it is behind, the connection's writer
task sends queued events with :meth:`FrameSink.send`, which waits for the transport to drain
(at most ``stall_s``, then the connection is aborted: a dead or frozen peer).
"""

from __future__ import annotations

import asyncio
import operator
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from ..hub import Record
from ..settings import Settings

SSE_FRAME: Callable[[Record], bytes] = operator.attrgetter("sse")
"""A record as an SSE event in one HTTP/1.1 chunk."""
WS_FRAME: Callable[[Record], bytes] = operator.attrgetter("ws")
"""A record as one WebSocket text frame."""


class FrameSink:
    """One subscriber connection's transport, fed pre-built frames.

    Args:
        transport: the connection's transport (its write buffer limit already bounded, see
            :func:`~stt_gateway.web.common.bound_send_buffer`).
        writer: the response's stream writer (``await response.prepare(request)``), whose
            ``drain`` waits while the transport's buffer is over its high-water mark.
        frame: picks the record's frame for this transport (``Record.sse`` or ``Record.ws``).
        high: bytes the transport may buffer before events queue up instead.
        stall_s: how long a write may wait for the peer to read before the connection is
            aborted.
        closed: whether the connection no longer takes frames (a WebSocket that sent its
            close frame).
    """

    @classmethod
    def of(
        cls,
        request: web.BaseRequest,
        writer: AbstractStreamWriter | None,
        frame: Callable[[Record], bytes],
        settings: Settings,
        closed: Callable[[], bool] = lambda: False,
    ) -> FrameSink:
        """The sink of a prepared response (``writer``: what ``prepare`` returned), bounded by
        ``subscriber_send_buffer`` and ``subscriber_stall_s``.

        Raises:
            ConnectionResetError: the peer is already gone.
        """
        transport = request.transport
        if writer is None or transport is None:
            raise ConnectionResetError("the subscriber's connection is gone")
        return cls(
            transport,
            writer,
            frame,
            high=settings.subscriber_send_buffer,
            stall_s=settings.subscriber_stall_s,
            closed=closed,
        )

    def __init__(
        self,
        transport: asyncio.Transport,
        writer: AbstractStreamWriter,
        frame: Callable[[Record], bytes],
        *,
        high: int,
        stall_s: float,
        closed: Callable[[], bool] = lambda: False,
    ) -> None:
        self._transport = transport
        self._drain: Callable[[], Awaitable[None]] = writer.drain
        self._frame = frame
        self._high = high
        self._stall_s = stall_s
        self._closed = closed

    def write_now(self, record: Record) -> bool:
        """Write ``record``'s frame if the transport's buffer is below ``high``; else ``False``."""
        transport = self._transport
        if (
            transport.get_write_buffer_size() >= self._high
            or transport.is_closing()
            or self._closed()
        ):
            return False
        transport.write(self._frame(record))
        return True

    async def send(self, record: Record) -> None:
        """Write ``record``'s frame, then wait while the transport is over its bound.

        Raises:
            ConnectionResetError: the connection is closing or closed.
            TimeoutError: the peer read nothing for ``stall_s``; the connection is aborted.
        """
        transport = self._transport
        if transport.is_closing() or self._closed():
            raise ConnectionResetError("the subscriber's connection is closing")
        transport.write(self._frame(record))
        if transport.get_write_buffer_size() > self._high:
            try:
                async with asyncio.timeout(self._stall_s):
                    await self._drain()
            except TimeoutError:
                transport.abort()
                raise
