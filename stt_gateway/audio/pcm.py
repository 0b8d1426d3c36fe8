"""PCM16 (linear16) and G.711 samples: chunk checks, base64, streaming resampling, and the
raw-sample decoder (any encoding, channel count and rate → PCM16 at the session's rate).

PCM16 here is signed 16-bit little-endian, mono: 2 bytes per sample.
"""

from __future__ import annotations

import base64
import binascii
from typing import Literal

import numpy as np
import numpy.typing as npt
import soxr

from ..errors import BadBase64, ChunkTooLarge, EmptyAudio, OddByteCount, UnsupportedAudio

BYTES_PER_SAMPLE = 2

Int16Array = npt.NDArray[np.int16]


def check_chunk(chunk: bytes, max_bytes: int, *, whole_samples: bool = True) -> None:
    """Check that ``chunk`` can be PCM16 audio (``whole_samples``) or any audio bytes.

    Raises:
        EmptyAudio: ``chunk`` has no bytes.
        ChunkTooLarge: ``chunk`` has more than ``max_bytes`` bytes.
        OddByteCount: ``whole_samples`` and ``len(chunk)`` is odd, so it cannot hold whole
            2-byte samples.
    """
    size = len(chunk)
    if size == 0:
        raise EmptyAudio("the audio chunk is empty")
    if size > max_bytes:
        raise ChunkTooLarge(f"the audio chunk has {size} bytes; the limit is {max_bytes}")
    if whole_samples and size % BYTES_PER_SAMPLE:
        raise OddByteCount(
            f"the audio chunk has {size} bytes, an odd count: PCM16 needs 2 bytes per sample"
        )


def decode_base64(text: str) -> bytes:
    """Decode standard base64 (RFC 4648 §4, padding required), refusing any stray character.

    Raises:
        BadBase64: ``text`` is not valid base64.
    """
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadBase64(f"audio_data is not valid base64: {exc}") from exc


def duration_ms(n_bytes: int, sample_rate: int) -> float:
    """Milliseconds of mono PCM16 audio in ``n_bytes`` bytes at ``sample_rate`` Hz."""
    return n_bytes / BYTES_PER_SAMPLE * 1000.0 / sample_rate


class Resampler:
    """Streaming PCM16 sample-rate conversion (libsoxr via ``soxr.ResampleStream``, HQ).

    Keeps filter state between chunks, so chunk boundaries leave no clicks; the output lags
    the input by the filter's delay (a few ms) until :meth:`flush`. Works in float32: soxr
    dithers int16 output with random noise, so the same samples would come out a bit or two
    different each time; in float32 the output depends only on the samples, however they are
    cut into chunks.
    """

    def __init__(self, in_rate: int, out_rate: int, channels: int = 1) -> None:
        self._stream = soxr.ResampleStream(in_rate, out_rate, channels, dtype="float32")
        self._empty = np.zeros((0, channels) if channels > 1 else 0, dtype=np.float32)

    def process(self, samples: Int16Array) -> Int16Array:
        """Resample one chunk of int16 samples (shape ``(n,)``, or ``(n, channels)``);
        returns the samples ready so far, in the same shape."""
        return _to_int16(self._stream.resample_chunk(samples.astype(np.float32)))

    def flush(self) -> Int16Array:
        """Return the samples still held in the filter (end of stream)."""
        return _to_int16(self._stream.resample_chunk(self._empty, last=True))


def _to_int16(samples: npt.NDArray[np.float32]) -> Int16Array:
    out: Int16Array = np.clip(np.rint(samples), -32768, 32767).astype(np.int16)
    return out


Encoding = Literal["linear16", "mulaw", "alaw"]


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


G711_TABLES = {"mulaw": _mulaw_table(), "alaw": _alaw_table()}


def keeps_channels(channels: int, out_channels: int) -> bool:
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


class RawDecoder:
    """Raw samples (PCM16 or G.711), any channel count, any rate → PCM16 at ``out_rate``,
    mixed to mono unless ``keep`` (then interleaved as they came).

    Each chunk must hold whole frames (one sample per channel).
    """

    def __init__(
        self, encoding: Encoding, channels: int, in_rate: int, out_rate: int, keep: bool
    ) -> None:
        self._table = G711_TABLES.get(encoding)
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
