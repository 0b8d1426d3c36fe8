"""A session's audio intake: which connection holds the audio, and its bytes made PCM16.

One producer at a time: the first connection that feeds with a ``producer`` identity holds
the session's audio until it is released; audio from anyone else meanwhile raises
``ProducerConflict`` (two streams interleaved into one recogniser would garble both). HTTP
POSTs (``producer`` ``None``) feed only while no connection holds it. A connection's bytes are
one stream (:class:`~stt_gateway.audio.stream.AudioStream`: PCM16 as it is, G.711, more channels, or
a container sniffed from its first bytes); another connection's bytes start another stream,
and what the previous one's decoder still held is heard first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from .audio.stream import AudioStream
from .errors import ProducerConflict, UnsupportedAudio
from .models import SessionConfig


class Ingest:
    """The intake of one session.

    Args:
        session_id: for messages.
        config: the session's resolved config (encoding, channels, sample rate).
        max_chunk_bytes: the largest chunk a stream takes (bytes).
        hear: gives decoded PCM16 (session rate) to the engine.
        on_lost: told of a stream whose end could not be decoded once its producer had gone
            (every subscriber should learn why the end was not heard).
    """

    def __init__(
        self,
        session_id: str,
        config: SessionConfig,
        max_chunk_bytes: int,
        hear: Callable[[bytes], Awaitable[None]],
        on_lost: Callable[[UnsupportedAudio], None],
    ) -> None:
        self._id = session_id
        self._hear = hear
        self._on_lost = on_lost
        self.producer: object | None = None
        """The connection holding the session's audio, if any."""
        self._stream = AudioStream(
            config.encoding,
            config.channels,
            config.sample_rate,
            config.sample_rate,
            max_chunk_bytes,
            config.multichannel,
        )
        self._decoding = asyncio.Lock()  # one chunk at a time through a stateful decoder
        self._owner: object | None = None  # whose bytes the stream holds (None: POSTs)

    @property
    def passthrough(self) -> bool:
        """Whether chunks are PCM16 at the session's rate, used as they are (the fast path)."""
        return self._stream.passthrough

    def check(self, producer: object | None, doing: str = "send audio") -> None:
        """Raise ProducerConflict unless ``producer`` may ``doing`` now."""
        if self.producer is not None and producer is not self.producer:
            raise ProducerConflict(
                f"session {self._id} takes its audio from another connection (one producer "
                f"per session); only that connection may {doing} until it closes."
            )

    async def follow(self, producer: object | None) -> None:
        """Make ``producer``'s bytes the stream (ending another's first)."""
        if producer is not self._owner:
            # Another connection's bytes are another stream (e.g. POSTed PCM, then a socket
            # sending WebM): end the one before, so the new one is recognised afresh.
            await self.drain()
            self._owner = producer

    async def decode(self, data: bytes, check_open: Callable[[], None]) -> bytes:
        """Decode ``data`` (the next chunk of the stream) and hear it; the PCM16 it gave.

        Raises:
            UnsupportedAudio: not audio the gateway decodes (what the stream held before it
                went bad is heard first).
            SessionClosed: from ``check_open``, the session closed while this chunk waited.
        """
        async with self._decoding:
            check_open()
            try:
                pcm = await self._stream.decode(data)
            except UnsupportedAudio as exc:
                if exc.decoded:
                    await self._hear(exc.decoded)
                raise
            if pcm:
                await self._hear(pcm)
            return pcm

    async def release(self, producer: object) -> None:
        """``producer`` no longer streams: its decoder's last samples are heard, and anyone
        may feed next (a new stream)."""
        if self.producer is producer:
            self.producer = None
            await self.drain()

    async def drain(self) -> None:
        """End the current byte stream: the decoder's last samples are heard."""
        async with self._decoding:
            try:
                pcm = await self._stream.drain()
            except UnsupportedAudio as exc:
                self._on_lost(exc)
                pcm = exc.decoded
            if pcm:
                await self._hear(pcm)

    def close(self) -> None:
        """Free the decoder."""
        self._stream.close()
