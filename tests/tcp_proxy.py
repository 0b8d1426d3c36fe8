"""A loopback TCP proxy whose connections a test can cut, as a network hiccup would."""

from __future__ import annotations

import asyncio
import contextlib


class CuttableProxy:
    """Forwards 127.0.0.1:<port> to ``target_port`` (several: each new connection to the next
    in turn, as a round-robin load balancer); :meth:`cut` aborts every open connection (both
    sides), new ones keep working. ``requests`` holds each client connection's first bytes
    (its HTTP request head)."""

    def __init__(self, target_port: int | list[int]) -> None:
        self._targets = target_port if isinstance(target_port, list) else [target_port]
        self._connections = 0
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._server: asyncio.Server | None = None
        self.requests: list[bytes] = []
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target = self._targets[self._connections % len(self._targets)]
        self._connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        pair = (writer, up_writer)
        self._pairs.add(pair)
        first = True

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, log: bool) -> None:
            nonlocal first
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    if log and first:
                        self.requests.append(data)
                        first = False
                    dst.write(data)
                    await dst.drain()
            dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))
        finally:
            self._pairs.discard(pair)

    def cut(self) -> int:
        """Abort every open connection; returns how many were cut."""
        pairs = list(self._pairs)
        for client, upstream in pairs:
            client.transport.abort()
            upstream.transport.abort()
        return len(pairs)

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
