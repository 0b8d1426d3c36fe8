"""The ``stt-gateway`` command (also ``python -m stt_gateway``): serve the gateway."""

from __future__ import annotations

import argparse
import logging

from aiohttp import web

from . import __version__
from .app import create_app
from .settings import Settings


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` and serve until interrupted. Flags override ``STT_GATEWAY_*`` settings."""
    parser = argparse.ArgumentParser(
        prog="stt-gateway", description="Real-time speech-to-text gateway."
    )
    parser.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port (default 8000)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING, …")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    settings = Settings(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # No access log below DEBUG: audio POSTs would make it a per-chunk log.
    debug = settings.log_level.upper() == "DEBUG"
    access_log = logging.getLogger("aiohttp.access") if debug else None
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=access_log,
        print=lambda msg: logging.getLogger("stt_gateway").info("%s", msg),
    )
