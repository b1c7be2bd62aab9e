"""Per-source rate limits, counted in events so a batch costs what it carries.

The budget lives in this process: each ingest replica enforces the limit on its own share of the
traffic, so a source's effective ceiling is its limit times the replicas behind the load balancer.
That keeps the hot path free of network round trips; put a shared limiter in the gateway if a
global ceiling matters more than latency.

A token bucket written here rather than the ``limits`` library: its memory storage starts a
timer thread every 10 ms while traffic flows, and that thread's fight for the GIL cost several
percent of every request.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.ingest import metrics
from services.ingest.sources import SourceRef
from shared.errors import RateLimited

_SLACK = 1e-6
"""Events a request may exceed the bucket by: the float sum of refills is not exact."""


@dataclass(slots=True)
class _Bucket:
    """Events the source may still send (negative: owed by a batch larger than the budget), as
    of ``at``."""

    tokens: float
    at: float


class SourceLimiter:
    """A token bucket per source: it refills at the source's limit (its own, else
    ``default_per_s``) events per second and holds at most one second of them.

    A request is admitted when the bucket holds its events. One larger than a whole second's
    budget is admitted into a full bucket and leaves it owing the rest, so it can pass, yet a
    source sending large batches still averages its limit (charging it at most one second's
    budget let a 10,000-event batch every 0.1 s through at 50 times a 100/s limit).
    """

    def __init__(self, default_per_s: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._default_per_s = default_per_s
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def admit(self, source: SourceRef, events: int) -> None:
        """Spend ``events`` of the source's budget, or raise RateLimited with when to retry."""
        rate = source.rate_limit_per_s or self._default_per_s
        if rate <= 0:
            return
        now = self._clock()
        bucket = self._buckets.get(source.source_id)
        if bucket is None:
            bucket = self._buckets[source.source_id] = _Bucket(float(rate), now)
        tokens = min(float(rate), bucket.tokens + (now - bucket.at) * rate)
        if events <= tokens + _SLACK or tokens >= rate:
            bucket.tokens = tokens - events
            bucket.at = now
            return
        metrics.rejected("rate_limited").inc(events)
        missing = min(events, rate) - tokens
        raise RateLimited(
            f"source {source.name!r} is over its limit of {rate} events/s",
            retry_after=max(1, math.ceil(missing / rate)),
        )
