"""Routes for a session another gateway process owns (``STT_GATEWAY_REDIS_URL``).

Reading works here as on the owner: ``GET`` and the transcript come from the session's record
in Redis, SSE and WebSocket events from this process's replica of its stream
(:mod:`stt_gateway.cluster`). Audio and control go to the owner — the process whose engine
holds the session's audio stream — and this process passes them on over HTTP (the owner's
``node_url``): a ``POST …/audio`` or ``DELETE`` is forwarded as it came and its answer given
back; a WebSocket's audio and control frames are sent on over one socket to the owner
(``?events=false``), whose errors for them come back on the client's socket. Passing on rather
than redirecting: browsers do not follow a redirect of a WebSocket handshake, and a load
balancer in front of several processes would not route a redirect to one of them anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import aiohttp
from aiohttp import web
from redis.exceptions import RedisError

from ..cluster import Cluster, Replica, SessionRecord
from ..errors import (
    Forbidden,
    GatewayError,
    OwnerUnreachable,
    SessionClosed,
    SessionNotFound,
    StoreUnavailable,
)
from ..events import ErrorData, make_event

OWNER_CLIENT = web.AppKey("owner_client", aiohttp.ClientSession)

_PASSED_HEADERS = ("Authorization", "Content-Type", "Origin")
"""Request headers the owner needs to judge a passed-on request as this process did."""
_ANSWER_HEADERS = ("Content-Type", "Retry-After")

T = TypeVar("T")


async def owner_client(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the HTTP client that passes requests on to owners."""
    app[OWNER_CLIENT] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
    yield
    await app[OWNER_CLIENT].close()


async def from_store(step: Awaitable[T]) -> T:
    """``await step``, a Redis read.

    Raises:
        StoreUnavailable: Redis cannot be reached.
    """
    try:
        return await step
    except RedisError as exc:
        raise StoreUnavailable(
            f"the shared session store (Redis) cannot be reached ({exc}); try again shortly"
        ) from None


async def replica(cluster: Cluster, session_id: str) -> Replica:
    """This process's replica of the session. Raises SessionNotFound, StoreUnavailable."""
    return await from_store(cluster.replica(session_id))


async def _owner(cluster: Cluster, session_id: str) -> SessionRecord:
    """The session's record, to reach its owner. Raises SessionNotFound, StoreUnavailable."""
    record = await from_store(cluster.record(session_id))
    if record.owner == cluster.node_id:
        raise SessionNotFound(session_id)  # ours once, and removed since
    return record


def _passed_headers(request: web.Request) -> dict[str, str]:
    return {h: v for h in _PASSED_HEADERS if (v := request.headers.get(h)) is not None}


async def forward(request: web.Request, cluster: Cluster, body: bytes) -> web.Response:
    """Pass ``request`` (with ``body``) on to the session's owner; its answer.

    Raises:
        SessionNotFound, StoreUnavailable; SessionClosed: the session has ended (its owner
        may be gone); OwnerUnreachable: the owner did not answer.
    """
    record = await _owner(cluster, request.match_info["id"])
    if record.state == "closed":
        raise SessionClosed(f"session {record.session_id} is closed and takes no more input")
    url = record.owner_url.rstrip("/") + str(request.rel_url)
    try:
        async with request.app[OWNER_CLIENT].request(
            request.method, url, data=body, headers=_passed_headers(request)
        ) as answer:
            content = await answer.read()
            headers = {h: v for h in _ANSWER_HEADERS if (v := answer.headers.get(h)) is not None}
            return web.Response(status=answer.status, body=content, headers=headers)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise OwnerUnreachable(
            f"the gateway process holding session {record.session_id} did not answer "
            f"({type(exc).__name__}); its audio was not taken"
        ) from None


class RemoteFront:
    """Frames on a session socket whose session another process owns: audio and control are
    sent on to the owner over one socket, opened at the first such frame; the owner's errors
    about them come back to this socket only (see ``ws.py``'s module docstring)."""

    def __init__(
        self,
        request: web.Request,
        cluster: Cluster,
        ws: web.WebSocketResponse,
        may_publish: bool,
    ) -> None:
        self._request = request
        self._cluster = cluster
        self._ws = ws
        self._may_publish = may_publish
        self._session_id = request.match_info["id"]
        self._upstream: aiohttp.ClientWebSocketResponse | None = None
        self._relay: asyncio.Task[None] | None = None

    async def binary(self, data: bytes) -> None:
        await (await self._owner_socket()).send_bytes(data)

    async def text(self, data: str) -> None:
        await (await self._owner_socket()).send_str(data)

    def error_frame(self, exc: GatewayError) -> str:
        error = ErrorData(code=exc.code, message=exc.message)
        return make_event(error, seq=None, session_id=self._session_id).model_dump_json(
            exclude_none=True
        )

    async def open(self) -> None:
        """Open the socket to the owner now (an audio-only socket: it closes with it)."""
        await self._owner_socket()

    async def _owner_socket(self) -> aiohttp.ClientWebSocketResponse:
        if not self._may_publish:
            raise Forbidden(
                "forbidden", "this socket's credential may read the session, not feed it"
            )
        if self._upstream is not None and not self._upstream.closed:
            return self._upstream
        record = await _owner(self._cluster, self._session_id)
        url = f"{record.owner_url.rstrip('/')}/sessions/{self._session_id}/ws"
        query = {"events": "false"}
        if (token := self._request.query.get("access_token")) is not None:
            query["access_token"] = token
        try:
            self._upstream = await self._request.app[OWNER_CLIENT].ws_connect(
                url,
                params=query,
                headers=_passed_headers(self._request),
                protocols=[
                    p.strip()
                    for h in self._request.headers.getall("Sec-WebSocket-Protocol", [])
                    for p in h.split(",")
                ],
                autoping=True,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OwnerUnreachable(
                f"the gateway process holding session {self._session_id} did not take the "
                f"socket ({type(exc).__name__}); this frame was not used"
            ) from None
        self._relay = asyncio.create_task(self._relay_errors(self._upstream))
        return self._upstream

    async def _relay_errors(self, upstream: aiohttp.ClientWebSocketResponse) -> None:
        """The owner's answers to this socket's frames (errors, no seq) go back to it."""
        with contextlib.suppress(ConnectionError):
            async for message in upstream:
                if message.type == aiohttp.WSMsgType.TEXT:
                    await self._ws.send_str(message.data)

    async def wait_closed(self) -> None:
        """Until the owner closes the socket (the session ended); at once if not open."""
        if self._relay is not None:
            await self._relay

    async def close(self) -> None:
        """Close the socket to the owner (the client left)."""
        if self._upstream is not None:
            await self._upstream.close()
        if self._relay is not None:
            self._relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._relay
