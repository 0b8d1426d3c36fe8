"""A session's summary by an LLM: what the session needs of the LLM, and the prompt it gets.

The session core streams a summary through a :class:`Summarizer` (the OpenAI-compatible
adapter is :mod:`stt_gateway.llm`; tests may give their own) and publishes its pieces as
``summary_token`` events, then one ``summary`` (``docs/api.md``, "Summary at the end").
The prompt is built here, vendor-neutral: instructions, then the finals with their times,
trimmed to the model's context with the oldest finals left out first, and the prompt says so.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .errors import SummaryFailed
from .events import SummaryData, SummaryTokenData
from .models import SummaryOptions

CHAT_OVERHEAD_TOKENS = 64
"""Tokens a chat template adds around two messages (role markers, BOS/EOS), with room over."""

LANGUAGE_NAMES = {
    "ko": "Korean",
    "en": "English",
    "ja": "Japanese",
    "zh": "Chinese",
    "de": "German",
    "fr": "French",
    "es": "Spanish",
    "it": "Italian",
    "pt": "Portuguese",
    "ru": "Russian",
    "nl": "Dutch",
    "hi": "Hindi",
}
"""Names small models follow better than a BCP-47 tag; other tags are given as they are."""


class Summarizer(Protocol):
    """An LLM that writes summaries, as the session core uses it.

    Attributes:
        model: the model's name (stamped on the ``summary`` event).
        context_tokens: the model's context (tokens): prompt and summary together.
        max_tokens: most tokens a summary may have.
        timeout_s: longest a summary may take, request to last token (s).
    """

    model: str
    context_tokens: int
    max_tokens: int
    timeout_s: float

    def stream(self, instructions: str, transcript: str) -> AsyncGenerator[str, None]:
        """The summary's pieces (text), in order, as the model writes them.

        Raises:
            SummaryFailed: the endpoint is down, refused, or answered something else than a
                chat stream; the message says which and never holds a credential.
        """
        ...


class Timed(Protocol):
    """A final as the prompt needs it: its text and span (s of session audio)."""

    @property
    def text(self) -> str: ...
    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Prompt:
    """What the LLM is asked.

    Attributes:
        instructions: the system message.
        transcript: the user message: the finals that fit, one per line with its times.
        included: finals in ``transcript``.
        left_out: the oldest finals left out to fit the model's context.
    """

    instructions: str
    transcript: str
    included: int
    left_out: int


def estimate_tokens(text: str) -> int:
    """A tokenizer-free upper estimate of ``text``'s tokens: one per 3 bytes of UTF-8.

    English runs ~4 characters (bytes) per token in the BPE vocabularies of current models; a
    Hangul syllable is 3 bytes and usually one token or less. Over-estimating only trims a
    long transcript a little early; under-estimating would overflow the context."""
    return len(text.encode("utf-8")) // 3 + 1


def clock(seconds: float) -> str:
    """``m:ss`` of session audio (``h:mm:ss`` past an hour)."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def instructions_for(options: SummaryOptions, session_language: str | None) -> str:
    """The system message: the caller's prompt, or the gateway's, with the language to use."""
    tag = options.language or session_language
    if tag is None:
        language = "the language of the transcript"
    else:
        language = LANGUAGE_NAMES.get(tag.split("-")[0].lower(), f"the language tagged {tag}")
    base = options.prompt or (
        "You summarise transcripts of speech: a meeting, a call or a dictation. Write a short "
        "summary of what was said: the main points, and any decisions or tasks. Do not add "
        "anything that was not said. Reply with the summary only."
    )
    return f"{base}\nWrite the summary in {language}."


def build_prompt(
    finals: Sequence[Timed],
    options: SummaryOptions,
    session_language: str | None,
    summarizer: Summarizer,
) -> Prompt:
    """The prompt for a summary of ``finals``: the newest that fit the model's context
    (``context_tokens`` less the summary's ``max_tokens``, the instructions and the chat
    template), in order, each as ``[m:ss–m:ss] text``. When older finals are left out, the
    transcript starts by saying how many and up to when."""
    instructions = instructions_for(options, session_language)
    budget = (
        summarizer.context_tokens
        - summarizer.max_tokens
        - estimate_tokens(instructions)
        - CHAT_OVERHEAD_TOKENS
    )
    lines: list[str] = []
    for final in reversed(finals):
        line = f"[{clock(final.start)}–{clock(final.end)}] {final.text}"
        cost = estimate_tokens(line)
        if cost > budget:
            break
        budget -= cost
        lines.append(line)
    lines.reverse()
    left_out = len(finals) - len(lines)
    head = "Transcript:"
    if left_out:
        head = (
            f"Transcript (its first {left_out} segments, up to "
            f"{clock(finals[left_out - 1].end)}, are left out: it is longer than the model's "
            f"context):"
        )
    return Prompt(instructions, "\n".join([head, *lines]), len(lines), left_out)


async def write(
    summarizer: Summarizer, prompt: Prompt, publish: Callable[[SummaryTokenData], object]
) -> SummaryData:
    """Stream the summary ``prompt`` asks for: each piece the LLM writes to ``publish`` as a
    ``summary_token`` as it comes, within ``summarizer.timeout_s`` (s); the whole summary,
    for the caller to publish. A prompt with no finals in it gets an empty summary, the LLM
    not asked.

    Raises:
        SummaryFailed: the LLM failed, or did not finish in time (the message says how many
            pieces had come).
    """
    pieces: list[str] = []
    try:
        if prompt.included:
            stream = summarizer.stream(prompt.instructions, prompt.transcript)
            # aclosing: a time limit that cuts the stream closes its connection now.
            async with asyncio.timeout(summarizer.timeout_s), contextlib.aclosing(stream):
                async for piece in stream:
                    pieces.append(piece)
                    publish(SummaryTokenData(text=piece))
    except TimeoutError:
        raise SummaryFailed(
            f"the LLM did not finish the summary within {summarizer.timeout_s:g} s "
            f"(STT_GATEWAY_LLM_TIMEOUT_S); {len(pieces)} pieces had come"
        ) from None
    return SummaryData(
        text="".join(pieces).strip(), model=summarizer.model, segments_left_out=prompt.left_out
    )
