"""The ``stt-gateway`` command (also ``python -m stt_gateway``).

``serve`` (the default) runs the gateway; ``stream FILE`` sends an audio file as it is (WAV,
Ogg, WebM, MP3, FLAC, or raw PCM16 / G.711) to a running gateway and prints its transcript;
``follow SESSION_ID`` prints a session's events.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from aiohttp import web
from pydantic import ValidationError

from . import __version__
from .app import create_app
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
        config = {k: v for k, v in (("engine", args.engine), ("language", args.language)) if v}
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
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("stt_gateway").info("%s", auth_mode(settings))
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
