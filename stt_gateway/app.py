"""The application factory: :func:`create_app` wires settings, engines, registry and routes."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from swagger_ui import api_doc

from .auth import Authenticator
from .cluster import Cluster
from .engines.base import EngineProvider
from .engines.local import LocalEngineProvider
from .engines.runtime import EngineRuntime, RuntimeOptions
from .engines.whisper import WhisperEngineProvider
from .fronts.deepgram import listen
from .fronts.deepgram.upstream import DeepgramProvider
from .llm import OpenAIChat
from .metrics import GatewayMetrics
from .registry import SessionRegistry
from .settings import Settings
from .web import info, rest, sse, ws
from .web.common import AUTH, METRICS, REGISTRY, SETTINGS, WORKERS, error_middleware
from .web.cors import allow_cross_origin
from .web.credentials import REDACT_TOKENS, auth_middleware
from .web.guard import open_mode_guard
from .web.remote import owner_client

log = logging.getLogger(__name__)


Providers = Callable[[EngineRuntime], dict[str, EngineProvider]]
"""Builds the engines by config name from the engine runtime's worker pools."""


def _default_providers(settings: Settings) -> Providers:
    def make(runtime: EngineRuntime) -> dict[str, EngineProvider]:
        return {
            "local": LocalEngineProvider(runtime.workers),
            "whisper": WhisperEngineProvider(runtime.workers, runtime.pass_workers, settings),
            "deepgram": DeepgramProvider(settings),
        }

    return make


GC_YOUNG_THRESHOLD = 7_000
"""Tracked allocations (net) between young collections while the app runs (Python: 700)."""


def tune_collector(app: web.Application) -> None:
    """Tune the garbage collector for a process that serves ``app`` and nothing else (the
    CLI and the benchmarks call this; :func:`create_app` leaves process-wide state alone).

    What start-up built (modules, models, the app) lives as long as the process: moved out of
    the collector's generations (``gc.freeze()``), a full collection walks only what sessions
    hold (Python's gc docs give the same reasoning for forked servers). A young generation of
    7,000 (not 700): each live session holds ~150 tracked objects, so sessions arriving drive
    collections; at the default, full collections paused the loop 11–19 ms three times in an
    8 s trial of 300 sessions, at 7,000 none paused it 10 ms, at 50,000 the young collections
    themselves took 13–21 ms (bench/capacity.py --gc log). Restored when the app cleans up.
    """

    async def tuned(app: web.Application) -> AsyncIterator[None]:
        thresholds = gc.get_threshold()
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_YOUNG_THRESHOLD, *thresholds[1:])
        yield
        gc.set_threshold(*thresholds)
        gc.unfreeze()

    app.cleanup_ctx.append(tuned)


def create_app(
    settings: Settings | None = None,
    providers: Providers | None = None,
    runtime: EngineRuntime | None = None,
) -> web.Application:
    """Build the gateway's aiohttp application.

    Args:
        settings: configuration; default: read from the environment and ``.env``.
        providers: builds the engines by config name from the engine runtime; default: the
            embedded ``local`` engine, ``whisper`` (available when its model is) and
            ``deepgram`` (available when its key is set). Tests and benchmarks pass their own.
        runtime: engine worker processes to use and leave running (several apps may share
            one; its options should be ``RuntimeOptions.of(settings)``); default: the app's
            own, started when the app starts and stopped on cleanup.

    Live sessions are closed (``session_end`` reason ``shutdown``) when the server shuts
    down.
    """
    settings = settings or Settings()
    # Request URLs in the access log may carry ?access_token=: blank it wherever it is logged.
    logging.getLogger("aiohttp.access").addFilter(REDACT_TOKENS)
    keys = settings.keys()
    authenticator = (
        Authenticator(
            keys,
            settings.token_secret.get_secret_value() if settings.token_secret else None,
            settings.token_max_ttl_s,
        )
        if keys
        else None
    )
    # With keys, credentials decide; without, open mode's Origin/Host guards do.
    gate = auth_middleware(authenticator) if authenticator else open_mode_guard(settings)
    app = web.Application(
        # error_middleware outermost: the gate's refusals get the JSON error body too; on
        # Deepgram's routes deepgram_errors (inside it, around the gate) gives them its shape.
        middlewares=[error_middleware, listen.deepgram_errors, gate],
        client_max_size=settings.max_request_bytes,
        # aiohttp arms this timer when a connection opens and only rearms it after a whole
        # request: a client that trickles its headers (slowloris) is closed when it fires.
        handler_args={"keepalive_timeout": settings.header_timeout_s},
    )
    owns_runtime = runtime is None
    runtime = runtime or EngineRuntime(RuntimeOptions.of(settings))
    engines = (providers or _default_providers(settings))(runtime)
    metrics = GatewayMetrics()
    registry = SessionRegistry(settings, engines, metrics)
    summarizer = None
    if settings.llm_url is not None and settings.llm_model is not None:
        summarizer = registry.summarizer = OpenAIChat(
            settings.llm_url,
            settings.llm_model,
            settings.llm_api_key.get_secret_value() if settings.llm_api_key else None,
            timeout_s=settings.llm_timeout_s,
            context_tokens=settings.llm_context_tokens,
            max_tokens=settings.llm_max_tokens,
        )
    metrics.watch(registry)
    app[SETTINGS] = settings
    app[WORKERS] = runtime.workers
    app[METRICS] = metrics
    app[REGISTRY] = registry
    if authenticator is not None:
        app[AUTH] = authenticator
    for module in (rest, sse, ws, listen, info):
        app.add_routes(module.routes)
    # Swagger UI from swagger-ui-py's bundled files (no CDN: the gateway may run offline).
    api_doc(app, config_rel_url="/openapi.json", url_prefix="/docs", title="stt-gateway API")
    app[info.STATIC_DIR] = info.find_static_dir()
    app.router.add_static("/static", app[info.STATIC_DIR])
    allow_cross_origin(app, settings.cors_origins)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        runtime.start()
        if (default := engines.get(settings.default_engine)) is not None:
            if (reason := default.unavailable_reason()) is not None:
                # Sessions that name no engine will get 422 engine_unavailable: say so now.
                log.warning(
                    "the default engine %r is not available: %s", settings.default_engine, reason
                )
            default.prepare()
        yield
        if registry.cluster is not None:
            await registry.cluster.close()
            registry.cluster = None
        for provider in engines.values():
            await provider.close()
        if summarizer is not None:
            await summarizer.close()
        if owns_runtime:
            await runtime.close()

    async def close_sessions(app: web.Application) -> None:
        await app[REGISTRY].close_all("shutdown")

    app.on_shutdown.append(close_sessions)
    app.cleanup_ctx.append(lifecycle)
    app.cleanup_ctx.append(owner_client)
    return app


async def start_cluster(app: web.Application, node_url: str) -> None:
    """Join the processes sharing ``settings.redis_url`` (nothing without it): call once the
    app is serving, with the URL other processes reach this one at (``settings.node_url``
    wins). Sessions created before this are not shared.

    Raises:
        redis.exceptions.RedisError: Redis cannot be reached.
    """
    settings = app[SETTINGS]
    if settings.redis_url is None:
        return
    registry = app[REGISTRY]
    cluster = Cluster(
        settings.redis_url.get_secret_value(),
        registry.limits,
        retention_s=settings.retention_s,
        lease_s=settings.lease_s,
    )
    try:
        await cluster.start(settings.node_url or node_url)
    except BaseException:
        await cluster.close()
        raise
    registry.cluster = cluster
