"""The read loop of a session socket, for every WebSocket front (ours and Deepgram's).

A front (:class:`Front`) says what a binary and a text frame mean and how an error is told to
the socket that caused it; this loop does the rest the same way for all of them: an error
caused by a frame goes to this socket only, a socket that sends ``max_bad_frames`` bad frames
within a minute is closed with 1008 (policy violation) so a flood costs its sender and not the
session, and an optional inactivity window ends the loop when no frame came for that long.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Literal, Protocol

from aiohttp import WSCloseCode, WSMsgType, web

from ..errors import GatewayError
from ..metrics import GatewayMetrics

BAD_FRAME_WINDOW_S = 60.0
"""Bad frames count against a socket for this long (s)."""


class Front(Protocol):
    """One WebSocket protocol's meaning of frames on a session socket."""

    async def binary(self, data: bytes) -> None:
        """A binary frame (audio). Raises GatewayError: the frame is refused."""

    async def text(self, data: str) -> None:
        """A text frame (a control message). Raises GatewayError: the frame is refused."""

    def error_frame(self, exc: GatewayError) -> str:
        """The text frame that tells this socket ``exc`` (to it alone)."""


Ended = Literal["closed", "idle", "policy"]
"""Why :func:`read_frames` returned: the socket closed, no frame came within ``idle_s``, or
it was closed for sending too many bad frames."""


async def read_frames(
    ws: web.WebSocketResponse,
    front: Front,
    *,
    max_bad_frames: int,
    metrics: GatewayMetrics,
    idle_s: float | None = None,
) -> Ended:
    """Read ``ws`` until it closes, handing each frame to ``front``.

    Args:
        ws: a prepared server socket.
        front: what frames mean on it.
        max_bad_frames: refused frames within :data:`BAD_FRAME_WINDOW_S` that close the socket
            (1008).
        metrics: counts each refused frame by its error code.
        idle_s: return ``"idle"`` once no frame (binary or text) came for this long (s); None:
            wait for ever.
    """
    loop = asyncio.get_running_loop()
    # Monotonic times of this socket's latest bad frames: full and all within the window → 1008.
    strikes: deque[float] = deque(maxlen=max_bad_frames)
    deadline = None if idle_s is None else loop.time() + idle_s
    while True:
        try:
            msg = await ws.receive(timeout=None if deadline is None else deadline - loop.time())
        except TimeoutError:
            return "idle"
        if msg.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
            return "closed"  # CLOSE, CLOSING, CLOSED or ERROR (pings are answered by aiohttp)
        if idle_s is not None:
            deadline = loop.time() + idle_s
        try:
            if msg.type == WSMsgType.BINARY:
                await front.binary(msg.data)
            else:
                await front.text(msg.data)
        except GatewayError as exc:
            metrics.error(exc.code)
            strikes.append(time.monotonic())
            if len(strikes) == strikes.maxlen and strikes[-1] - strikes[0] < BAD_FRAME_WINDOW_S:
                await ws.close(
                    code=WSCloseCode.POLICY_VIOLATION,
                    message=f"{len(strikes)} bad frames within a minute; the last: "
                    f"{exc.code}".encode(),
                )
                return "policy"
            # Awaited here, so a sender that floods without reading is held back by its own
            # unread errors. (aiohttp writes each frame whole: this may interleave with the
            # event writer's frames but never split one.)
            with contextlib.suppress(ConnectionError):
                await ws.send_str(front.error_frame(exc))
