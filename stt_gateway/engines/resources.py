"""Costly per-stream objects (decoders, VAD models) kept for reuse while idle, and given back.

Memory follows active streams, not created sessions: a pocketsphinx decoder holds ~95 MB and a
Silero VAD ~10 MB (measured here), so a recogniser takes them when its audio needs them and
gives them back when it stops (see :mod:`.local`). A released object waits in its
:class:`IdlePool` for the next stream (building a decoder costs ~0.26 s); an object idle longer
than the pool's ``idle_s`` is dropped, down to ``keep``, and the process's C heap is trimmed so
the memory really returns to the system: glibc's ``free`` keeps it otherwise (measured: 8
decoders and 40 VADs freed left RSS at 955 MB; after ``malloc_trim`` 168 MB).

Engine worker processes call :func:`trim_idle` between requests (see :mod:`.workers`).
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

IDLE_S = 30.0
"""Default seconds an idle object is kept beyond ``keep`` (:func:`configure` changes it)."""

_POOLS: weakref.WeakSet[IdlePool[Any]] = weakref.WeakSet()  # this process's pools
_idle_s = IDLE_S


class IdlePool(Generic[T]):
    """Reusable objects of one kind, built on demand. Thread-safe.

    Args:
        build: makes a new object (may block for a while: call off any event loop).
        reset: makes a released object as good as new.
        keep: idle objects never dropped for age (a warm start for the next stream).
        max_idle: most idle objects kept at all; beyond that a released one is dropped.
    """

    def __init__(
        self, build: Callable[[], T], reset: Callable[[T], None], *, keep: int, max_idle: int
    ) -> None:
        self._build = build
        self._reset = reset
        self._keep = keep
        self._max_idle = max_idle
        self._idle: deque[tuple[T, float]] = deque()  # (object, monotonic time released)
        self._lock = threading.Lock()
        self.in_use = 0
        _POOLS.add(self)

    @property
    def idle(self) -> int:
        """Idle objects waiting for a stream."""
        return len(self._idle)

    def acquire(self) -> T:
        """The most recently released object, or a new one (blocking)."""
        with self._lock:
            self.in_use += 1
            if self._idle:
                return self._idle.pop()[0]
        try:
            return self._build()
        except BaseException:
            with self._lock:
                self.in_use -= 1
            raise

    def release(self, item: T) -> None:
        """Give back an object taken with :meth:`acquire`; it is reset for the next stream."""
        self._reset(item)
        with self._lock:
            self.in_use -= 1
            if len(self._idle) < self._max_idle:
                self._idle.append((item, time.monotonic()))

    def fill(self, count: int) -> None:
        """Build objects until ``count`` (at most ``max_idle``) are idle (blocking)."""
        while True:
            with self._lock:
                if len(self._idle) >= min(count, self._max_idle):
                    return
            item = self._build()
            with self._lock:
                self._idle.appendleft((item, time.monotonic()))

    def trim(self, now: float, idle_s: float) -> tuple[int, float | None]:
        """Drop objects beyond ``keep`` idle for more than ``idle_s`` seconds (oldest first).

        Returns:
            how many were dropped, and the seconds until the next one may be (None: none may).
        """
        dropped: list[T] = []
        with self._lock:
            while len(self._idle) > self._keep and now - self._idle[0][1] >= idle_s:
                dropped.append(self._idle.popleft()[0])
            next_s = self._idle[0][1] + idle_s - now if len(self._idle) > self._keep else None
        count = len(dropped)
        dropped.clear()  # freed here, outside the lock
        return count, next_s


def configure(idle_s: float) -> None:
    """Seconds an idle object beyond a pool's ``keep`` is kept (this process's pools)."""
    global _idle_s
    _idle_s = idle_s


def _malloc_trim() -> None:
    """Give freed C heap back to the system (glibc); nothing elsewhere."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def trim_idle() -> float | None:
    """Trim every pool of this process (see :meth:`IdlePool.trim`); returns the seconds until
    the next trim is due, or None if no pool holds an object that may be dropped."""
    now = time.monotonic()
    dropped = 0
    waits: list[float] = []
    for pool in list(_POOLS):
        n, wait = pool.trim(now, _idle_s)
        dropped += n
        if wait is not None:
            waits.append(wait)
    if dropped:
        _malloc_trim()
    return max(0.0, min(waits)) if waits else None
