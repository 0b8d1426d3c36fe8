"""The session core: lifecycle, the engine, the event log and the transcript. No HTTP, no sockets.

Lifecycle (``docs/api.md``)::

    created ──first audio──► streaming ──close()──► closing ──last finals, session_end──► closed
       └───────────────────────close()──────────────────┘

Audio goes in through :meth:`Session.feed`, from one producer at a time (:mod:`.ingest`). One
pump task turns the engine's results into events (:mod:`.eventlog`), the transcript
(:mod:`.transcript`) and latency figures (:mod:`.latency`). :meth:`Session.close` asks the
engine to flush, waits (bounded) for its last results, streams the summary if the config asks
for one (:mod:`.summary`), publishes ``session_end`` and returns the transcript; it is
idempotent and every caller gets the same outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from .audio.pcm import BYTES_PER_SAMPLE, check_chunk
from .engines.base import Engine
from .errors import (
    AudioLeadExceeded,
    GatewayError,
    SessionClosed,
    SummaryFailed,
    SummaryUnavailable,
)
from .eventlog import EventLog
from .events import EngineResult, ErrorData, FinalData, SessionEndData, SummaryData, TokenData
from .hub import Record, Subscription
from .ingest import Ingest
from .latency import LatencyMeter
from .limits import MAX_DURATION_WARNING_S, SessionLimits
from .models import SessionConfig, SessionInfo, SessionState, SummaryOptions, Transcript
from .observer import NullObserver, SessionObserver
from .summary import Summarizer, build_prompt
from .summary import write as write_summary
from .transcript import TranscriptKeeper

log = logging.getLogger(__name__)


class Session:
    """One live transcription: audio in, events out.

    Args:
        session_id: the session's id.
        config: its resolved config (every default filled in).
        engine: a not yet started engine for it.
        limits: what it may hold and how long it waits.
        on_closed: called once, after ``session_end`` is published.
        observer: told of events, latencies and drops (metrics).
        summarizer: the LLM that writes summaries (``None``: the gateway has none).
    """

    def __init__(
        self,
        session_id: str,
        config: SessionConfig,
        engine: Engine,
        limits: SessionLimits,
        *,
        on_closed: Callable[[Session], None] = lambda _s: None,
        observer: SessionObserver | None = None,
        summarizer: Summarizer | None = None,
    ) -> None:
        self.id = session_id
        self.config = config
        self.created_at = time.time()
        self._engine = engine
        self._limits = limits
        # The engine is given PCM16 at the session's rate, one channel, or every channel
        # interleaved for a multichannel session.
        out_channels = config.channels if config.multichannel else 1
        self._bytes_per_s = config.sample_rate * BYTES_PER_SAMPLE * out_channels
        self._max_lead_bytes = int(limits.max_audio_lead_s * self._bytes_per_s)
        self._on_closed = on_closed
        self._log = EventLog(
            session_id,
            ring_events=limits.ring_events,
            ring_bytes=limits.ring_bytes,
            queue_size=limits.queue_size,
            max_lag_s=limits.max_lag_s,
            max_subscribers=limits.max_subscribers,
            observer=observer,
        )
        self._observer: SessionObserver = observer or NullObserver()
        self._latency = LatencyMeter(self._observer)
        self._last_activity = time.monotonic()
        self._timers: list[asyncio.TimerHandle] = []  # idle check, duration warning and end
        self._state: SessionState = "created"
        self._audio_bytes = 0
        # Bytes as the producer sends them → PCM16 mono at the session's rate.
        self._ingest = Ingest(
            session_id,
            config,
            limits.max_chunk_bytes,
            self._hear,
            # The producer's own input, but it has gone (or the session is closing): every
            # subscriber learns why the stream's end was not heard.
            lambda exc: self._publish_error(ErrorData(code=exc.code, message=exc.message)),
        )
        self._transcript = TranscriptKeeper()
        self._results_seen = 0  # engine results published: progress, while closing
        self._pump: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[Transcript] | None = None
        self._ended = asyncio.Event()  # set once session_end is published
        self._summarizer = summarizer
        self._summarizing: asyncio.Task[SummaryData] | None = None
        self.summary: SummaryData | None = None
        """The newest summary published, if any."""
        self.remote_subscribers = 0
        """Subscribers on other gateway processes (kept up to date by ``cluster.py``)."""

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the engine and the result pump.

        Raises:
            EngineError: the engine could not start.
        """
        await self._engine.start()
        self._pump = asyncio.create_task(self._run_pump(), name=f"session-{self.id}-pump")
        loop = asyncio.get_running_loop()
        limits = self._limits
        self._timers = [
            loop.call_later(limits.idle_timeout_s, self._idle_check),
            loop.call_later(
                max(0.0, limits.max_duration_s - MAX_DURATION_WARNING_S), self._duration_warning
            ),
            loop.call_later(limits.max_duration_s, self._begin_close, "max_duration"),
        ]

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def engine_name(self) -> str:
        """The engine this session runs on (its resolved config names one)."""
        return self.config.engine or "unknown"

    @property
    def last_seq(self) -> int:
        """``seq`` of the newest event; 0 before the first."""
        return self._log.last_seq

    @property
    def audio_seconds(self) -> float:
        """Seconds of audio received so far."""
        return self._audio_bytes / self._bytes_per_s

    async def feed(
        self, data: bytes, producer: object | None = None, *, wait: bool = True
    ) -> bytes:
        """Take the next chunk of the producer's audio stream; the PCM16 it held.

        ``data`` is what the client sent (``docs/api.md``, "Audio in"): PCM16 at the session's
        rate is used as it is (the fast path); anything else is decoded (:mod:`.ingest`).

        While the engine already holds ``max_audio_lead_s`` of audio it has not recognised,
        awaits until it catches up (a WebSocket producer is then not read: backpressure), or,
        with ``wait=False`` (an HTTP POST), refuses the chunk.

        Args:
            data: the chunk, at most ``max_chunk_bytes``.
            producer: the identity of a connection that streams (a WebSocket): its first
                good chunk makes it the session's producer until :meth:`release_producer`.
                ``None`` (an HTTP POST) feeds only while no connection holds the audio.
            wait: whether to wait while the engine is too far behind.

        Returns:
            the PCM16 mono (session rate) the chunk gave (``b""`` while a container's header
            is still coming); the chunk itself on the fast path.

        Raises:
            EmptyAudio, OddByteCount, ChunkTooLarge: the chunk cannot be audio of the
                session's encoding; nothing of it is used and the session goes on.
            UnsupportedAudio: the bytes are no audio the gateway decodes (the message says
                what they looked like); the stream starts over with the next chunk.
            ProducerConflict: another connection holds the session's audio; nothing is used.
            AudioLeadExceeded: ``wait=False`` and the engine is too far behind; nothing is used.
            SessionClosed: the session is closing or closed.
        """
        self._check_open()
        self._ingest.check(producer)
        await self._ingest.follow(producer)
        fast = self._ingest.passthrough
        if fast:
            check_chunk(data, self._limits.max_chunk_bytes)
        if self._engine.backlog_bytes() >= self._max_lead_bytes:
            if not wait:
                behind_s = self._engine.backlog_bytes() / self._bytes_per_s
                raise AudioLeadExceeded(
                    f"the engine has {behind_s:.1f} s of this session's audio still to "
                    f"recognise (the limit is {self._limits.max_audio_lead_s:g} s); send this "
                    f"chunk again once it catches up",
                    retry_after_s=max(1.0, behind_s - self._limits.max_audio_lead_s / 2),
                )
            await self._engine.wait_backlog_below(self._max_lead_bytes)
            self._check_open()  # the session may have closed meanwhile
        self._ingest.producer = producer
        if self._state == "created":
            self._state = "streaming"
        self._last_activity = time.monotonic()  # read by the idle timer; no per-frame timer work
        if fast:
            await self._hear(data)
            return data
        # The session may close while this chunk waits for the one before: checked again.
        return await self._ingest.decode(data, self._check_open)

    async def _hear(self, pcm: bytes) -> None:
        """Give PCM16 at the session's rate to the engine (while its pump runs)."""
        if self._pump is None or self._pump.done():
            return
        self._audio_bytes += len(pcm)
        self._latency.arrived(self.audio_seconds, self._last_activity)
        await self._engine.feed(pcm)

    async def release_producer(self, producer: object) -> None:
        """``producer`` no longer streams (its connection closed): what its stream's decoder
        still holds goes to the engine, and anyone may feed next (a new stream)."""
        await self._ingest.release(producer)

    async def wait_ended(self) -> None:
        """Return once ``session_end`` has been published (at once if it has)."""
        await self._ended.wait()

    async def finalize(self, producer: object | None = None) -> None:
        """Finalize the utterance in progress now (a ``final`` follows).

        Args:
            producer: the asking connection's identity (as for :meth:`feed`): while another
                connection holds the audio, only it may cut its utterances.

        Raises:
            ProducerConflict: another connection holds the session's audio.
            SessionClosed: the session is closing or closed.
        """
        self._check_open()
        self._ingest.check(producer, "finalize its utterances")
        await self._engine.finalize()

    async def close(self, reason: str = "client_closed") -> Transcript:
        """Flush the engine, publish its last finals, then ``session_end``; idempotent.

        Every call, concurrent or later, returns the same transcript; the first call's
        ``reason`` is the one published.
        """
        # Shielded: a client that hangs up mid-close must not cancel the close itself.
        return await asyncio.shield(self._begin_close(reason))

    def _begin_close(self, reason: str) -> asyncio.Task[Transcript]:
        """Start closing with ``reason`` unless a close already runs; the closing task."""
        if self._closing is None:
            self._state = "closing"
            self._closing = asyncio.create_task(
                self._close(reason), name=f"session-{self.id}-close"
            )
        return self._closing

    def _idle_check(self) -> None:
        """Fires at the idle deadline; re-arms itself while audio came or someone listens."""
        if self._closing is not None:
            return
        idle_for = time.monotonic() - self._last_activity
        if self.subscriber_count:
            self._last_activity = time.monotonic()
            idle_for = 0.0
        if idle_for < self._limits.idle_timeout_s:
            self._timers.append(
                asyncio.get_running_loop().call_later(
                    self._limits.idle_timeout_s - idle_for, self._idle_check
                )
            )
            return
        self._begin_close("idle_timeout")

    def _duration_warning(self) -> None:
        if self._closing is None:
            left = min(MAX_DURATION_WARNING_S, self._limits.max_duration_s)
            self._publish_error(
                ErrorData(
                    code="max_duration_soon",
                    message=f"this session reaches its longest duration "
                    f"({self._limits.max_duration_s:g} s) in {left:g} s and then ends "
                    f"(session_end reason max_duration); start a new session to go on",
                )
            )

    async def _close(self, reason: str) -> Transcript:
        for timer in self._timers:
            timer.cancel()
        pump = self._pump
        if pump is not None and not pump.done():
            # A container's last frames are still in its decoder: hear them before the
            # engine's final flush (docs/protocols/mediarecorder-webm.md, "Close").
            await self._ingest.drain()
            await self._engine.close()
            if not await self._flushed(pump):
                pump.cancel()
                salvaged = self._transcript.salvage(self._log.publish)
                limits, kept = self._limits, "its last interim stands as the final"
                message = (
                    f"the engine made no progress on its last results for "
                    f"{limits.close_timeout_s:g} s (or took over {limits.close_max_wait_s:g} "
                    f"s); {kept if salvaged else 'no words were pending'}"
                )
                self._publish_error(ErrorData(code="engine_timeout", message=message))
        if self._summarizing is not None:
            # One asked for mid-session finishes first (within its time limit): nothing may
            # follow session_end.
            await asyncio.wait({self._summarizing})
        if (options := self.config.summary_options) is not None and self._summarizer is not None:
            if reason == "shutdown":
                # A process stopping must not wait on an LLM (up to llm_timeout_s): say so.
                message = "the gateway is shutting down: no summary was asked for; the "
                message += "transcript is whole"
                self._publish_error(ErrorData(code=SummaryFailed.code, message=message))
            else:
                with contextlib.suppress(SummaryFailed):  # published as summary_failed
                    await self._summarize(options)
        self._ingest.close()
        self._log.publish(SessionEndData(reason=reason, audio_seconds=round(self.audio_seconds, 3)))
        self._observer.ended(reason)
        self._state = "closed"
        self._ended.set()
        log.info(
            "session closed id=%s reason=%s audio_s=%.2f events=%d",
            self.id,
            reason,
            self.audio_seconds,
            self._log.last_seq,
        )
        self._on_closed(self)
        return self.transcript()

    async def _flushed(self, pump: asyncio.Task[None]) -> bool:
        """Wait for the pump to end after ``engine.close()``: as long as the engine makes
        progress (a result, or audio recognised) within each ``close_timeout_s``, and at most
        ``close_max_wait_s`` in all. Whether it ended."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._limits.close_max_wait_s
        while (remaining := deadline - loop.time()) > 0:
            mark = (self._results_seen, self._engine.backlog_bytes())
            done, _ = await asyncio.wait(
                {pump}, timeout=min(self._limits.close_timeout_s, remaining)
            )
            if done:
                return True
            if (self._results_seen, self._engine.backlog_bytes()) == mark:
                return False  # alive or not, it did nothing for a whole close_timeout_s
        return False

    async def _run_pump(self) -> None:
        try:
            async for result in self._engine.results():
                self._publish_result(result)
        except GatewayError as exc:
            self._fail(exc.code, exc.message)
        except Exception as exc:
            log.exception("engine failed in session %s", self.id)
            self._fail("engine_error", f"the speech engine failed: {type(exc).__name__}")

    def _fail(self, code: str, message: str) -> None:
        """The engine failed for good: keep what it heard, publish why, then end the session
        with that code."""
        self._transcript.salvage(self._log.publish)
        self._publish_error(ErrorData(code=code, message=message))
        self._begin_close(code)

    def _publish_result(self, result: EngineResult) -> None:
        if isinstance(result, ErrorData):
            self._publish_error(result)
            return
        self._results_seen += 1
        record = self._log.publish(result)
        if isinstance(result, TokenData):  # an interim or a final (FinalData is a TokenData)
            self._transcript.published(result, record)
        self._latency.measure(result)

    def _publish_error(self, error: ErrorData) -> None:
        """An error about the session itself: to every subscriber, and to the operator's log."""
        log.warning("session error id=%s code=%s: %s", self.id, error.code, error.message)
        self._log.publish(error)

    def _check_open(self) -> None:
        if self._closing is not None or (self._pump is not None and self._pump.done()):
            raise SessionClosed(f"session {self.id} is {self._state} and takes no more input")

    # -- summary ---------------------------------------------------------------------------

    async def summarize(self) -> SummaryData:
        """A summary of the transcript so far, mid-session: ``summary_token`` events, then one
        ``summary``, on the session's stream; the session goes on. A call while one is being
        written gets that one.

        Raises:
            SummaryUnavailable: the gateway has no LLM.
            SessionClosed: the session is closing or closed (its summary at the end, if its
                config asked for one, is in the transcript).
            SummaryFailed: the LLM did not give one (an ``error`` ``summary_failed`` was
                published too).
        """
        if self._summarizer is None:
            raise SummaryUnavailable(
                "this gateway has no LLM endpoint for summaries (STT_GATEWAY_LLM_URL)"
            )
        self._check_open()
        if self._summarizing is None or self._summarizing.done():
            options = self.config.summary_options or SummaryOptions()
            self._summarizing = asyncio.create_task(
                self._summarize(options), name=f"session-{self.id}-summary"
            )
        # Shielded: a client that hangs up does not stop the summary the stream is receiving.
        return await asyncio.shield(self._summarizing)

    async def _summarize(self, options: SummaryOptions) -> SummaryData:
        """Stream a summary of the finals so far onto the log (see :func:`.summary.write`);
        publish ``summary_failed`` and raise SummaryFailed when the LLM does not give one."""
        summarizer = self._summarizer
        assert summarizer is not None
        prompt = build_prompt(self._transcript.kept, options, self.config.language, summarizer)
        try:
            summary = await write_summary(summarizer, prompt, self._log.publish)
        except SummaryFailed as failure:
            self._publish_error(ErrorData(code=failure.code, message=failure.message))
            raise
        self._log.publish(summary)
        self.summary = summary
        return summary

    # -- reading ---------------------------------------------------------------------------

    def subscribe(self, since: int | None = None) -> Subscription:
        """Events after ``since`` (see :meth:`EventLog.subscribe`), then live ones."""
        return self._log.subscribe(since)

    @property
    def subscriber_count(self) -> int:
        """Subscribers now: this process's, and those :attr:`remote_subscribers` counts."""
        return self._log.subscriber_count + self.remote_subscribers

    @property
    def local_subscriber_count(self) -> int:
        """Subscribers of this process."""
        return self._log.subscriber_count

    def replicate(self, mirror: Callable[[Record], None]) -> None:
        """Hand every event published from now on to ``mirror`` too (see
        :meth:`EventLog.mirror_to`)."""
        self._log.mirror_to(mirror)

    def held_records(self) -> list[Record]:
        """The events held for replay, oldest first."""
        return self._log.held()

    def final_records(self) -> list[Record]:
        """Every final's event as published, in order (the whole transcript)."""
        return self._transcript.records()

    def finals(self) -> list[FinalData]:
        """Every final so far, in order, with its words (parsed from the events as sent)."""
        return self._transcript.finals()

    def transcript(self) -> Transcript:
        """Every final so far, in order."""
        return Transcript.of(self.id, self._transcript.kept, self.summary)

    def info(self) -> SessionInfo:
        """A snapshot for ``GET /sessions/{id}``."""
        return SessionInfo(
            session_id=self.id,
            state=self._state,
            created_at=self.created_at,
            audio_seconds=round(self.audio_seconds, 3),
            subscribers=self.subscriber_count,
            last_seq=self._log.last_seq,
            replay_events=self._log.ring_size[0],
            replay_bytes=self._log.ring_size[1],
            config=self.config,
            request_id=self._engine.upstream_id(),
            final_lag_ms=round(self._engine.final_lag_s() * 1000, 1),
            engine_backlog_s=round(self._engine.backlog_bytes() / self._bytes_per_s, 3),
            summary=self.summary,
        )
