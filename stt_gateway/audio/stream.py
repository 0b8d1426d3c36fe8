"""The decode stage: bytes as clients send them → PCM16 mono at the session's sample rate.

``docs/api.md``, "Audio in, beyond linear16". One :class:`AudioStream` per byte stream (a
producer's WebSocket, or a session's POST chunks):

- ``linear16`` mono at the session's rate is the fast path: the chunk itself, no copy.
- ``mulaw`` / ``alaw`` (ITU-T G.711) decode by a 256-entry table; more than one channel is
  mixed to mono (the mean); a rate other than the session's is resampled with soxr.
- A container is recognised from the stream's first bytes (:func:`sniff`): WAV with 16-bit
  PCM is read here (header parsed, samples passed on); every other WAV, Ogg (Opus, Vorbis,
  FLAC), WebM/Matroska (Opus), MP3 and FLAC is demuxed and decoded by PyAV (FFmpeg's
  libraries inside the ``av`` wheel) on a thread of its own, fed as bytes arrive (a live
  WebM has no sizes and cannot be seeked: ``docs/protocols/mediarecorder-webm.md``), then mixed to
  mono and resampled with soxr. A stream split at any byte boundary decodes the same.
- Bytes that are plainly no audio (a zip, a PDF, an image) or a container the gateway does
  not stream (MP4) raise :class:`~stt_gateway.errors.UnsupportedAudio` naming what they
  looked like; so does a container FFmpeg cannot decode. The stream then starts over at the
  next container header: bytes before it (the rest of the bad stream) are refused too,
  never heard as raw samples.
"""

from __future__ import annotations

from ..errors import OddByteCount, UnsupportedAudio
from .ffmpeg import FFmpegDecoder
from .pcm import BYTES_PER_SAMPLE, Encoding, RawDecoder, check_chunk, keeps_channels
from .sniff import SNIFF_BYTES, Container, describe, sniff, wav_header


class WavDecoder:
    """A WAV stream: the header is parsed here; 16-bit PCM samples are passed on, any other
    sample format goes to FFmpeg. Bytes split at any boundary (a frame's bytes may straddle
    two chunks)."""

    def __init__(self, out_rate: int, out_channels: int) -> None:
        self._out_rate = out_rate
        self._out_channels = out_channels
        self._head = bytearray()
        self._carry = b""
        self.body: RawDecoder | None = None
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
            keep = keeps_channels(found.channels, self._out_channels)
            self._frame = BYTES_PER_SAMPLE * found.channels
            self.body = RawDecoder(
                "linear16", found.channels, found.sample_rate, self._out_rate, keep
            )
            data, self._head = bytes(self._head[found.data_offset :]), bytearray()
        if self._carry:
            data = self._carry + data
        cut = len(data) - len(data) % self._frame
        self._carry = data[cut:]
        return self.body.decode(data[:cut]) if cut else b""

    def drain(self) -> bytes:
        return b"" if self.body is None else self.body.drain()


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
        self._raw: RawDecoder | None = None
        self._wav: WavDecoder | None = None
        self._ffmpeg: FFmpegDecoder | None = None
        self._failed: str | None = None  # why the stream went bad; cleared by a new header
        self.passthrough = False
        """True once the stream is known to be ``linear16`` mono at ``out_rate``: a chunk
        that passes :func:`~stt_gateway.audio.pcm.check_chunk` is its own PCM (the fast path)."""
        if encoding != "linear16":
            self._raw = self._raw_decoder(encoding)

    def _raw_decoder(self, encoding: Encoding) -> RawDecoder:
        keep = self._out_channels > 1
        return RawDecoder(encoding, self._channels, self._rate, self._out_rate, keep)

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
            self._ffmpeg = FFmpegDecoder(
                Container("WAV", "wav"), self._out_rate, self._out_channels
            )
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
            self._wav = WavDecoder(self._out_rate, self._out_channels)
            return await self._decode(head)
        self._ffmpeg = FFmpegDecoder(what, self._out_rate, self._out_channels)
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
