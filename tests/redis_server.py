"""Debian's ``redis-server`` on a free loopback port, for the tests of several gateway
processes sharing sessions (the README's test command installs it)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from pathlib import Path

from tests.timing import budget

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A ``redis-server`` with no persistence (a restart loses everything, the worst case),
    in ``workdir``; :meth:`restart` kills it and starts it on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._workdir = workdir
        self._process: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start it and wait until it says it accepts connections."""
        process = self._process = await asyncio.create_subprocess_exec(
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._workdir),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert process.stdout is not None
        async with asyncio.timeout(budget(30)):
            async for line in process.stdout:
                if b"Ready to accept connections" in line:
                    break
            else:
                raise RuntimeError(f"redis-server exited with {await process.wait()}")
        self._drain = asyncio.create_task(drain(process.stdout))

    async def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            await self._process.wait()
            self._process = None
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain

    async def restart(self) -> None:
        await self.stop()
        await self.start()


async def drain(stream: asyncio.StreamReader) -> None:
    """Read a child's log to its end, so the child never blocks on a full pipe."""
    while await stream.read(65536):
        pass
