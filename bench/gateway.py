"""The gateway as the load benchmarks run it: an instant in-process engine, optional uvloop.

The instant engine answers every fed chunk at once, in the event loop, with one interim whose
``end`` is the session audio time the chunk reaches (s), and closes an utterance with a final
every ``FINAL_EVERY_S`` of audio. Its own time is ~zero, so what a benchmark measures on it is
the gateway's: transports, session, event log, fan-out. It is registered as ``local`` (so a
default session config uses it); ``deepgram`` stays the real adapter.

Run: ``python bench/gateway.py --port 8000 [--uvloop] [--engine instant|local] [--gc off|log]``;
settings come from ``STT_GATEWAY_*`` as for ``stt-gateway``. With ``STT_GATEWAY_REDIS_URL`` it is
one of several processes sharing the port (``SO_REUSEPORT``) and sessions on that Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import raise_fd_limit  # noqa: E402
from stt_gateway.app import Providers, create_app, tune_collector  # noqa: E402
from stt_gateway.cli import serve_shared  # noqa: E402
from stt_gateway.engines.base import Engine, EngineProvider  # noqa: E402
from stt_gateway.engines.local import LocalEngineProvider  # noqa: E402
from stt_gateway.engines.runtime import EngineRuntime  # noqa: E402
from stt_gateway.engines.whisper import WhisperEngineProvider  # noqa: E402
from stt_gateway.events import EngineResult, FinalData, TokenData  # noqa: E402
from stt_gateway.fronts.deepgram.upstream import DeepgramProvider  # noqa: E402
from stt_gateway.models import SessionConfig  # noqa: E402
from stt_gateway.settings import Settings  # noqa: E402

FINAL_EVERY_S = 2.0
# A realistic interim: a few words of text, not an empty string.
_TEXT = "the quick brown fox jumps over the lazy dog"


class InstantEngine(Engine):
    """One interim per fed chunk, a final every :data:`FINAL_EVERY_S` s of audio; no CPU work.

    Results wait in a bounded queue (``maxsize`` results), so a session whose results are not
    taken pushes back on ``feed`` as a real engine would.
    """

    def __init__(self, sample_rate: int, maxsize: int = 256) -> None:
        self._bytes_per_s = sample_rate * 2
        self._results: asyncio.Queue[EngineResult | None] = asyncio.Queue(maxsize)
        self._bytes = 0
        self._utterance_start = 0.0

    async def start(self) -> None:
        return None

    async def feed(self, pcm: bytes) -> None:
        self._bytes += len(pcm)
        end = self._bytes / self._bytes_per_s
        if end - self._utterance_start >= FINAL_EVERY_S:
            await self._results.put(self._final(end))
        else:
            await self._results.put(
                TokenData(text=_TEXT, confidence=0.9, start=self._utterance_start, end=end)
            )

    async def finalize(self) -> None:
        await self._results.put(self._final(self._bytes / self._bytes_per_s))

    async def close(self) -> None:
        await self.finalize()
        await self._results.put(None)

    async def results(self) -> AsyncIterator[EngineResult]:
        while (result := await self._results.get()) is not None:
            yield result

    def _final(self, end: float) -> FinalData:
        final = FinalData(
            text=_TEXT,
            confidence=0.9,
            start=self._utterance_start,
            end=end,
            words=[],
            speech_final=True,
        )
        self._utterance_start = end
        return final


class InstantProvider(EngineProvider):
    """Makes :class:`InstantEngine` streams; registered as ``local``."""

    name = "local"

    @property
    def languages(self) -> list[str]:
        return ["en-US"]

    def unavailable_reason(self) -> str | None:
        return None

    def resolve(self, config: SessionConfig) -> SessionConfig:
        return config.model_copy(update={"language": config.language or "en-US"})

    def create(self, config: SessionConfig) -> Engine:
        return InstantEngine(config.sample_rate)


def providers(settings: Settings, engine: str) -> Providers:
    """The engine table for ``create_app``: ``local`` is the instant engine or the real one;
    ``whisper`` and ``deepgram`` are the real ones."""

    def make(runtime: EngineRuntime) -> dict[str, EngineProvider]:
        workers = runtime.workers
        local = InstantProvider() if engine == "instant" else LocalEngineProvider(workers)
        return {
            "local": local,
            "whisper": WhisperEngineProvider(workers, runtime.pass_workers, settings),
            "deepgram": DeepgramProvider(settings),
        }

    return make


def watch_gc(min_ms: float = 10.0) -> None:
    """Print every garbage collection that pauses the process ``min_ms`` or longer (stderr)."""
    started = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        pause_ms = (time.perf_counter() - started[0]) * 1000
        if pause_ms >= min_ms:
            print(
                f"gc: generation {info['generation']} paused {pause_ms:.1f} ms, "
                f"{len(gc.get_objects())} objects tracked",
                file=sys.stderr,
                flush=True,
            )

    gc.callbacks.append(callback)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--engine", choices=("instant", "local"), default="instant")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop's event loop")
    parser.add_argument(
        "--gc",
        choices=("on", "off", "log"),
        default="on",
        help="off: no garbage collector (a counterfactual, memory grows); log: print pauses",
    )
    args = parser.parse_args()
    if args.gc == "off":
        gc.disable()
    elif args.gc == "log":
        watch_gc()
    raise_fd_limit()
    settings = Settings(port=args.port)
    logging.basicConfig(level=settings.log_level.upper())
    loop: asyncio.AbstractEventLoop | None = None
    if args.uvloop:
        import uvloop

        loop = uvloop.new_event_loop()
    app = create_app(settings, providers(settings, args.engine))
    tune_collector(app)
    if settings.redis_url is not None:  # one of several processes on one port and Redis
        asyncio.run(serve_shared(app, settings, reuse_port=True))
        return
    web.run_app(
        app,
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        backlog=4096,  # thousands of subscribers connect at once in bench/fanout
        loop=loop,
    )


if __name__ == "__main__":
    main()
