"""Per-source rate limits, counted in events so a batch costs what it carries.

The window lives in this process: each ingest replica enforces the limit on its own share of the
traffic, so a source's effective ceiling is its limit times the replicas behind the load balancer.
That keeps the hot path free of network round trips; put a shared limiter in the gateway if a
global ceiling matters more than latency.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from services.ingest import metrics
from services.ingest.sources import SourceRef
from shared.errors import RateLimited


class SourceLimiter:
    """Sliding-window (1 s) event budget per source: its own limit, else ``default_per_s``."""

    def __init__(self, default_per_s: int) -> None:
        self._default_per_s = default_per_s
        self._limiter = SlidingWindowCounterRateLimiter(MemoryStorage())
        self._items: dict[int, RateLimitItem] = {}

    def admit(self, source: SourceRef, events: int) -> None:
        """Spend ``events`` of the source's budget, or raise RateLimited with when to retry.

        A batch larger than a whole second's budget costs the full budget, so it can pass once the
        window is empty instead of being refused forever.
        """
        rate = source.rate_limit_per_s or self._default_per_s
        if rate <= 0:
            return
        item = self._items.get(rate)
        if item is None:
            item = self._items[rate] = RateLimitItemPerSecond(rate)
        if self._limiter.hit(item, source.source_id, cost=max(1, min(events, rate))):
            return
        metrics.REJECTED.labels("rate_limited").inc(events)
        reset_at = self._limiter.get_window_stats(item, source.source_id).reset_time
        raise RateLimited(
            f"source {source.name!r} is over its limit of {rate} events/s",
            retry_after=max(1, math.ceil(reset_at - time.time())),
        )
