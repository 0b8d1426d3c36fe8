"""What one session may hold and how long it waits: the limits the registry gives each session."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """What one session may hold and how long it waits (``docs/api.md``, "Limits").

    Attributes:
        max_chunk_bytes: the largest audio chunk :meth:`Session.feed` takes (bytes).
        max_audio_lead_s: audio (s) the engine may have taken and not yet recognised; a
            producer past it waits (or, not waiting, gets ``AudioLeadExceeded``).
        close_timeout_s: on close, the longest the engine may go without progress (no
            result, no audio recognised) before its last results are given up (s).
        close_max_wait_s: on close, the longest wait for the engine's last results even
            while it progresses (s).
        idle_timeout_s: with no audio and no subscriber this long (s), the session ends
            with reason ``idle_timeout``.
        max_duration_s: the session ends with reason ``max_duration`` this long after its
            creation (s), after an ``error`` ``max_duration_soon`` a minute before.
        max_subscribers: subscribers at once (SSE and WebSocket).
        ring_events, ring_bytes, queue_size, max_lag_s: see
            :class:`~stt_gateway.eventlog.EventLog`.
    """

    max_chunk_bytes: int
    max_audio_lead_s: float
    close_timeout_s: float
    close_max_wait_s: float
    idle_timeout_s: float
    max_duration_s: float
    max_subscribers: int
    ring_events: int
    ring_bytes: int
    queue_size: int
    max_lag_s: float


MAX_DURATION_WARNING_S = 60.0
"""How long before ``max_duration`` the ``max_duration_soon`` warning goes out."""
