"""``GET /health``, ``GET /info``, ``GET /usage`` and ``/`` (to the usage guide)."""

from __future__ import annotations

import asyncio
import sys
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import __version__
from .common import METRICS, REGISTRY, SETTINGS, WORKERS, caller
from .openapi import build_spec

routes = web.RouteTableDef()


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    """Liveness: 200 while the process serves requests."""
    return web.json_response({"status": "ok"})


@routes.get("/info")
async def info(request: web.Request) -> web.Response:
    """Version, engines (available or why not, languages) and limits."""
    registry = request.app[REGISTRY]
    s = request.app[SETTINGS]
    engines = {
        name: {
            "available": (reason := p.unavailable_reason()) is None,
            "reason": reason,
            "model": p.default_model,
            "languages": p.languages,
        }
        for name, p in registry.providers.items()
    }
    return web.json_response(
        {
            "name": "stt-gateway",
            "version": __version__,
            "engines": engines,
            "default_engine": s.default_engine,
            # Deepgram's live and pre-recorded protocols, on every engine above.
            "deepgram_compatible": {"listen": "/v1/listen"},
            "limits": {
                "max_sessions": s.max_sessions,
                "max_chunk_bytes": s.max_chunk_bytes,
                "ws_max_bad_frames_per_minute": s.ws_max_bad_frames,
                "max_request_bytes": s.max_request_bytes,
                "max_subscribers_per_session": s.max_subscribers,
                "max_audio_lead_s": s.max_audio_lead_s,
                "max_session_s": s.max_session_s,
                "header_timeout_s": s.header_timeout_s,
                "idle_timeout_s": s.idle_timeout_s,
                "replay_events": s.replay_events,
                "subscriber_queue": s.subscriber_queue,
                "key_max_sessions": s.key_max_sessions,
                "key_sessions_per_minute": s.key_sessions_per_minute,
                "token_max_ttl_s": s.token_max_ttl_s,
                "listen_inactivity_s": s.listen_inactivity_s,
                "max_file_bytes": s.max_file_bytes,
                "encodings": ["linear16", "mulaw", "alaw"],
                "containers": ["WAV", "Ogg", "WebM", "MP3", "FLAC"],
                "max_channels": 8,
                "sample_rate_hz": {"min": 8000, "max": 96000},
            },
            "sessions": {"live": registry.live_count},
            # Whether sessions may ask for a summary, and of which model (never the URL or key).
            "summary": None
            if registry.summarizer is None
            else {"model": registry.summarizer.model, "timeout_s": s.llm_timeout_s},
            # Shared with other processes on Redis: which process answered (never the URL).
            "cluster": None
            if registry.cluster is None
            else {"node": registry.cluster.node_id, "lease_s": s.lease_s},
            # Whether callers need a credential, never which: no key id or secret here.
            "auth": {
                "mode": "keys" if s.api_keys else ("off" if s.no_auth else "open"),
                "cors_origins": s.cors_origins,
            },
        }
    )


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document (built once per process from the pydantic models)."""
    return web.json_response(_spec())


@cache
def _spec() -> dict[str, Any]:
    return build_spec()


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of the gateway's metrics (see stt_gateway.metrics); an API
    key (not a token) when auth is on."""
    caller(request).require_key()
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@routes.get("/ready")
async def ready(request: web.Request) -> web.Response:
    """Readiness: 200 when every engine worker process is alive and every configured engine
    can take a session (Deepgram: its host reachable); else 503 with what is missing."""
    alive = request.app[WORKERS].alive()
    providers = request.app[REGISTRY].providers
    reasons = await asyncio.gather(*(p.not_ready_reason() for p in providers.values()))
    engines = {name: r is None or r for name, r in zip(providers, reasons, strict=True)}
    configured = [
        r
        for p, r in zip(providers.values(), reasons, strict=True)
        if p.unavailable_reason() is None
    ]
    ok = alive and bool(configured) and all(r is None for r in configured)
    return web.json_response(
        {"ready": ok, "engine_workers_alive": alive, "engines": engines}, status=200 if ok else 503
    )


@routes.get("/usage")
async def usage(request: web.Request) -> web.Response:
    """A short usage guide (Markdown) with copyable examples, for this host."""
    guide = resources.files("stt_gateway").joinpath("usage.md").read_text(encoding="utf-8")
    base = f"{request.scheme}://{request.host}"
    return web.Response(text=guide.replace("{BASE}", base), content_type="text/markdown")


STATIC_DIR = web.AppKey("static_dir", Path)


def find_static_dir() -> Path:
    """The mic page's files: ``static/`` beside the package in a checkout, else where
    ``pip install`` put them (``<prefix>/share/stt-gateway/static``)."""
    checkout = Path(__file__).resolve().parents[2] / "static"
    return checkout if checkout.is_dir() else Path(sys.prefix) / "share" / "stt-gateway" / "static"


@routes.get("/")
async def index(request: web.Request) -> web.FileResponse:
    """The mic page (``static/index.html``); ``?follow=<id>`` makes it a read-only view."""
    return web.FileResponse(request.app[STATIC_DIR] / "index.html")
