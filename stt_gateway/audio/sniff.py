"""What a stream's first bytes say: which container it is (WAV, Ogg, WebM, MP3, FLAC), what
else it plainly is (a zip, a PDF, an image), and a WAV header's format."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

from ..errors import UnsupportedAudio


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
