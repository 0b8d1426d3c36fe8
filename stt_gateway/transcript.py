"""A session's transcript as it grows: every final published, kept compactly, and the newest
interim of each channel that no final covers yet (what an engine that cannot finish leaves).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

from pydantic import TypeAdapter

from .events import FinalData, FinalEvent, TokenData
from .hub import Record


class KeptFinal(NamedTuple):
    """A final as the transcript keeps it: its scalars and its published event (words and
    all, as bytes). A tuple of strings, numbers and bytes, so the garbage collector stops
    tracking it: an hours-long transcript adds nothing to the collector's walks."""

    text: str
    start: float
    end: float
    confidence: float
    source: Literal["interim"] | None
    channel: int | None
    record: Record


_FINAL_EVENT: TypeAdapter[FinalEvent] = TypeAdapter(FinalEvent)


class TranscriptKeeper:
    """The finals of one session, in order, and the interims pending under them."""

    def __init__(self) -> None:
        self.kept: list[KeptFinal] = []
        # Per channel (None: a session of one), the newest interim no final covers.
        self._pending: dict[int | None, TokenData] = {}

    def published(self, result: TokenData, record: Record) -> None:
        """``result`` (an interim or a final) was published as ``record``."""
        if isinstance(result, FinalData):
            self.kept.append(
                KeptFinal(
                    result.text,
                    result.start,
                    result.end,
                    result.confidence,
                    result.source,
                    result.channel,
                    record,
                )
            )
            pending = self._pending.get(result.channel)
            if pending is not None and result.end >= pending.start:
                del self._pending[result.channel]  # this final covers its utterance
        else:
            self._pending[result.channel] = result

    def salvage(self, publish: Callable[[FinalData], Record]) -> bool:
        """Publish the newest interim no final covers (of each channel) as a ``final`` marked
        ``source: "interim"``: what the engine heard is kept when it cannot finish. Whether
        there was one."""
        interims, self._pending = self._pending, {}
        salvaged = False
        for interim in interims.values():
            if not interim.text:
                continue
            final = FinalData(
                text=interim.text,
                confidence=interim.confidence,
                start=interim.start,
                end=interim.end,
                channel=interim.channel,
                words=[],
                speech_final=False,
                source="interim",
            )
            self.published(final, publish(final))
            salvaged = True
        return salvaged

    def records(self) -> list[Record]:
        """Every final's event as published, in order."""
        return [f.record for f in self.kept]

    def finals(self) -> list[FinalData]:
        """Every final, in order, with its words (parsed from the events as sent)."""
        return [_FINAL_EVENT.validate_json(f.record.payload).data for f in self.kept]
