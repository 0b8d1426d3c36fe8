"""PCM16 (linear16) chunk checks and streaming resampling.

PCM16 here is signed 16-bit little-endian, mono: 2 bytes per sample.
"""

from __future__ import annotations

import base64
import binascii

import numpy as np
import numpy.typing as npt
import soxr

from .errors import BadBase64, ChunkTooLarge, EmptyAudio, OddByteCount

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
