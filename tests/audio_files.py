"""The shared speech corpus (``../shared/audio``): 16 kHz mono PCM16 WAVs with reference texts."""

from __future__ import annotations

import re
import wave
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import jiwer
from num2words import num2words

AUDIO_DIR = Path(__file__).resolve().parents[2] / "shared" / "audio"


@dataclass(frozen=True)
class Clip:
    name: str
    pcm: bytes
    sample_rate: int
    reference: str

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 2 / self.sample_rate


@cache
def clips() -> tuple[Clip, ...]:
    """Every WAV in the shared corpus with its reference transcript, sorted by name."""
    found = []
    for path in sorted(AUDIO_DIR.glob("*.wav")):
        with wave.open(str(path)) as w:
            assert (w.getnchannels(), w.getsampwidth()) == (1, 2), f"{path} is not mono PCM16"
            found.append(
                Clip(
                    name=path.stem,
                    pcm=w.readframes(w.getnframes()),
                    sample_rate=w.getframerate(),
                    reference=path.with_suffix(".txt").read_text().strip(),
                )
            )
    assert found, f"no WAV files under {AUDIO_DIR}"
    return tuple(found)


def clip(name: str) -> Clip:
    return next(c for c in clips() if c.name == name)


_NORMALISE = jiwer.Compose(
    [
        jiwer.ToLowerCase(),
        jiwer.RemovePunctuation(),  # type: ignore[no-untyped-call]
        jiwer.RemoveMultipleSpaces(),
        jiwer.Strip(),
        jiwer.ReduceToListOfListOfWords(),
    ]
)


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate after lower-casing and removing punctuation (jiwer)."""
    return float(
        jiwer.wer(
            reference,
            hypothesis,
            reference_transform=_NORMALISE,
            hypothesis_transform=_NORMALISE,
        )
    )


_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def spoken(text: str) -> str:
    """``text`` with numbers written out (num2words: "10" → "ten") and hyphens as spaces, so a
    WER compares words as said, whatever the engine's formatting."""
    return _NUMBER.sub(lambda m: num2words(m.group()), text).replace("-", " ")


def spoken_wer(reference: str, hypothesis: str) -> float:
    """:func:`wer` after :func:`spoken` on both sides."""
    return wer(spoken(reference), spoken(hypothesis))
