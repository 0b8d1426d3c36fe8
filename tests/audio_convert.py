"""The shared clips as clients send them: containers, telephony and stereo, made in the test
with PyAV (no checked-in binaries)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import av
import numpy as np

from tests.audio_files import Clip


@dataclass(frozen=True)
class Converted:
    """A clip in one format: the bytes a client sends, the session config it sends them
    with, and the byte count a raw chunk must be a multiple of (1: any split)."""

    data: bytes
    config: dict[str, Any]
    frame_bytes: int = 1


# name → (PyAV muxer, codec, codec rate Hz or None for the clip's)
CONTAINERS: dict[str, tuple[str, str, int | None]] = {
    "wav": ("wav", "pcm_s16le", None),
    "ogg-opus": ("ogg", "libopus", 48_000),
    "webm-opus": ("webm", "libopus", 48_000),
    "mp3": ("mp3", "libmp3lame", None),
    "flac": ("flac", "flac", None),
}
MP3_BIT_RATE = 64_000
"""Bits per second of the MP3s the tests make (mono speech)."""
TELEPHONY = {"mulaw": ("mulaw", "pcm_mulaw"), "alaw": ("alaw", "pcm_alaw")}
STEREO = ("stereo-wav-left", "stereo-raw-right")
FORMATS = (*CONTAINERS, *TELEPHONY, *STEREO)


def encode(
    samples: np.ndarray[Any, Any],
    rate: int,
    muxer: str,
    codec: str,
    out_rate: int | None = None,
    layout: str = "mono",
) -> bytes:
    """PCM16 ``samples`` (shape ``(channels, n)``) at ``rate`` Hz → ``codec`` in ``muxer``."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=muxer) as box:
        stream = box.add_stream(codec, rate=out_rate or rate, layout=layout)
        assert isinstance(stream, av.AudioStream)
        if codec == "libmp3lame":
            # What speech is commonly sent at; left unset, the encoder's default follows the
            # FFmpeg build in the av wheel (and Whisper tiny misheard a clip at a newer one's).
            stream.codec_context.bit_rate = MP3_BIT_RATE
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples.T.reshape(1, -1)), format="s16", layout=layout
        )
        frame.sample_rate = rate
        fmt = stream.codec_context.format.name  # the codec's sample format (Opus: flt)
        resampler = av.AudioResampler(format=fmt, layout=layout, rate=out_rate or rate)
        for piece in [*resampler.resample(frame), *resampler.resample(None)]:
            box.mux(stream.encode(piece))
        box.mux(stream.encode(None))
    return buf.getvalue()


def convert(clip: Clip, name: str) -> Converted:
    """``clip`` as format ``name`` (one of :data:`FORMATS`)."""
    mono = np.frombuffer(clip.pcm, dtype="<i2").reshape(1, -1)
    rate = clip.sample_rate
    if name in CONTAINERS:
        muxer, codec, out_rate = CONTAINERS[name]
        return Converted(encode(mono, rate, muxer, codec, out_rate), {})
    if name in TELEPHONY:
        muxer, codec = TELEPHONY[name]
        data = encode(mono, rate, muxer, codec, 8000)
        return Converted(data, {"encoding": name, "sample_rate": 8000})
    silence = np.zeros_like(mono)
    if name == "stereo-wav-left":
        data = encode(np.vstack([mono, silence]), rate, "wav", "pcm_s16le", layout="stereo")
        return Converted(data, {})
    if name == "stereo-raw-right":
        interleaved = np.vstack([silence, mono]).T.astype("<i2").tobytes()
        return Converted(interleaved, {"channels": 2, "sample_rate": rate}, frame_bytes=4)
    raise ValueError(name)
