"""Cross-origin access for pages on the origins in ``STT_GATEWAY_CORS_ORIGINS`` (aiohttp-cors).

A listed origin may call the REST routes from a browser: preflights (``OPTIONS``) are answered
and responses carry ``Access-Control-Allow-Origin`` for that origin only, never ``*``.
Credentials travel in ``Authorization`` (a key or token), not cookies, so
``Access-Control-Allow-Credentials`` is not sent. WebSockets have no CORS (the open-mode guard
checks their ``Origin``; with auth on, their credential decides).
"""

from __future__ import annotations

import aiohttp_cors
from aiohttp import web

ALLOW_HEADERS = ("Authorization", "Content-Type", "Last-Event-ID")
EXPOSE_HEADERS = ("Retry-After", "WWW-Authenticate")
PREFLIGHT_MAX_AGE_S = 600


def allow_cross_origin(app: web.Application, origins: list[str]) -> None:
    """Let pages on ``origins`` (normalised ``scheme://host[:port]``) call every HTTP route of
    ``app`` added so far; nothing when ``origins`` is empty (same-origin only)."""
    if not origins:
        return
    options = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]
        allow_credentials=False,
        allow_headers=ALLOW_HEADERS,
        expose_headers=EXPOSE_HEADERS,
        max_age=PREFLIGHT_MAX_AGE_S,
    )
    cors = aiohttp_cors.setup(app, defaults=dict.fromkeys(origins, options))
    for route in list(app.router.routes()):
        resource = route.resource
        if (
            resource is not None
            and route.method != "OPTIONS"
            and not resource.canonical.endswith("/ws")
        ):
            cors.add(route)
