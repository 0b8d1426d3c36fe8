"""Open mode's guards: who may drive a gateway that has no API key (``docs/api.md``).

A gateway without keys trusts whoever reaches its port. Two guards keep that from extending to
every web page its user happens to open:

- ``Origin``: a browser names the page behind every cross-site ``POST``, ``fetch`` and
  WebSocket handshake. One that is neither the gateway's own origin nor listed in
  ``STT_GATEWAY_CORS_ORIGINS`` gets ``403 forbidden_origin``, REST and WebSocket alike (a
  ``text/plain`` POST needs no CORS preflight, and WebSockets have none at all, so the browser
  alone would not stop them). Requests without ``Origin`` (curl, SDKs, the CLI) are served.
- ``Host``: while bound to loopback, a ``Host`` that is not a loopback name gets
  ``403 forbidden_host``. A page on ``rebind.example`` whose DNS answer turns into 127.0.0.1 is
  same-origin with itself, so only the name it sends gives it away (DNS rebinding).
  ``STT_GATEWAY_ALLOWED_HOSTS`` admits other names (a local TLS proxy's).

Both run in one middleware, before any handler, so a refused WebSocket never upgrades.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Middleware
from yarl import URL

from ..errors import Forbidden
from ..settings import Settings, is_loopback_name
from .common import Handler


def open_mode_guard(settings: Settings) -> Middleware:
    """The middleware refusing foreign origins and, bound to loopback, foreign host names.

    Raises (from the middleware): Forbidden ``forbidden_host`` / ``forbidden_origin`` (403).
    """
    listed = frozenset(settings.cors_origins)
    allowed_hosts = frozenset(settings.allowed_hosts)
    check_host = settings.loopback_bound

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if check_host:
            host = _host_name(request.host)
            if host is None or not (is_loopback_name(host) or host in allowed_hosts):
                raise Forbidden(
                    "forbidden_host",
                    f"Host {request.host!r} is not a loopback name; this gateway listens on "
                    f"loopback and serves localhost, 127.0.0.1 and [::1] (a guard against DNS "
                    f"rebinding); list another name in STT_GATEWAY_ALLOWED_HOSTS",
                )
        origin = request.headers.get("Origin")
        if (
            origin is not None
            and not _same_origin(origin, request.host)
            and (_normalised(origin) not in listed)
        ):
            raise Forbidden(
                "forbidden_origin",
                f"requests from origin {origin[:100]!r} are refused: the gateway serves its own "
                f"origin and those listed in STT_GATEWAY_CORS_ORIGINS",
            )
        return await handler(request)

    return guard


def _host_name(host_header: str) -> str | None:
    """``Host`` header → lower-case host name without port (None: unparsable)."""
    try:
        return URL(f"http://{host_header}").host
    except ValueError:
        return None


def _normalised(origin: str) -> str | None:
    try:
        url = URL(origin)
    except ValueError:
        return None
    return str(url.origin()) if url.scheme and url.host else None


def _same_origin(origin: str, host_header: str) -> bool:
    """Whether ``origin`` names the host and port this request was sent to.

    The request's own scheme is not compared: behind a TLS proxy the page is ``https`` while
    the gateway sees ``http``; host and port (the default one of the origin's scheme when the
    ``Host`` header has none) are what a foreign page cannot share.
    """
    try:
        page = URL(origin)
        if not page.scheme or not page.host:
            return False
        target = URL(f"{page.scheme}://{host_header}")
    except ValueError:
        return False
    return page.host == target.host and page.port == target.port
