"""Fixtures: a real gateway on loopback, an HTTP client, and direct in-process engine results."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from stt_gateway.app import create_app, start_cluster
from stt_gateway.engines.local import DEFAULT_ENDPOINTING_MS, LocalEngineProvider, warm_decoders
from stt_gateway.engines.runtime import EngineRuntime, RuntimeOptions
from stt_gateway.engines.whisper import (
    WhisperEngineProvider,
    WhisperRecognizerSpec,
    finals_in_process,
)
from stt_gateway.engines.whisper_model import LoadModel, find_model
from stt_gateway.engines.workers import WorkerPool
from stt_gateway.events import FinalData
from stt_gateway.models import SessionConfig
from stt_gateway.settings import Settings
from tests.audio_files import Clip
from tests.gateway_process import GatewayProcess
from tests.llama_server import LlamaServer
from tests.redis_server import RedisServer
from tests.tcp_proxy import CuttableProxy
from tests.timing import budget

ServerFactory = Callable[..., Coroutine[Any, Any, TestServer]]
StartGateway = Callable[..., Coroutine[Any, Any, "Gateway"]]


@dataclass
class Gateway:
    base: str
    app: web.Application


MODULE_MARKS = {
    "test_deepgram_sdk": "sdk",
    "test_deepgram_js": "sdk",
    "test_deepgram_v3": "sdk",
    "test_bench": "bench",
}
"""Tests marked by the module they are in."""

FIXTURE_MARKS = {"launch": "browser", "redis_server": "cluster", "llama_server": "llm"}
"""Tests marked by a fixture they use (directly or through another fixture)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that need a browser, an SDK, Redis, llama.cpp or a benchmark run
    (markers in setup.cfg): ``pytest -m "not (browser or sdk or cluster or llm or bench)"``
    is the fast loop, CI runs everything."""
    for item in items:
        marks = {MODULE_MARKS.get(item.path.stem, "")}
        fixtures = getattr(item, "fixturenames", ())
        marks |= {mark for fixture, mark in FIXTURE_MARKS.items() if fixture in fixtures}
        for mark in sorted(marks - {""}):
            item.add_marker(mark)


def make_settings(**overrides: Any) -> Settings:
    """Settings for tests: no ``.env`` from the developer's directory."""
    return Settings(_env_file=None, **overrides)


@pytest.fixture(autouse=True)
def collect_leaks() -> Iterator[None]:
    """Collect garbage when each test ends: a socket it leaked warns (and fails) in that
    test's teardown, not in whichever later test the collector happens to run in."""
    yield
    gc.collect()


@pytest.fixture(scope="session")
def engine_runtime() -> Iterator[EngineRuntime]:
    """The engine worker processes for the whole run, warm: every gateway whose settings ask
    for the same processes uses these (spawning and warming its own cost each test ~2–3 s of
    CPU). Tests that stop, kill or starve workers ask for other options and get their own."""
    runtime = EngineRuntime(RuntimeOptions.of(make_settings()))

    async def warm() -> None:
        runtime.workers.warm(warm_decoders)
        await runtime.workers.ready()
        load = LoadModel(find_model(None).path)
        runtime.pass_workers.start()
        await asyncio.gather(
            *(runtime.pass_workers.warm_worker(i, load) for i in range(runtime.pass_workers.size))
        )

    asyncio.run(warm())
    yield runtime
    asyncio.run(runtime.close())


def runtime_for(settings: Settings, shared: EngineRuntime) -> EngineRuntime | None:
    """``shared`` when ``settings`` ask for its processes, else None (the app's own)."""
    return shared if RuntimeOptions.of(settings) == shared.options else None


@pytest.fixture
async def start_gateway(
    aiohttp_server: ServerFactory, engine_runtime: EngineRuntime
) -> Callable[..., Coroutine[Any, Any, Gateway]]:
    """Start a gateway (real aiohttp server on 127.0.0.1, free port) with given settings."""

    async def start(**overrides: Any) -> Gateway:
        settings = make_settings(**overrides)
        app = create_app(settings, runtime=runtime_for(settings, engine_runtime))
        server = await aiohttp_server(app)
        return Gateway(base=str(server.make_url("")).rstrip("/"), app=app)

    return start


@pytest.fixture
async def gateway(start_gateway: StartGateway) -> Gateway:
    """A gateway with default settings on the embedded local engine."""
    return await start_gateway()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=budget(120))) as session:
        yield session


@cache
def direct_finals(clip: Clip, config: SessionConfig | None = None) -> list[FinalData]:
    """The local engine's finals for ``clip`` fed whole, in-process: no gateway in between."""
    config = (config or SessionConfig()).model_copy(update={"sample_rate": clip.sample_rate})
    recognizer = LocalEngineProvider.spec(config).build()
    results = recognizer.process(clip.pcm) + recognizer.close()
    return [r for r in results if isinstance(r, FinalData)]


@cache
def direct_whisper_finals(clip: Clip, **overrides: Any) -> list[FinalData]:
    """Engine ``whisper``'s finals for ``clip`` (16 kHz) fed whole, in-process: pocketsphinx
    finds the utterances, the gateway's own Whisper pass makes each final (``overrides``:
    settings)."""
    settings = make_settings(**overrides)
    whisper = WhisperEngineProvider(WorkerPool(1), WorkerPool(1), settings).whisper_pass("en")
    recognizer = WhisperRecognizerSpec(
        16_000, DEFAULT_ENDPOINTING_MS, True, settings.whisper_early_pass_ms
    ).build()
    return finals_in_process(recognizer.process(clip.pcm) + recognizer.close(), whisper)


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """llama.cpp's OpenAI-compatible server with SmolLM2-135M-Instruct, for the whole run."""
    with (tmp_path_factory.mktemp("llama") / "server.log").open("wb") as log:
        server = LlamaServer(log)
        server.start()
        yield server
        server.stop()


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A redis-server of this test's own on a free loopback port."""
    server = RedisServer(tmp_path)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def start_process(
    redis_server: RedisServer,
) -> AsyncIterator[Callable[..., Coroutine[Any, Any, GatewayProcess]]]:
    """Start gateway processes sharing ``redis_server``; each stopped (SIGTERM) at the end."""
    started: list[GatewayProcess] = []

    async def start(workers: int = 1, **settings: object) -> GatewayProcess:
        process = GatewayProcess(redis_server.url, workers, **settings)
        started.append(process)
        await process.start()
        return process

    yield start
    await asyncio.gather(*(p.stop() for p in started))


@pytest.fixture
async def shared_gateway(
    aiohttp_server: ServerFactory, redis_server: RedisServer, engine_runtime: EngineRuntime
) -> AsyncIterator[Gateway]:
    """Two gateways sharing sessions on ``redis_server``, behind a round-robin balancer: each
    new connection goes to the other one, so a session's requests land on both."""
    settings = make_settings(redis_url=redis_server.url)
    apps = [create_app(settings, runtime=engine_runtime) for _ in range(2)]
    servers = [await aiohttp_server(app) for app in apps]
    for app, server in zip(apps, servers, strict=True):
        await start_cluster(app, str(server.make_url("")).rstrip("/"))
    balancer = CuttableProxy([server.port for server in servers if server.port is not None])
    await balancer.start()
    yield Gateway(base=f"http://127.0.0.1:{balancer.port}", app=apps[0])
    await balancer.close()
