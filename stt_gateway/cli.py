"""The ``stt-gateway`` command (also ``python -m stt_gateway``).

``serve`` (the default) runs the gateway; ``stream FILE`` sends an audio file as it is (WAV,
Ogg, WebM, MP3, FLAC, or raw PCM16 / G.711) to a running gateway and prints its transcript;
``follow SESSION_ID`` prints a session's events.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
from pathlib import Path

from aiohttp import web
from pydantic import ValidationError
from yarl import URL

from . import __version__
from .app import create_app, start_cluster, tune_collector
from .auth import SCOPES
from .client import follow_session, mint_token, stream_file
from .settings import Settings

COMMANDS = ("serve", "stream", "follow", "token")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stt-gateway", description="Real-time speech-to-text gateway."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command")

    serve = sub.add_parser("serve", help="run the gateway (the default)")
    serve.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="TCP port (default 8000)")
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING, …")
    serve.add_argument(
        "--no-auth",
        action="store_true",
        default=None,
        help="serve a non-loopback address without API keys (protected mode refuses otherwise)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        help="processes sharing the port (SO_REUSEPORT); more than 1 needs "
        "STT_GATEWAY_REDIS_URL (default 1)",
    )
    serve.add_argument(
        "--default-engine",
        choices=("local", "whisper", "deepgram"),
        help="engine of sessions that name none (default local)",
    )

    token = sub.add_parser(
        "token", help="mint a token from a gateway (a key needed) and print it and a page link"
    )
    token.add_argument("--url", default="http://127.0.0.1:8000", help="the gateway")
    token.add_argument(
        "--api-key",
        default=os.environ.get("STT_GATEWAY_API_KEY"),
        help="API key (default: STT_GATEWAY_API_KEY)",
    )
    token.add_argument(
        "--scope",
        action="append",
        choices=SCOPES,
        help="what the token may do (repeatable; default sessions:create)",
    )
    token.add_argument("--session-id", help="the session a session:* scope is for")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime (s)")

    for name, what in (
        ("stream", "stream an audio file (WAV, Ogg, WebM, MP3, FLAC or raw) to a gateway"),
        ("follow", "print a session's events (resumes after drops)"),
    ):
        p = sub.add_parser(name, help=what)
        p.add_argument("--url", default="http://127.0.0.1:8000", help="the gateway")
        p.add_argument("--json", action="store_true", help="one JSON event per line")
        p.add_argument(
            "--api-key",
            default=os.environ.get("STT_GATEWAY_API_KEY"),
            help="API key or token (default: STT_GATEWAY_API_KEY)",
        )
        if name == "stream":
            p.add_argument("file", type=Path)
            p.add_argument(
                "--fast", action="store_true", help="send as fast as possible, not in real time"
            )
            p.add_argument(
                "--encoding",
                choices=("linear16", "mulaw", "alaw"),
                default="linear16",
                help="encoding of a raw file (no container); e.g. mulaw for telephony",
            )
            p.add_argument(
                "--rate", type=int, default=16_000, help="sample rate (Hz) of a raw file"
            )
            p.add_argument(
                "--channels", type=int, default=1, help="interleaved channels of a raw file"
            )
            p.add_argument("--engine", help="local, whisper or deepgram (default: the gateway's)")
            p.add_argument("--language", help="BCP-47 tag, e.g. ko")
            p.add_argument(
                "--summary",
                action="store_true",
                help="end with the gateway's LLM summary (printed after the transcript)",
            )
        else:
            p.add_argument("session_id")
    return parser


def settings_errors(exc: ValidationError) -> list[str]:
    """One line per bad setting: its environment variable, what it takes, what was wrong.

    The value itself is not repeated (it may be a secret).
    """
    lines = []
    for err in exc.errors(include_url=False):
        name = str(err["loc"][0]) if err["loc"] else ""
        field = Settings.model_fields.get(name)
        variable = name if name.isupper() else f"STT_GATEWAY_{name.upper()}"
        takes = f" (takes: {field.description})" if field and field.description else ""
        lines.append(f"{variable}: {err['msg']}{takes}")
    return lines


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` and run the command. Flags override ``STT_GATEWAY_*`` settings."""
    args_in = sys.argv[1:] if argv is None else argv
    if not args_in or (
        args_in[0] not in COMMANDS and args_in[0] not in ("-h", "--help", "--version")
    ):
        args_in = ["serve", *args_in]  # `stt-gateway --port 9000` means serve
    args = _parser().parse_args(args_in)
    if args.command == "stream":
        config: dict[str, object] = {
            k: v for k, v in (("engine", args.engine), ("language", args.language)) if v
        }
        if args.summary:
            config["summary"] = True
        sys.exit(
            asyncio.run(
                stream_file(
                    args.url.rstrip("/"),
                    args.file,
                    fast=args.fast,
                    as_json=args.json,
                    raw=(args.encoding, args.rate, args.channels),
                    config=config,
                    api_key=args.api_key,
                )
            )
        )
    if args.command == "token":
        sys.exit(
            asyncio.run(
                mint_token(
                    args.url.rstrip("/"),
                    args.api_key,
                    args.scope or ["sessions:create"],
                    args.session_id,
                    args.ttl,
                )
            )
        )
    if args.command == "follow":
        sys.exit(
            asyncio.run(
                follow_session(
                    args.url.rstrip("/"), args.session_id, as_json=args.json, api_key=args.api_key
                )
            )
        )
    serve(args)


def auth_mode(settings: Settings) -> str:
    """The startup line saying who may call (key ids and count, never a secret)."""
    keys = settings.keys()
    if keys:
        return f"auth on: {len(keys)} API key(s) ({', '.join(k.id for k in keys)})"
    if settings.no_auth:
        return f"auth off (--no-auth): anyone who reaches {settings.host} may call"
    return "open mode: no API key, loopback only; foreign Origin and Host refused"


def serve(args: argparse.Namespace) -> None:
    """Run the gateway. A bad setting exits with status 2 and one line per setting."""
    overrides = {k: v for k, v in vars(args).items() if k != "command" and v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        for line in settings_errors(exc):
            print(f"stt-gateway: {line}", file=sys.stderr)
        sys.exit(2)
    if (refusal := settings.protected_mode_refusal()) is not None:
        print(f"stt-gateway: {refusal}", file=sys.stderr)
        sys.exit(2)
    if settings.workers > 1:
        sys.exit(_run_workers(settings))
    _configure_logging(settings)
    logging.getLogger("stt_gateway").info("%s", auth_mode(settings))
    app = create_app(settings)
    tune_collector(app)
    if settings.redis_url is not None:
        asyncio.run(serve_shared(app, settings, reuse_port=False))
        return
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        access_log=_access_log(settings),
        print=lambda msg: logging.getLogger("stt_gateway").info("%s", msg),
    )


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(process)d %(levelname)s %(name)s %(message)s",
    )


def _access_log(settings: Settings) -> logging.Logger | None:
    # No access log below DEBUG: audio POSTs would make it a per-chunk log.
    debug = settings.log_level.upper() == "DEBUG"
    return logging.getLogger("aiohttp.access") if debug else None


async def serve_shared(app: web.Application, settings: Settings, reuse_port: bool) -> None:
    """Serve ``app`` as one of the processes sharing sessions on ``settings.redis_url``, until
    SIGINT or SIGTERM.

    Besides the public address (shared with the other workers when ``reuse_port``), the
    process listens on a port of its own (``node_url``; default: a free port on ``host``, as
    ``http://127.0.0.1:<port>`` on a loopback or wildcard host): the address other processes
    pass this one's sessions' audio to, which must reach this process and no other.

    Raises:
        OSError: an address cannot be bound; redis.exceptions.RedisError: Redis cannot be
            reached at start.
    """
    runner = web.AppRunner(app, access_log=_access_log(settings), handle_signals=False)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        # A deep accept queue: thousands of subscribers may connect at once.
        public = web.TCPSite(
            runner, settings.host, settings.port, reuse_port=reuse_port, backlog=4096
        )
        await public.start()
        own = URL(settings.node_url) if settings.node_url else None
        private = web.TCPSite(runner, settings.host, own.port if own else 0)
        await private.start()
        port = runner.addresses[-1][1]  # the private site's, started last
        host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        node_url = settings.node_url or f"http://{host}:{port}"
        await start_cluster(app, node_url)
        logging.getLogger("stt_gateway").info(
            "serving on http://%s:%d (this process: %s)", settings.host, settings.port, node_url
        )
        await stop.wait()
    finally:
        await runner.cleanup()


def _worker(settings: Settings) -> None:
    """One of ``--workers`` processes (spawned)."""
    _configure_logging(settings)
    app = create_app(settings)
    tune_collector(app)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_shared(app, settings, reuse_port=True))


def _run_workers(settings: Settings) -> int:
    """Run ``settings.workers`` processes on one port; until SIGINT or SIGTERM, which each
    gets too. Returns the exit status (1 if a worker failed)."""
    _configure_logging(settings)
    logging.getLogger("stt_gateway").info(
        "%s; %d worker processes", auth_mode(settings), settings.workers
    )
    spawn = multiprocessing.get_context("spawn")
    one = settings.model_copy(update={"workers": 1})
    workers = [spawn.Process(target=_worker, args=(one,)) for _ in range(settings.workers)]
    for worker in workers:
        worker.start()

    def forward(signum: int, _frame: object) -> None:
        for worker in workers:
            if worker.pid is not None and worker.is_alive():
                os.kill(worker.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for worker in workers:
        worker.join()
    return 0 if all(w.exitcode == 0 for w in workers) else 1
