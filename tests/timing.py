"""One factor for slow boxes: ``STT_TEST_SLOWDOWN`` (default 1) multiplies the tests' time
limits and divides their pacing, so a machine N times slower than a developer's 2-core box
passes the same assertions (``STT_TEST_SLOWDOWN=3 .venv/bin/pytest``). Only waits scale; no
assertion about what the gateway produced does."""

from __future__ import annotations

import os

SLOWDOWN = float(os.environ.get("STT_TEST_SLOWDOWN", "1"))
"""How many times slower than a 2-core developer box this machine is taken to be."""


def budget(seconds: float) -> float:
    """A time limit of ``seconds`` on a developer's box, on this one (s)."""
    return seconds * SLOWDOWN


def pace(speed: float) -> float:
    """A stream at ``speed`` times real time on a developer's box, on this one."""
    return speed / SLOWDOWN
