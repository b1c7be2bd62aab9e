"""Per-source rate limits, counted in events so a batch costs what it carries.

The window lives in this process: each ingest replica enforces the limit on its own share of the
traffic, so a source's effective ceiling is its limit times the replicas behind the load balancer.
That keeps the hot path free of network round trips; put a shared limiter in the gateway if a
global ceiling matters more than latency.

A sliding-window counter written here rather than the ``limits`` library: its memory storage
starts a timer thread every 10 ms while traffic flows, and that thread's fight for the GIL cost
several percent of every request.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.ingest import metrics
from services.ingest.sources import SourceRef
from shared.errors import RateLimited


@dataclass(slots=True)
class _Window:
    """Events counted in the current one-second window and in the one before it."""

    started: float
    current: int = 0
    previous: int = 0


class SourceLimiter:
    """Sliding-window (1 s) event budget per source: its own limit, else ``default_per_s``.

    The previous second's count is weighted by how much of it still overlaps the last second, as
    in the classic sliding-window-counter approximation.
    """

    def __init__(self, default_per_s: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._default_per_s = default_per_s
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def admit(self, source: SourceRef, events: int) -> None:
        """Spend ``events`` of the source's budget, or raise RateLimited with when to retry.

        A batch larger than a whole second's budget costs the full budget, so it can pass once the
        window is empty instead of being refused forever.
        """
        rate = source.rate_limit_per_s or self._default_per_s
        if rate <= 0:
            return
        cost = max(1, min(events, rate))
        now = self._clock()
        window = self._windows.get(source.source_id)
        if window is None:
            window = self._windows[source.source_id] = _Window(math.floor(now))
        elapsed = now - window.started
        if elapsed >= 1.0:
            window.previous = window.current if elapsed < 2.0 else 0
            window.current = 0
            window.started += math.floor(elapsed)
            elapsed -= math.floor(elapsed)
        weighted = window.previous * (1.0 - elapsed) + window.current
        if weighted + cost <= rate:
            window.current += cost
            return
        metrics.rejected("rate_limited").inc(events)
        raise RateLimited(
            f"source {source.name!r} is over its limit of {rate} events/s",
            retry_after=max(1, math.ceil(self._wait(window, elapsed, cost, rate))),
        )

    @staticmethod
    def _wait(window: _Window, elapsed: float, cost: int, rate: int) -> float:
        """Seconds until ``cost`` more events fit: into the rest of this window if the previous
        one's weight fades enough, else into the next window as this one's weight fades."""
        if window.previous and window.current + cost <= rate:
            fades_at = 1.0 - (rate - cost - window.current) / window.previous
            return max(0.0, fades_at - elapsed)
        overlap = 1.0 - (rate - cost) / window.current if window.current else 0.0
        return (1.0 - elapsed) + max(0.0, overlap)
