"""The embedded engine on its own: chunking does not matter, reused decoders decode like new
ones, and other sample rates are resampled."""

from __future__ import annotations

import numpy as np
import soxr

from stt_gateway.engines.local import DecoderPool, LocalRecognizer
from stt_gateway.engines.pooled import RecognizerOutput
from stt_gateway.events import FinalData, SpeechEndData, SpeechStartData
from tests.audio_files import clip, clips, wer
from tests.gateway_client import frames


def recognize(
    pool: DecoderPool, pcm: bytes, rate: int = 16_000, frame_ms: int = 0
) -> list[RecognizerOutput]:
    rec = LocalRecognizer(input_rate=rate, endpointing_ms=500, interim_results=True, pool=pool)
    chunks = frames(pcm, rate, frame_ms) if frame_ms else [pcm]
    out: list[RecognizerOutput] = []
    for chunk in chunks:
        out += rec.process(chunk)
    return out + rec.close()


def test_results_do_not_depend_on_how_the_audio_is_chunked() -> None:
    c = clip("librivox-sns-0890")
    whole = recognize(DecoderPool(0), c.pcm)
    assert recognize(DecoderPool(0), c.pcm, frame_ms=20) == whole
    assert recognize(DecoderPool(0), c.pcm, frame_ms=250) == whole


def test_a_reused_decoder_decodes_exactly_like_a_new_one() -> None:
    a, b = clip("librivox-sns-0870"), clip("librivox-sns-0920")
    fresh = recognize(DecoderPool(0), a.pcm)
    pool = DecoderPool(1)
    recognize(pool, b.pcm)
    assert recognize(pool, a.pcm) == fresh


def test_every_utterance_is_bracketed_by_speech_start_and_speech_end() -> None:
    for c in clips():
        kinds = [type(r) for r in recognize(DecoderPool(1), c.pcm)]
        starts = [i for i, k in enumerate(kinds) if k is SpeechStartData]
        ends = [i for i, k in enumerate(kinds) if k is SpeechEndData]
        assert len(starts) == len(ends) >= 1
        assert all(s < e for s, e in zip(starts, ends, strict=True))


def test_48khz_input_is_resampled_and_recognised() -> None:
    c = clip("librivox-sns-0920")
    samples = np.frombuffer(c.pcm, dtype="<i2")
    pcm48 = soxr.resample(samples, 16_000, 48_000).astype("<i2").tobytes()
    text16 = " ".join(r.text for r in recognize(DecoderPool(0), c.pcm) if isinstance(r, FinalData))
    text48 = " ".join(
        r.text
        for r in recognize(DecoderPool(0), pcm48, rate=48_000, frame_ms=20)
        if isinstance(r, FinalData)
    )
    wer16, wer48 = wer(c.reference, text16), wer(c.reference, text48)
    print(f"\nWER at 16 kHz {wer16:.3f}, from 48 kHz {wer48:.3f}: {text48!r}")
    assert wer48 <= wer16 + 0.1
