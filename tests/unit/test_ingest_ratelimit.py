"""The per-source token bucket, on a clock the test moves."""

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
    assert refused.value.retry_after == 1
    clock.at += 0.3  # 30 events refilled
    limiter.admit(SHOP, 30)
    with pytest.raises(RateLimited) as refused:
        limiter.admit(SHOP, 90)
    assert refused.value.retry_after == 1  # 0.9 s until 90 fit
    # the other source has the default budget, untouched by the first one's traffic
    limiter.admit(BLOG, 10)
    with pytest.raises(RateLimited):
        limiter.admit(BLOG, 1)


def test_the_budget_refills_at_the_limit_and_holds_one_second() -> None:
    clock = Clock()
    limiter = SourceLimiter(default_per_s=10, clock=clock)
    limiter.admit(SHOP, 100)
    clock.at += 60.0  # a quiet minute still holds only one second's budget
    limiter.admit(SHOP, 100)
    with pytest.raises(RateLimited):
        limiter.admit(SHOP, 1)


def test_a_batch_larger_than_the_budget_passes_and_is_owed() -> None:
    clock = Clock()
    limiter = SourceLimiter(default_per_s=10, clock=clock)
    limiter.admit(SHOP, 500)  # into a full bucket: passes, and leaves 400 owed
    with pytest.raises(RateLimited) as refused:
        limiter.admit(SHOP, 500)
    assert refused.value.retry_after == 5  # 400 owed + 100 to fill, at 100/s
    clock.at += 4.99
    with pytest.raises(RateLimited):
        limiter.admit(SHOP, 500)
    clock.at += 0.01
    limiter.admit(SHOP, 500)


def test_large_batches_average_the_limit() -> None:
    clock = Clock()
    limiter = SourceLimiter(default_per_s=10, clock=clock)
    admitted = 0
    for _ in range(100):  # a 10,000-event batch every 0.1 s for 10 s
        try:
            limiter.admit(SHOP, 10_000)
            admitted += 10_000
        except RateLimited:
            pass
        clock.at += 0.1
    assert admitted == 10_000  # 100 events/s for 10 s is 1,000: one batch, then owed


def test_a_zero_limit_means_unlimited() -> None:
    limiter = SourceLimiter(default_per_s=0, clock=Clock())
    for _ in range(1000):
        limiter.admit(BLOG, 500)
