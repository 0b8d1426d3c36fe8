"""Credentials in, a :class:`~stt_gateway.auth.Principal` out: one middleware for every route.

A credential travels (``docs/api.md``, "Who may call") as ``Authorization: Bearer <key or
token>`` or ``Authorization: Token <key>`` (Deepgram's form), as ``?access_token=<token>``
(EventSource and browser WebSockets cannot set headers), or as the WebSocket subprotocol pair
``bearer, <token>`` / ``token, <key>``. It is checked once, when the request or connection
starts — nothing per frame — and before a WebSocket upgrade, so a refused socket never opens.

Routes outside a session check what the caller may do here (``POST /sessions``, ``POST
/tokens``, ``/metrics``); per-session routes check it in :func:`.common.session_of`, the one
place they get their session from.
"""

from __future__ import annotations

import logging
import re

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

from ..auth import Authenticator, Principal
from ..errors import Unauthorized
from .common import PRINCIPAL, Handler

WS_PROTOCOLS = ("bearer", "token")
"""Subprotocols a WebSocket handshake may carry a credential in; the server selects one."""

_OPEN_PATHS = frozenset(["/", "/health", "/ready", "/info", "/usage", "/openapi.json"])
_OPEN_PREFIXES = ("/static/", "/docs")


def is_open(path: str) -> bool:
    """Whether ``path`` is served without credentials (``docs/api.md``: liveness, the mic
    page and its assets, the API docs and ``/info``, which holds no secret)."""
    return path in _OPEN_PATHS or path.startswith(_OPEN_PREFIXES)


def _credential(request: web.Request) -> tuple[str, str] | None:
    """``(scheme, value)`` of the credential the request carries, scheme ``bearer`` or
    ``token``; None if it carries none.

    Raises:
        Unauthorized: an ``Authorization`` header of another form.
    """
    header = request.headers.get(hdrs.AUTHORIZATION)
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() not in WS_PROTOCOLS or not value.strip():
            raise Unauthorized()
        return scheme.lower(), value.strip()
    if (query := request.query.get("access_token")) is not None:
        return "bearer", query
    offered = [
        p.strip()
        for p in request.headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL, "").split(",")
        if p.strip()
    ]
    if len(offered) >= 2 and offered[0].lower() in WS_PROTOCOLS:
        return offered[0].lower(), offered[1]
    return None


def _check(authenticator: Authenticator, scheme: str, value: str) -> Principal:
    """Who ``value`` is: ``Token`` carries a key; ``Bearer`` a token (a JWT: three
    dot-separated parts) or a key.

    Raises:
        Unauthorized: neither.
    """
    if scheme == "bearer" and value.count(".") == 2:
        try:
            return authenticator.token(value)
        except Unauthorized:
            pass  # an operator's key may look like a JWT too
    return authenticator.key(value)


def auth_middleware(authenticator: Authenticator) -> Middleware:
    """Authenticate every request to a route that is not open; store its :class:`Principal`.

    CORS preflights (``OPTIONS``) carry no credentials by design and are let through (they
    run no handler of ours).

    Raises (from the middleware): Unauthorized (401).
    """

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != hdrs.METH_OPTIONS and not is_open(request.path):
            found = _credential(request)
            if found is None:
                raise Unauthorized()
            request[PRINCIPAL] = _check(authenticator, *found)
        return await handler(request)

    return authenticate


_ACCESS_TOKEN = re.compile(r"(access_token=)[^&\s\"]+")


class RedactTokens(logging.Filter):
    """Blanks ``access_token=…`` in a log line (the access log writes request URLs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "access_token=" in message:
            record.msg, record.args = _ACCESS_TOKEN.sub(r"\1[redacted]", message), None
        return True


REDACT_TOKENS = RedactTokens()
"""The one filter instance (``addFilter`` of the same instance twice adds it once)."""
