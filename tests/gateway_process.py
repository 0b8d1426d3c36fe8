"""Gateway processes (``python -m stt_gateway serve``) sharing sessions on one Redis, as a
deployment runs them: separate interpreters, separate engines, killable."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys

from tests.redis_server import drain, free_port
from tests.timing import budget


class GatewayProcess:
    """One ``stt-gateway serve`` process on a free port, started by :meth:`start`.

    Args:
        redis_url: the shared Redis.
        workers: ``--workers``: processes serving the port (each says when it serves).
        settings: more ``STT_GATEWAY_*`` settings, by setting name (``lease_s=1``).
    """

    def __init__(self, redis_url: str, workers: int = 1, **settings: object) -> None:
        self._workers = workers
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self._env = {
            **os.environ,
            "STT_GATEWAY_REDIS_URL": redis_url,
            "STT_GATEWAY_PORT": str(self.port),
            "STT_GATEWAY_ENGINE_PROCESSES": "1",
            **{f"STT_GATEWAY_{k.upper()}": str(v) for k, v in settings.items()},
        }
        self._process: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start it and wait until it serves (its log says so)."""
        process = self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "stt_gateway", "serve", "--workers", str(self._workers),
            env=self._env,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert process.stderr is not None
        lines: list[bytes] = []
        serving = 0
        async with asyncio.timeout(budget(60)):
            async for line in process.stderr:
                lines.append(line)
                serving += b"serving on" in line
                if serving == self._workers:
                    break
            else:
                log = b"".join(lines).decode(errors="replace")
                raise RuntimeError(f"gateway exited with {await process.wait()}:\n{log}")
        self._drain = asyncio.create_task(drain(process.stderr))

    def kill(self) -> None:
        """SIGKILL: no shutdown, no goodbye to Redis."""
        assert self._process is not None
        self._process.kill()

    async def stop(self) -> None:
        """SIGTERM (a graceful shutdown), or reap it after :meth:`kill`."""
        if self._process is not None:
            if self._process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self._process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(budget(30)):
                    await self._process.wait()
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain
