"""Our session's events as Deepgram's messages (§3), without a socket: ``Results`` tiling the
stream, ``SpeechStarted``, ``UtteranceEnd``, the end-of-stream ``Metadata``, and a
pre-recorded answer's channel. The protocol is ``docs/protocols/deepgram-live.md`` (§n)."""

from __future__ import annotations

from datetime import UTC, datetime

from ... import __version__
from ...events import (
    EVENT_ADAPTER,
    FinalData,
    FinalEvent,
    SpeechEndEvent,
    SpeechStartEvent,
    TokenEvent,
)
from ...session import Session
from . import wire
from .params import ListenParams


class Encoder:
    """One connection's session events as Deepgram messages (§3).

    Results tile the stream (§5.2): each starts where the last final ended. A ``Finalize``
    marks the next final published ``from_finalize`` (our events do not say which request
    made a final: a natural final already on its way when the Finalize came takes the mark).

    Args:
        session: the connection's session.
        params: its query.
    """

    def __init__(self, session: Session, params: ListenParams) -> None:
        self._params = params
        self._session = session
        config = session.config
        self._channels = config.channels if config.multichannel else 1
        self._segment_start = [0.0] * self._channels  # Results tile each channel (§5.2)
        self.finalize_asked = False
        self.digest = wire.AudioDigest(config.sample_rate * 2 * self._channels)
        name = session.config.model or params.model
        self._model_uuid, self._model_info = wire.model_info(name, session.engine_name, __version__)
        self._metadata = wire.DGResultsMetadata(
            request_id=session.id, model_info=self._model_info, model_uuid=self._model_uuid
        )

    def encode(self, text: str) -> list[str]:
        """The Deepgram messages for one event's JSON (none for most errors)."""
        event = EVENT_ADAPTER.validate_json(text)
        p = self._params
        if isinstance(event, FinalEvent):
            data = event.data
            from_finalize, self.finalize_asked = self.finalize_asked, False
            words = wire.words_of(
                ((w.word, w.start, w.end, w.confidence) for w in data.words), p.punctuate
            )
            return [
                self._results(
                    data.text,
                    data.confidence,
                    data.end,
                    True,
                    words,
                    speech_final=data.speech_final and p.speech_final,
                    from_finalize=from_finalize,
                    channel=data.channel or 0,
                )
            ]
        if isinstance(event, TokenEvent):
            if not p.config.interim_results:
                return []
            data_t = event.data
            return [
                self._results(
                    data_t.text,
                    data_t.confidence,
                    data_t.end,
                    False,
                    [],
                    channel=data_t.channel or 0,
                )
            ]
        if isinstance(event, SpeechStartEvent):
            if not p.vad_events:
                return []
            channel = [event.data.channel or 0, self._channels]
            return [
                wire.dump(wire.DGSpeechStarted(channel=channel, timestamp=event.data.timestamp))
            ]
        if isinstance(event, SpeechEndEvent):
            if not p.utterance_end:
                return []
            channel = [event.data.channel or 0, self._channels]
            end = event.data.last_word_end
            return [wire.dump(wire.DGUtteranceEnd(channel=channel, last_word_end=end))]
        return []

    def _results(
        self,
        text: str,
        confidence: float,
        end: float,
        is_final: bool,
        words: list[wire.DGWord],
        *,
        speech_final: bool = False,
        from_finalize: bool = False,
        channel: int = 0,
    ) -> str:
        start = self._segment_start[channel]
        if is_final:
            self._segment_start[channel] = max(start, end)
        message = wire.DGResults(
            channel_index=[channel, self._channels],
            duration=round(max(0.0, end - start), 3),
            start=round(start, 3),
            is_final=is_final,
            speech_final=speech_final,
            channel=wire.DGChannel(
                alternatives=[
                    wire.DGAlternative(transcript=text, confidence=confidence, words=words)
                ]
            ),
            metadata=self._metadata,
            from_finalize=from_finalize,
        )
        return wire.dump(message)

    def metadata(self) -> wire.DGMetadata:
        """The end-of-stream ``Metadata`` (§3.2)."""
        heard = self.digest.duration_s > 0
        return wire.DGMetadata(
            request_id=self._session.id,
            sha256=self.digest.sha256,
            created=_iso(self._session.created_at),
            duration=self.digest.duration_s,
            channels=self._channels if heard else 0,
            models=[self._model_uuid] if heard else None,
            model_info={self._model_uuid: self._model_info} if heard else None,
        )


def _iso(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def prerecorded_channel(finals: list[FinalData], params: ListenParams) -> wire.DGPrerecordedChannel:
    """One channel of a pre-recorded answer: its finals' text, mean confidence and words."""
    words = [
        w
        for final in finals
        for w in wire.words_of(
            ((x.word, x.start, x.end, x.confidence) for x in final.words), params.punctuate
        )
    ]
    confidence = sum(f.confidence for f in finals) / len(finals) if finals else 0.0
    return wire.DGPrerecordedChannel(
        alternatives=[
            wire.DGAlternative(
                transcript=" ".join(f.text for f in finals),
                confidence=round(confidence, 4),
                words=words,
            )
        ]
    )


# -- pre-recorded --------------------------------------------------------------------------
