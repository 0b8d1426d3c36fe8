"""The embedded engine on its own: chunking does not matter, reused decoders decode like new
ones, and other sample rates are resampled."""

from __future__ import annotations

import numpy as np
import soxr

from stt_gateway.engines.local import LocalRecognizer, LocalResources, local_resources
from stt_gateway.engines.recognizer import RecognizerOutput, UtteranceAudio, UtterancePause
from stt_gateway.events import FinalData, SpeechEndData, SpeechStartData
from tests.audio_files import clip, clips, wer
from tests.gateway_client import frames


def recognize(
    pool: LocalResources, pcm: bytes, rate: int = 16_000, frame_ms: int = 0
) -> list[RecognizerOutput]:
    rec = LocalRecognizer(input_rate=rate, endpointing_ms=500, interim_results=True, resources=pool)
    chunks = frames(pcm, rate, frame_ms) if frame_ms else [pcm]
    out: list[RecognizerOutput] = []
    for chunk in chunks:
        out += rec.process(chunk)
    return out + rec.close()


def test_results_do_not_depend_on_how_the_audio_is_chunked() -> None:
    c = clip("librivox-sns-0890")
    whole = recognize(local_resources(0), c.pcm)
    assert recognize(local_resources(0), c.pcm, frame_ms=20) == whole
    assert recognize(local_resources(0), c.pcm, frame_ms=250) == whole


def test_a_reused_decoder_decodes_exactly_like_a_new_one() -> None:
    a, b = clip("librivox-sns-0870"), clip("librivox-sns-0920")
    fresh = recognize(local_resources(0), a.pcm)
    pool = local_resources(1)
    recognize(pool, b.pcm)
    assert recognize(pool, a.pcm) == fresh


def test_every_utterance_is_bracketed_by_speech_start_and_speech_end() -> None:
    for c in clips():
        kinds = [type(r) for r in recognize(local_resources(1), c.pcm)]
        starts = [i for i, k in enumerate(kinds) if k is SpeechStartData]
        ends = [i for i, k in enumerate(kinds) if k is SpeechEndData]
        assert len(starts) == len(ends) >= 1
        assert all(s < e for s, e in zip(starts, ends, strict=True))


def test_48khz_input_is_resampled_and_recognised() -> None:
    c = clip("librivox-sns-0920")
    samples = np.frombuffer(c.pcm, dtype="<i2")
    pcm48 = soxr.resample(samples, 16_000, 48_000).astype("<i2").tobytes()
    text16 = " ".join(
        r.text for r in recognize(local_resources(0), c.pcm) if isinstance(r, FinalData)
    )
    text48 = " ".join(
        r.text
        for r in recognize(local_resources(0), pcm48, rate=48_000, frame_ms=20)
        if isinstance(r, FinalData)
    )
    wer16, wer48 = wer(c.reference, text16), wer(c.reference, text48)
    print(f"\nWER at 16 kHz {wer16:.3f}, from 48 kHz {wer48:.3f}: {text48!r}")
    assert wer48 <= wer16 + 0.1


def test_a_pause_hands_back_the_utterance_so_far_and_the_endpoint_says_if_it_still_holds() -> None:
    first, second = clip("goforward"), clip("librivox-sns-0880")

    def run(pcm: bytes, endpointing_ms: int = 500) -> list[RecognizerOutput]:
        rec = LocalRecognizer(
            input_rate=16_000,
            endpointing_ms=endpointing_ms,
            interim_results=False,
            resources=local_resources(0),
            keep_audio=True,
            pause_ms=200,
        )
        return rec.process(pcm) + rec.close()

    # Speech, then a second of silence: the pause comes first, and only silence follows it.
    out = [o for o in run(first.pcm + bytes(32_000)) if type(o) in (UtterancePause, UtteranceAudio)]
    assert [type(o) for o in out] == [UtterancePause, UtteranceAudio]
    pause, ended = out
    assert isinstance(pause, UtterancePause)
    assert isinstance(ended, UtteranceAudio)
    assert ended.after_pause
    assert ended.pcm.startswith(pause.pcm)
    # The endpoint came ~300 ms (500 - 200, whole 32 ms windows) of silence after the pause.
    assert 9_000 <= len(ended.pcm) - len(pause.pcm) <= 11_000
    assert pause.start_s == ended.start_s
    # More speech after a pause, before the endpointing silence (here 1.5 s) is reached: that
    # pause no longer holds, and the utterance's audio runs on through the second clip.
    out = run(first.pcm + bytes(9_600) + second.pcm + bytes(64_000), endpointing_ms=1500)
    ended_at = [o for o in out if isinstance(o, UtteranceAudio)]
    paused_at = [o for o in out if isinstance(o, UtterancePause)]
    assert len(ended_at) == 1
    assert len(paused_at) >= 2  # one in the gap, one after the second clip
    assert ended_at[0].pcm.startswith(paused_at[0].pcm)
    assert len(ended_at[0].pcm) > len(paused_at[0].pcm) + len(second.pcm)
    assert ended_at[0].after_pause  # the last pause, after the second clip, still holds
