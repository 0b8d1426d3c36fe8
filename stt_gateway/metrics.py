"""Prometheus metrics (prometheus-client), one registry per app.

Counted where they happen, never per audio frame: events by type as they are published,
latencies as results are published, drops as they occur. Sessions by engine and state, and
audio seconds, are read from the session registry at scrape time, as are the counters of an
engine's second-pass pool (``stt_second_pass_*``, engine ``whisper``: jobs waiting and running,
refused when saturated, failed, and how long jobs waited for a worker).

Latency histograms (seconds), labelled by engine:
- ``stt_time_to_first_token_seconds``: speech onset arrived → first interim published;
- ``stt_final_latency_seconds``: audio at the end of an utterance arrived → its final published;
- ``stt_gateway_latency_seconds``: audio arrived → the result that covers it published.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .engines.base import WAIT_BUCKETS_S
from .observer import SessionObserver

if TYPE_CHECKING:
    from .registry import SessionRegistry

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)


class GatewayMetrics:
    """The gateway's metrics; :meth:`observer` gives each session its hooks."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter("stt_events", "Events published, by type", ["event_type"], registry=r)
        self.dropped = Counter(
            "stt_events_dropped",
            "Events not delivered to a subscriber: "
            "interims coalesced, subscribers cut (slow_consumer)",
            ["kind"],
            registry=r,
        )
        self.upstream = Counter(
            "stt_upstream_errors",
            "Upstream error events, by code (upstream_reconnected counts reconnects)",
            ["code"],
            registry=r,
        )
        self.errors = Counter(
            "stt_errors",
            "Errors reported to clients, by code: error events published to a session, errors "
            "sent to the one connection that caused them, and HTTP error answers",
            ["code"],
            registry=r,
        )
        self.session_ends = Counter(
            "stt_session_ends", "Sessions ended, by session_end reason", ["reason"], registry=r
        )
        self.subscribers = Gauge(
            "stt_subscribers", "Connected subscribers, by transport", ["transport"], registry=r
        )
        self.latency = {
            "ttft": Histogram(
                "stt_time_to_first_token_seconds",
                "Speech onset arrived -> first interim published",
                ["engine"],
                buckets=_LATENCY_BUCKETS,
                registry=r,
            ),
            "final": Histogram(
                "stt_final_latency_seconds",
                "End of utterance arrived -> its final published",
                ["engine"],
                buckets=_LATENCY_BUCKETS,
                registry=r,
            ),
            "added": Histogram(
                "stt_gateway_latency_seconds",
                "Audio arrived -> the result covering it published",
                ["engine"],
                buckets=_LATENCY_BUCKETS,
                registry=r,
            ),
        }

    def watch(self, sessions: SessionRegistry) -> None:
        """Report sessions and audio seconds from ``sessions`` at each scrape."""
        self.registry.register(_SessionCollector(sessions))

    def error(self, code: str) -> None:
        """Count one error answered or sent to a client (``code`` from stt_gateway.errors)."""
        self.errors.labels(code).inc()

    def observer(self, engine: str) -> SessionObserver:
        """Hooks for one session on ``engine``."""
        return _Observer(self, engine)


class _Observer:
    def __init__(self, metrics: GatewayMetrics, engine: str) -> None:
        self._m = metrics
        # Labelled children looked up once, not per event: labels() cost ~4 % of the CPU at
        # 200 sessions (bench/README.md).
        self._latency = {kind: h.labels(engine) for kind, h in metrics.latency.items()}
        self._events: dict[str, Counter] = {}

    def published(self, event_type: str, code: str | None) -> None:
        counter = self._events.get(event_type)
        if counter is None:
            counter = self._events[event_type] = self._m.events.labels(event_type)
        counter.inc()
        if code is not None:
            self._m.error(code)
            if code.startswith("upstream_"):
                self._m.upstream.labels(code).inc()

    def latency(self, kind: str, seconds: float) -> None:
        self._latency[kind].observe(seconds)

    def dropped(self, kind: str, count: int = 1) -> None:
        self._m.dropped.labels(kind).inc(count)

    def ended(self, reason: str) -> None:
        self._m.session_ends.labels(reason).inc()


class _SessionCollector(Collector):
    def __init__(self, sessions: SessionRegistry) -> None:
        self._sessions = sessions

    def collect(self) -> Iterator[Metric]:
        by_state = GaugeMetricFamily(
            "stt_sessions", "Sessions held, by engine and state", labels=["engine", "state"]
        )
        counts: dict[tuple[str, str], int] = {}
        audio: dict[str, float] = dict(self._sessions.removed_audio_seconds)
        for s in self._sessions.all():
            key = (s.engine_name, s.state)
            counts[key] = counts.get(key, 0) + 1
            audio[s.engine_name] = audio.get(s.engine_name, 0.0) + s.audio_seconds
        for (engine, state), n in sorted(counts.items()):
            by_state.add_metric([engine, state], n)
        yield by_state
        seconds = CounterMetricFamily(
            "stt_audio_seconds", "Seconds of audio received", labels=["engine"]
        )
        for engine, total in sorted(audio.items()):
            seconds.add_metric([engine], total)
        yield seconds
        yield from _key_metrics(self._sessions)
        yield from _second_pass_metrics(self._sessions)


def _key_metrics(sessions: SessionRegistry) -> Iterator[Metric]:
    """Live sessions and audio seconds by API key id (auth on; ids are configured, so the
    label set is bounded)."""
    live = GaugeMetricFamily(
        "stt_key_sessions", "Live sessions by the API key that created them", labels=["key"]
    )
    for key, n in sorted(sessions.live_by_key.items()):
        live.add_metric([key], n)
    yield live
    audio = dict(sessions.removed_audio_by_key)
    for session in sessions.all():
        if (owner := sessions.owners.get(session.id)) is not None:
            audio[owner] = audio.get(owner, 0.0) + session.audio_seconds
    seconds = CounterMetricFamily(
        "stt_key_audio_seconds", "Seconds of audio received, by API key", labels=["key"]
    )
    for key, total in sorted(audio.items()):
        seconds.add_metric([key], total)
    yield seconds


def _second_pass_metrics(sessions: SessionRegistry) -> Iterator[Metric]:
    jobs = GaugeMetricFamily(
        "stt_second_pass_jobs",
        "Second passes (Whisper finals) waiting for a worker or running, by engine",
        labels=["engine", "state"],
    )
    outcomes = CounterMetricFamily(
        "stt_second_pass_jobs_ended",
        "Second passes by outcome: done, failed, refused (queue full) or late (not done "
        "in time); the streaming engine's final was published for each but done",
        labels=["engine", "outcome"],
    )
    waits = HistogramMetricFamily(
        "stt_second_pass_wait_seconds",
        "Time an ended utterance waited for a second-pass worker",
        labels=["engine"],
    )
    for engine, provider in sorted(sessions.providers.items()):
        stats = provider.second_pass_stats()
        if stats is None:
            continue
        jobs.add_metric([engine, "queued"], stats.queued)
        jobs.add_metric([engine, "running"], stats.running)
        for outcome in ("done", "failed", "refused", "late"):
            outcomes.add_metric([engine, outcome], getattr(stats, outcome))
        cumulative = 0
        buckets = []
        for bound, count in zip((*WAIT_BUCKETS_S, float("inf")), stats.wait_buckets, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
        waits.add_metric([engine], buckets, sum_value=stats.wait_sum_s)
    yield from (jobs, outcomes, waits)
