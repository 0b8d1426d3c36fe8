"""Riding out a Redis that is down or restarting."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import RedisError

log = logging.getLogger(__name__)

T = TypeVar("T")

WAITS_S = (0.1, 0.2, 0.5, 1.0, 2.0)
"""Waits between attempts while Redis does not answer (the last repeats)."""


async def retrying(what: str, step: Callable[[], Awaitable[T]]) -> T:
    """``await step()`` until Redis answers it, waiting longer between attempts (logged once
    per outage, naming ``what`` was waiting)."""
    attempt = 0
    while True:
        try:
            return await step()
        except RedisError as exc:
            if attempt == 0:
                log.warning("cluster: %s: Redis does not answer (%s); retrying", what, exc)
            await asyncio.sleep(WAITS_S[min(attempt, len(WAITS_S) - 1)])
            attempt += 1
