"""The decode stage: bytes as clients send them → PCM16 mono at the session's sample rate.

``docs/api.md`` v2, "Audio in, beyond linear16". One :class:`AudioStream` per byte stream (a
producer's WebSocket, or a session's POST chunks):

- ``linear16`` mono at the session's rate is the fast path: the chunk itself, no copy.
- ``mulaw`` / ``alaw`` (ITU-T G.711) decode by a 256-entry table; more than one channel is
  mixed to mono (the mean); a rate other than the session's is resampled with soxr.
- A container is recognised from the stream's first bytes (:func:`sniff`): WAV with 16-bit
  PCM is read here (header parsed, samples passed on); every other WAV, Ogg (Opus, Vorbis,
  FLAC), WebM/Matroska (Opus), MP3 and FLAC is demuxed and decoded by PyAV (FFmpeg's
  libraries inside the ``av`` wheel) on a thread of its own, fed as bytes arrive (a live
  WebM has no sizes and cannot be seeked: ``docs/mediarecorder-webm.md``), then mixed to
  mono and resampled with soxr. A stream split at any byte boundary decodes the same.
- Bytes that are plainly no audio (a zip, a PDF, an image) or a container the gateway does
  not stream (MP4) raise :class:`~stt_gateway.errors.UnsupportedAudio` naming what they
  looked like; so does a container FFmpeg cannot decode. The stream then starts over at the
  next container header: bytes before it (the rest of the bad stream) are refused too,
  never heard as raw samples.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from dataclasses import dataclass
from typing import IO, Literal, cast

import av
import numpy as np

from .audio import BYTES_PER_SAMPLE, Int16Array, Resampler, check_chunk
from .errors import OddByteCount, UnsupportedAudio

Encoding = Literal["linear16", "mulaw", "alaw"]


# -- G.711 ------------------------------------------------------------------------------------


def _mulaw_table() -> Int16Array:
    """μ-law byte → linear PCM16 (ITU-T G.711 §3, the bias-33 expansion)."""
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    magnitude = (((u & 0x0F) << 3) + 0x84) << exponent
    return np.where(u & 0x80, 0x84 - magnitude, magnitude - 0x84).astype(np.int16)


def _alaw_table() -> Int16Array:
    """A-law byte → linear PCM16 (ITU-T G.711 §2; even bits inverted on the line)."""
    a = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << (exponent - 1)
    )
    return np.where(a & 0x80, magnitude, -magnitude).astype(np.int16)


_G711 = {"mulaw": _mulaw_table(), "alaw": _alaw_table()}


# -- what the first bytes say -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Container:
    """A container recognised from its first bytes.

    Attributes:
        name: how messages name it (``WAV``, ``Ogg``, ``WebM``, ``MP3``, ``FLAC``).
        av_format: FFmpeg's demuxer for it (given up front, so no probing delays the first
            frame).
    """

    name: str
    av_format: str


MP3 = Container("MP3", "mp3")

_MAGIC: list[tuple[bytes, Container | str]] = [
    (b"RIFF", Container("WAV", "wav")),
    (b"OggS", Container("Ogg", "ogg")),
    (b"\x1a\x45\xdf\xa3", Container("WebM", "matroska")),
    (b"fLaC", Container("FLAC", "flac")),
    (b"ID3", MP3),
    (b"PK\x03\x04", "a zip archive"),
    (b"%PDF", "a PDF document"),
    (b"\x89PNG", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x1f\x8b", "gzip-compressed data"),
    (b"\x7fELF", "an executable"),
]
"""Magic bytes at offset 0: a container to decode, or what the bytes are instead (refused)."""

SNIFF_BYTES = 8
"""What :func:`sniff` needs to see of a stream's start (MP4's ``ftyp`` ends at byte 8)."""


def _mp3_frame(head: bytes) -> bool:
    """Whether ``head`` starts with an MPEG audio Layer III frame header (ISO/IEC 11172-3
    §2.4.2.3): 11 sync bits, a defined version, layer III, a real bitrate and sample rate.
    Strict, so that raw PCM is not taken for MP3 by chance."""
    if len(head) < 3 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    version, layer = (head[1] >> 3) & 0x03, (head[1] >> 1) & 0x03
    bitrate, rate = head[2] >> 4, (head[2] >> 2) & 0x03
    return version != 1 and layer == 1 and bitrate not in (0, 15) and rate != 3


def sniff(head: bytes) -> Container | str | Literal[False] | None:
    """What a stream that starts with ``head`` holds.

    Returns:
        a :class:`Container`; a description (``str``) of bytes that are no audio the gateway
        takes; ``None``: none of these, so raw samples; ``False``: ``head`` is too short to
        tell (it is the start of a magic), send more.
    """
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
        if len(head) < len(magic) and magic.startswith(head):
            return False
    if len(head) >= 8 and head[4:8] == b"ftyp":
        return "an MP4/M4A file (it cannot be streamed: its index is at the end)"
    if _mp3_frame(head):
        return MP3
    if len(head) < 3 and head[:1] == b"\xff" and (len(head) < 2 or head[1] & 0xE0 == 0xE0):
        return False
    return None


def describe(head: bytes | bytearray) -> str:
    """``head``'s first bytes as a message shows them."""
    return head[:12].hex(" ") if head else "nothing"


# -- WAV ------------------------------------------------------------------------------------

_WAV_HEADER_MAX = 64 * 1024
"""A WAV header longer than this (bytes, before the data chunk) is not taken."""


@dataclass(frozen=True, slots=True)
class WavFormat:
    """What a WAV header says: ``pcm16`` whether its samples are 16-bit PCM (read here)."""

    sample_rate: int
    channels: int
    pcm16: bool
    data_offset: int


def wav_header(buf: bytes | bytearray) -> WavFormat | None:
    """The format of a RIFF/WAVE stream once ``buf`` holds its header up to the ``data``
    chunk; None while it may still come.

    Raises:
        UnsupportedAudio: not RIFF/WAVE, the header is over 64 KB, or its format is impossible.
    """
    if not (buf[:4] == b"RIFF" and (len(buf) < 12 or buf[8:12] == b"WAVE")):
        raise UnsupportedAudio(f"the stream is RIFF but not WAVE (it starts {describe(buf)})")
    pos, fmt = 12, None
    while len(buf) >= pos + 8:
        chunk_id, size = bytes(buf[pos : pos + 4]), int.from_bytes(buf[pos + 4 : pos + 8], "little")
        if chunk_id == b"data":
            if fmt is None:
                raise UnsupportedAudio("the WAV's data chunk comes before its fmt chunk")
            return WavFormat(fmt[0], fmt[1], fmt[2], pos + 8)
        if len(buf) < pos + 8 + size:
            break
        if chunk_id == b"fmt ":
            if size < 16:
                raise UnsupportedAudio("the WAV's fmt chunk is too short")
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", buf[pos + 8 : pos + 24])
            if not 1 <= channels <= 8 or not 1000 <= rate <= 384_000:
                raise UnsupportedAudio(f"the WAV says {channels} channels at {rate} Hz")
            fmt = (rate, channels, tag in (1, 0xFFFE) and bits == 16)
        pos += 8 + size + (size & 1)
    if len(buf) > _WAV_HEADER_MAX:
        raise UnsupportedAudio("the WAV's header does not end within 64 KB")
    return None


# -- decoders -----------------------------------------------------------------------------


class _Raw:
    """Raw samples (PCM16 or G.711), any channel count, any rate → PCM16 at ``out_rate``,
    mixed to mono unless ``keep`` (then interleaved as they came).

    Each chunk must hold whole frames (one sample per channel).
    """

    def __init__(
        self, encoding: Encoding, channels: int, in_rate: int, out_rate: int, keep: bool
    ) -> None:
        self._table = _G711.get(encoding)
        self._sample_bytes = BYTES_PER_SAMPLE if self._table is None else 1
        self._channels = channels
        self._mix = channels > 1 and not keep
        out_channels = 1 if self._mix else channels
        self._resampler = (
            Resampler(in_rate, out_rate, out_channels) if in_rate != out_rate else None
        )

    def decode(self, data: bytes) -> bytes:
        frame = self._sample_bytes * self._channels
        if len(data) % frame:
            raise OddByteCount(
                f"the audio chunk has {len(data)} bytes, not a whole number of {frame}-byte "
                f"frames ({self._channels} channel(s) of {self._sample_bytes}-byte samples)"
            )
        if self._table is None:
            samples: Int16Array = np.frombuffer(data, dtype="<i2")
        else:
            samples = self._table[np.frombuffer(data, dtype=np.uint8)]
        return self._finish(samples)

    def _finish(self, samples: Int16Array) -> bytes:
        if self._channels > 1:
            samples = samples.reshape(-1, self._channels)
            if self._mix:
                samples = samples.mean(axis=1).astype(np.int16)
        if self._resampler is not None:
            samples = self._resampler.process(samples)
        return samples.astype("<i2", copy=False).tobytes()

    def drain(self) -> bytes:
        return b"" if self._resampler is None else self._resampler.flush().tobytes()


class _Wav:
    """A WAV stream: the header is parsed here; 16-bit PCM samples are passed on, any other
    sample format goes to FFmpeg. Bytes split at any boundary (a frame's bytes may straddle
    two chunks)."""

    def __init__(self, out_rate: int, out_channels: int) -> None:
        self._out_rate = out_rate
        self._out_channels = out_channels
        self._head = bytearray()
        self._carry = b""
        self.body: _Raw | None = None
        self.delegate: bytes | None = None
        """Set when FFmpeg must decode it: every byte so far, to hand over."""

    def decode(self, data: bytes) -> bytes:
        if self.body is None:
            self._head += data
            found = wav_header(self._head)
            if found is None:
                return b""
            if not found.pcm16:
                self.delegate = bytes(self._head)
                return b""
            keep = _keeps(found.channels, self._out_channels)
            self._frame = BYTES_PER_SAMPLE * found.channels
            self.body = _Raw("linear16", found.channels, found.sample_rate, self._out_rate, keep)
            data, self._head = bytes(self._head[found.data_offset :]), bytearray()
        if self._carry:
            data = self._carry + data
        cut = len(data) - len(data) % self._frame
        self._carry = data[cut:]
        return self.body.decode(data[:cut]) if cut else b""

    def drain(self) -> bytes:
        return b"" if self.body is None else self.body.drain()


_AVIO_BUFFER = 4096
"""Bytes PyAV asks for at a time (its default, 32 KB, is larger than a live stream's frames)."""
_OPEN_OPTIONS = {"probesize": "32", "analyzeduration": "0"}
_FIRST_FRAME_WITHIN = 256 * 1024
"""Bytes a container may take before its first decoded audio (a demuxer fed garbage after
a valid header keeps looking for a sync point; a live stream would never end it)."""
"""The format is known from the magic bytes: no probing ahead, which holds up the first frame
of MP3 and of non-PCM WAV by several KB. (``fflags=nobuffer`` was tried: it loses frames.)"""


class _FFmpeg:
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
                    _keeps(stream.codec_context.channels, n)
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


def _keeps(channels: int, out_channels: int) -> bool:
    """Whether a stream of ``channels`` keeps them (a multichannel session of
    ``out_channels``; 1: mixed to mono).

    Raises:
        UnsupportedAudio: a multichannel session given another channel count.
    """
    if out_channels == 1:
        return False
    if channels != out_channels:
        raise UnsupportedAudio(
            f"the stream has {channels} channel(s); this multichannel session transcribes "
            f"{out_channels}"
        )
    return True


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class AudioStream:
    """One byte stream of audio → PCM16 mono at ``out_rate`` (see the module docstring).

    One call at a time: the caller serialises :meth:`decode` and :meth:`drain` (the stream's
    decoders keep state from chunk to chunk).

    Args:
        encoding: what raw bytes are (``linear16``, ``mulaw``, ``alaw``); a container's first
            bytes overrule it (``linear16`` only: G.711 bytes have no magic to mistake).
        channels: channels of raw audio, interleaved.
        sample_rate: Hz of raw audio.
        out_rate: Hz of the PCM16 returned (the session's).
        max_chunk_bytes: the largest chunk taken.
        multichannel: keep ``channels`` channels (PCM16 out interleaved, each channel a
            stream of its own); a container must hold as many. Otherwise mixed to mono.
    """

    def __init__(
        self,
        encoding: Encoding,
        channels: int,
        sample_rate: int,
        out_rate: int,
        max_chunk_bytes: int,
        multichannel: bool = False,
    ) -> None:
        self._encoding = encoding
        self._channels = channels
        self._out_channels = channels if multichannel else 1
        self._rate = sample_rate
        self._out_rate = out_rate
        self._max = max_chunk_bytes
        self._head = b""
        self._raw: _Raw | None = None
        self._wav: _Wav | None = None
        self._ffmpeg: _FFmpeg | None = None
        self._failed: str | None = None  # why the stream went bad; cleared by a new header
        self.passthrough = False
        """True once the stream is known to be ``linear16`` mono at ``out_rate``: a chunk
        that passes :func:`~stt_gateway.audio.check_chunk` is its own PCM (the fast path)."""
        if encoding != "linear16":
            self._raw = self._raw_decoder(encoding)

    def _raw_decoder(self, encoding: Encoding) -> _Raw:
        keep = self._out_channels > 1
        return _Raw(encoding, self._channels, self._rate, self._out_rate, keep)

    async def decode(self, data: bytes) -> bytes:
        """PCM16 mono at ``out_rate`` from the next ``data`` of the stream (may be ``b""``
        while a header is still coming).

        Raises:
            EmptyAudio, ChunkTooLarge: the chunk is empty or over the limit.
            OddByteCount: raw ``linear16`` that is not whole 2-byte samples.
            UnsupportedAudio: bytes that are no audio taken here (what was decoded before the
                failure is the error's ``decoded``); the stream starts over.
        """
        if self.passthrough or (self._raw is not None and self._encoding == "linear16"):
            check_chunk(data, self._max)  # raw PCM16 keeps v1's checks, odd counts refused
        else:
            check_chunk(data, self._max, whole_samples=False)
        try:
            return await self._decode(data)
        except UnsupportedAudio as exc:
            self._reset()
            self._failed = exc.message
            raise

    async def _decode(self, data: bytes) -> bytes:
        if self.passthrough:
            return data
        if self._raw is not None:
            return self._raw.decode(data)
        if self._wav is not None:
            pcm = self._wav.decode(data)
            if self._wav.delegate is None:
                return pcm
            held, self._wav = self._wav.delegate, None
            self._ffmpeg = _FFmpeg(Container("WAV", "wav"), self._out_rate, self._out_channels)
            return await self._ffmpeg.decode(held)
        if self._ffmpeg is not None:
            return await self._ffmpeg.decode(data)
        return await self._sniffed(data)

    async def _sniffed(self, data: bytes) -> bytes:
        head = self._head + data
        what = sniff(head[:SNIFF_BYTES])
        if what is False:
            self._head = head
            return b""
        self._head = b""
        if self._failed is not None and not isinstance(what, Container):
            # The rest of a stream that went bad is not heard as raw samples: only a new
            # container's header starts the stream over.
            raise UnsupportedAudio(
                f"this stream could not be decoded ({self._failed}); start a new one with "
                f"its container header, or on a new connection"
            )
        self._failed = None
        if isinstance(what, str):
            raise UnsupportedAudio(f"these bytes look like {what}, not audio ({describe(head)})")
        if what is None:
            if len(head) % BYTES_PER_SAMPLE:
                raise OddByteCount(
                    f"the audio chunk has {len(head)} bytes, an odd count: raw PCM16 needs 2 "
                    f"bytes per sample, and the chunk starts with no container's magic bytes "
                    f"({describe(head)}; WAV, Ogg, WebM, MP3 and FLAC are recognised)"
                )
            if self._channels == 1 and self._rate == self._out_rate:
                self.passthrough = True
                return head
            self._raw = self._raw_decoder("linear16")
            return self._raw.decode(head)
        if what.av_format == "wav":
            self._wav = _Wav(self._out_rate, self._out_channels)
            return await self._decode(head)
        self._ffmpeg = _FFmpeg(what, self._out_rate, self._out_channels)
        return await self._ffmpeg.decode(head)

    async def drain(self) -> bytes:
        """End of stream: the PCM still held in a decoder or resampler (then the stream
        starts over: the next bytes are sniffed afresh).

        Raises:
            UnsupportedAudio: FFmpeg failed on the stream's last bytes, or the stream held no
                audio at all (what it decoded before the failure is the error's ``decoded``).
        """
        try:
            if self._ffmpeg is not None:
                return await self._ffmpeg.drain()
            if self._wav is not None:
                return self._wav.drain()
            if self._raw is not None:
                return self._raw.drain()
            return b""
        finally:
            self._reset()

    def _reset(self) -> None:
        if self._ffmpeg is not None:
            self._ffmpeg.abandon()
        self._head, self._wav, self._ffmpeg = b"", None, None
        self.passthrough = False
        self._raw = None if self._encoding == "linear16" else self._raw_decoder(self._encoding)

    def close(self) -> None:
        """Throw the stream away (its decoder thread ends)."""
        self._reset()
