"""What every handler shares: app keys, JSON answers, the error middleware, query parsing."""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable

from aiohttp import web
from pydantic import BaseModel, ValidationError

from ..auth import OPEN, Authenticator, Principal, Scope
from ..cluster import Cluster
from ..engines.workers import WorkerPool
from ..errors import (
    BadRequestBody,
    ChunkTooLarge,
    GatewayError,
    InvalidResumeId,
    SessionNotFound,
)
from ..metrics import GatewayMetrics
from ..registry import SessionRegistry
from ..session import Session
from ..settings import Settings

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
REGISTRY = web.AppKey("registry", SessionRegistry)
WORKERS = web.AppKey("workers", WorkerPool)
METRICS = web.AppKey("metrics", GatewayMetrics)
AUTH = web.AppKey("auth", Authenticator)
"""Present only when auth is on (at least one API key)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PRINCIPAL = web.RequestKey("principal", Principal)
"""Request key of the caller's :class:`~stt_gateway.auth.Principal` (set by the auth
middleware; absent when auth is off, which allows everything)."""


def model_response(
    model: BaseModel, status: int = 200, exclude: set[str] | None = None
) -> web.Response:
    """A JSON response of a pydantic model (serialised by pydantic, not ``json.dumps``),
    without the fields in ``exclude``."""
    return web.Response(
        status=status,
        text=model.model_dump_json(exclude=exclude),
        content_type="application/json",
    )


def error_response(
    status: int,
    code: str,
    message: str,
    retry_after_s: float | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """The ``{"error": {"code", "message"}}`` body every 4xx/5xx answer has."""
    headers = dict(headers or {})
    if retry_after_s:
        headers["Retry-After"] = str(max(1, round(retry_after_s)))
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


def validation_message(exc: ValidationError) -> str:
    """One line naming each invalid field: ``config.sample_rate: Input should be ≥ 8000``."""
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: ChunkTooLarge.code}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every :class:`GatewayError` and aiohttp HTTP error into the JSON error body."""
    try:
        return await handler(request)
    except GatewayError as exc:
        request.app[METRICS].error(exc.code)
        return error_response(
            exc.status, exc.code, exc.message, exc.retry_after_s, headers=exc.headers
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        request.app[METRICS].error(code)
        # Keep aiohttp's headers that matter to clients (405's Allow, RFC 9110 §15.5.6).
        kept = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        message = exc.reason if exc.text is None else exc.text
        return error_response(exc.status, code, message, headers=kept)


def session_of(request: web.Request, *scopes: Scope) -> Session:
    """The session named by the ``{id}`` path segment, if the caller holds one of ``scopes``
    for it — the one authorization check of every per-session route.

    Checked before the session is looked up, so a credential for another session learns
    nothing of this one, not even whether it exists.

    Raises:
        Forbidden: the caller's credential holds none of ``scopes`` for this session.
        SessionNotFound: no such session.
    """
    session_id = request.match_info["id"]
    caller(request).require_any(scopes, session_id)
    return request.app[REGISTRY].get(session_id)


def local_session(request: web.Request, *scopes: Scope) -> Session | None:
    """As :func:`session_of`, for a route that also serves sessions of other processes: the
    session if this process holds it; ``None`` if not, but other processes share sessions
    with this one (:func:`cluster_of`) and one may.

    Raises:
        Forbidden: as :func:`session_of`.
        SessionNotFound: this process has no such session and shares none (no Redis).
    """
    session_id = request.match_info["id"]
    caller(request).require_any(scopes, session_id)
    registry = request.app[REGISTRY]
    try:
        return registry.get(session_id)
    except SessionNotFound:
        if registry.cluster is None:
            raise
        return None


def cluster_of(request: web.Request) -> Cluster:
    """The processes this one shares sessions with (after :func:`local_session` gave ``None``)."""
    cluster = request.app[REGISTRY].cluster
    assert cluster is not None
    return cluster


def caller(request: web.Request) -> Principal:
    """Who sent ``request`` (everything allowed when auth is off)."""
    found: Principal = request.get(PRINCIPAL, OPEN)
    return found


def bound_send_buffer(request: web.Request, size: int) -> None:
    """Cap what one subscriber connection may hold unsent: the kernel's send buffer
    (``SO_SNDBUF``, which also stops its autotuning up to 4 MB) and the transport's write
    buffer. A reader that stops reading then blocks its writer after ~3×``size`` bytes, its
    event queue fills and it is cut off (``slow_consumer``) instead of holding megabytes."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    transport.set_write_buffer_limits(high=size)


def bool_param(value: str | None, name: str, default: bool) -> bool:
    """Parse an optional ``true``/``false`` (or ``1``/``0``) parameter. Raises BadRequestBody."""
    if value is None or value == "":
        return default
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise BadRequestBody(f"{name} must be true or false, not {value!r}")


MAX_RESUME_ID = 2**63 - 1
"""Largest ``seq`` a client may resume from (a signed 64-bit integer, ``docs/api.md``)."""


def resume_id_param(value: str | None, name: str) -> int | None:
    """Parse an optional resume position (``Last-Event-ID``, ``last_event_id``, ``since``).

    Raises:
        InvalidResumeId: not ASCII digits, or above 2^63−1.
    """
    if value is None or value == "":
        return None
    # ASCII digits only: str.isdigit() also passes "²", which int() refuses.
    if not (value.isascii() and value.isdigit()) or int(value) > MAX_RESUME_ID:
        shown = value if len(value) <= 40 else value[:40] + "…"
        raise InvalidResumeId(f"{name} must be an integer from 0 to {MAX_RESUME_ID}, not {shown!r}")
    return int(value)
