"""A container decoded by PyAV (FFmpeg's libraries inside the ``av`` wheel) on a thread of its
own, fed as bytes arrive (a live WebM has no sizes and cannot be seeked:
``docs/protocols/mediarecorder-webm.md``), then mixed to mono and resampled with soxr."""

from __future__ import annotations

import asyncio
import threading
from typing import IO, cast

import av

from ..errors import UnsupportedAudio
from .pcm import Int16Array, Resampler, keeps_channels
from .sniff import Container


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


_AVIO_BUFFER = 4096
"""Bytes PyAV asks for at a time (its default, 32 KB, is larger than a live stream's frames)."""
_OPEN_OPTIONS = {"probesize": "32", "analyzeduration": "0"}
_FIRST_FRAME_WITHIN = 256 * 1024
"""Bytes a container may take before its first decoded audio (a demuxer fed garbage after
a valid header keeps looking for a sync point; a live stream would never end it)."""
"""The format is known from the magic bytes: no probing ahead, which holds up the first frame
of MP3 and of non-PCM WAV by several KB. (``fflags=nobuffer`` was tried: it loses frames.)"""


class FFmpegDecoder:
    """A container decoded by PyAV on a thread of its own, fed as bytes arrive.

    The thread reads through a file object whose ``read`` blocks until bytes come (returning
    ``b""`` would mean the end); each :meth:`decode` hands bytes over and waits until the
    thread wants more (or ends), then returns what it decoded. Decoding (and the resampling
    after it) runs off the event loop.
    """

    def __init__(self, container: Container, out_rate: int, out_channels: int) -> None:
        self._container = container
        self._out_rate = out_rate
        self._out_channels = out_channels
        self._cond = threading.Condition()
        self._in = bytearray()
        self._eof = False
        self._out: list[bytes] = []
        self._error: str | None = None
        self._done = False
        self._consumed = 0
        self._decoded = 0  # samples out so far
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self._thread: threading.Thread | None = None

    # -- the event loop's side

    async def decode(self, data: bytes) -> bytes:
        """Hand ``data`` to the decoder; the PCM it decoded from it (and earlier bytes).

        Raises:
            UnsupportedAudio: FFmpeg could not read the stream.
        """
        return await self._hand(data, eof=False)

    async def drain(self) -> bytes:
        """End of stream: what the demuxer, decoder and resampler still hold."""
        if self._thread is None:
            return b""
        return await self._hand(b"", eof=True)

    def abandon(self) -> None:
        """Stop the thread without waiting for it (the stream is thrown away)."""
        with self._cond:
            self._eof = True
            self._in.clear()
            self._cond.notify()

    async def _hand(self, data: bytes, *, eof: bool) -> bytes:
        waiter = self._loop.create_future()
        with self._cond:
            if self._done:  # the container ended (its last page or frame): nothing follows
                waiter.set_result(None)
            self._waiter = waiter
            self._in += data
            self._eof = eof
            starting = self._thread is None
            self._cond.notify()
        if starting:
            self._thread = threading.Thread(
                target=self._run, name=f"decode-{self._container.av_format}", daemon=True
            )
            self._thread.start()
        await waiter
        with self._cond:
            out, self._out = self._out, []
            error = self._error
            if eof and error is None and not self._decoded:
                error = f"the {self._container.name} stream held no audio ({self._consumed} bytes)"
        if error is not None:
            raise UnsupportedAudio(error, b"".join(out))
        return b"".join(out)

    # -- the thread's side

    def _wake(self) -> None:
        """The thread waits for bytes or has ended: let :meth:`_hand` return (lock held)."""
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            self._loop.call_soon_threadsafe(_resolve, waiter)

    def read(self, size: int = -1) -> bytes:
        """The file object PyAV reads: blocks until bytes come; ``b""`` only at the end."""
        with self._cond:
            while not self._in and not self._eof:
                self._wake()
                self._cond.wait()
            if not self._decoded and self._consumed > _FIRST_FRAME_WITHIN:
                self._error = (
                    f"no {self._container.name} audio could be decoded from the first "
                    f"{self._consumed} bytes"
                )
                return b""  # the end, for FFmpeg
            n = len(self._in) if size < 0 else min(size, len(self._in))
            chunk = bytes(self._in[:n])
            del self._in[:n]
            self._consumed += n
            return chunk

    def _run(self) -> None:
        name = self._container.name
        resampler: Resampler | None = None
        try:
            with av.open(
                cast(IO[bytes], self),
                mode="r",
                format=self._container.av_format,
                buffer_size=_AVIO_BUFFER,
                options=_OPEN_OPTIONS,
            ) as box:
                if not box.streams.audio:
                    raise UnsupportedAudio(f"the {name} stream has no audio track")
                stream = box.streams.audio[0]
                n = self._out_channels
                if n > 1:
                    keeps_channels(stream.codec_context.channels, n)
                # Packed s16 in the session's layout: mono (mixed), or its channels as they are.
                packed = av.AudioResampler(format="s16", layout="mono" if n == 1 else n)
                for packet in box.demux(stream):
                    for frame in packet.decode():
                        for piece in packed.resample(frame):
                            shape = (-1,) if n == 1 else (-1, n)
                            samples = cast(Int16Array, piece.to_ndarray().reshape(shape))
                            if resampler is None and piece.sample_rate != self._out_rate:
                                resampler = Resampler(piece.sample_rate, self._out_rate, n)
                            if resampler is not None:
                                samples = resampler.process(samples)
                            self._emit(samples)
                if resampler is not None:
                    self._emit(resampler.flush())
        except UnsupportedAudio as exc:
            self._fail(exc.message)
        except (av.FFmpegError, ValueError, IndexError) as exc:
            self._fail(f"the {name} stream cannot be decoded past byte {self._consumed}: {exc}")
        finally:
            with self._cond:
                self._done = True
                self._wake()

    def _emit(self, samples: Int16Array) -> None:
        if samples.size:
            with self._cond:
                self._decoded += samples.size
                self._out.append(samples.astype("<i2", copy=False).tobytes())

    def _fail(self, message: str) -> None:
        with self._cond:
            if self._error is None:  # the first cause, not FFmpeg's "end of file" after it
                self._error = message
