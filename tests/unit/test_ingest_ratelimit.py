"""The per-source sliding-window limiter, on a clock the test moves."""

from __future__ import annotations

import pytest

from services.ingest.ratelimit import SourceLimiter
from services.ingest.sources import SourceRef
from shared.errors import RateLimited

SHOP = SourceRef("s-1", "shop", rate_limit_per_s=100)
BLOG = SourceRef("s-2", "blog")


class Clock:
    def __init__(self, at: float = 1000.0) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


def test_a_source_spends_its_own_budget_in_events_and_learns_when_to_retry() -> None:
    clock = Clock()
    limiter = SourceLimiter(default_per_s=10, clock=clock)
    limiter.admit(SHOP, 60)
    limiter.admit(SHOP, 40)
    with pytest.raises(RateLimited) as refused:
        limiter.admit(SHOP, 1)
    # the window rolls over in 1 s, and 1 % more of it must fade before one event fits: 1.01 s
    assert refused.value.retry_after == 2
    # the other source has the default budget, untouched by the first one's traffic
    limiter.admit(BLOG, 10)
    with pytest.raises(RateLimited):
        limiter.admit(BLOG, 1)


def test_the_previous_second_weighs_by_its_overlap() -> None:
    clock = Clock(1000.0)
    limiter = SourceLimiter(default_per_s=10, clock=clock)
    limiter.admit(SHOP, 100)
    clock.at = 1001.5  # half of the previous second still overlaps: 50 weighted events
    limiter.admit(SHOP, 50)
    with pytest.raises(RateLimited):
        limiter.admit(SHOP, 1)
    clock.at = 1001.95  # 5 weighted + 50 counted
    limiter.admit(SHOP, 40)
    clock.at = 1003.0  # two quiet-enough seconds later only the last one counts
    limiter.admit(SHOP, 60)


def test_a_batch_larger_than_the_budget_passes_into_an_empty_window() -> None:
    clock = Clock()
    limiter = SourceLimiter(default_per_s=10, clock=clock)
    limiter.admit(SHOP, 500)  # costs the whole second, not a refusal forever
    with pytest.raises(RateLimited):
        limiter.admit(SHOP, 500)
    clock.at += 2.0
    limiter.admit(SHOP, 500)


def test_a_zero_limit_means_unlimited() -> None:
    limiter = SourceLimiter(default_per_s=0, clock=Clock())
    for _ in range(1000):
        limiter.admit(BLOG, 500)
