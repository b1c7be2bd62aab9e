"""Signed webhook delivery, one attempt at a time, isolated per endpoint.

Retries are not slept on here: a failed attempt is rescheduled in Postgres (see the service), so
a dead endpoint holds no worker, survives restarts, and follows the injected clock. Each endpoint
has its own HTTP client, concurrency limit and circuit breaker, so it cannot slow the others.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from services.automation import metrics
from shared.webhooks import sign_headers

NOT_RETRIED_BELOW_500 = frozenset({408, 425, 429})


@dataclass(frozen=True, slots=True)
class Attempt:
    """How one HTTP attempt ended; ``retry_after_s`` is the server's wish, if it said one."""

    delivered: bool
    retryable: bool
    status_code: int | None
    error: str | None
    retry_after_s: float | None = None


def retryable_status(status: int) -> bool:
    """5xx, 408, 425 and 429 are worth another try; any other 4xx will fail the same way."""
    return status >= 500 or status in NOT_RETRIED_BELOW_500


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """``Retry-After`` as seconds from ``now``: delta-seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000" is UTC with no offset known (RFC 5322): naive here
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def retry_delay_s(
    attempts: int,
    *,
    base_s: float,
    cap_s: float,
    retry_after_s: float | None,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds before the next try after ``attempts`` failed ones.

    The server's ``Retry-After`` wins (up to ``cap_s``); otherwise exponential backoff with
    "equal jitter": a random point in the upper half of ``base * 2^(attempts-1)``, so retries of
    many actions spread out but never come sooner than half the schedule.
    """
    if retry_after_s is not None:
        return min(retry_after_s, cap_s)
    ceiling: float = min(cap_s, base_s * 2.0 ** max(0, attempts - 1))
    return ceiling / 2 + rand() * ceiling / 2


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; while open, attempts fail fast for
    ``cooldown_s``; after that attempts go out again and one more failure re-opens it."""

    def __init__(self, threshold: int, cooldown_s: float) -> None:
        self._threshold = threshold
        self._cooldown_s = cooldown_s
        self._failures = 0
        self._open_until = 0.0

    def allows(self, now_s: float) -> bool:
        """True when an attempt may go out at ``now_s`` (epoch seconds of the clock)."""
        return self._failures < self._threshold or now_s >= self._open_until

    def record(self, ok: bool, now_s: float) -> None:
        """Count one attempt's outcome."""
        if ok:
            self._failures = 0
            return
        self._failures += 1
        if self._failures >= self._threshold:
            self._open_until = now_s + self._cooldown_s

    @property
    def is_open(self) -> bool:
        """True while failures exceed the threshold."""
        return self._failures >= self._threshold


class Endpoint:
    """One destination with its own client, concurrency limit and breaker."""

    def __init__(
        self, name: str, url: str, *, timeout_s: float, concurrency: int, breaker: CircuitBreaker
    ) -> None:
        self.name = name
        self.url = url
        self.breaker = breaker
        self.concurrency = concurrency
        self.in_flight = 0
        self._timeout_s = timeout_s
        self._limit = asyncio.Semaphore(concurrency)
        self._client = httpx.AsyncClient(
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )

    @property
    def saturated(self) -> bool:
        """True when no more work should be claimed for this endpoint now."""
        return self.in_flight >= self.concurrency

    async def post(
        self, secrets: list[str], webhook_id: str, body: bytes, now: datetime
    ) -> Attempt:
        """One signed attempt; never raises for network or HTTP failures."""
        now_s = now.timestamp()
        if not self.breaker.allows(now_s):
            return Attempt(False, True, None, "circuit open")
        headers = {"content-type": "application/json", **sign_headers(secrets, webhook_id, body)}
        async with self._limit:
            started = time.perf_counter()
            try:
                # httpx's timeout bounds each read, not the request: a receiver trickling its
                # answer could outlive the lease and be sent to again meanwhile
                async with asyncio.timeout(self._timeout_s):
                    response = await self._client.post(self.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                attempt = Attempt(False, True, None, f"{type(exc).__name__}: {exc}"[:500])
            except TimeoutError:
                error = f"no complete answer within {self._timeout_s:g} s"
                attempt = Attempt(False, True, None, error)
            else:
                status = response.status_code
                if response.is_success:
                    attempt = Attempt(True, False, status, None)
                else:
                    attempt = Attempt(
                        False,
                        retryable_status(status),
                        status,
                        f"HTTP {status}",
                        parse_retry_after(response.headers.get("retry-after"), now),
                    )
            metrics.DELIVERY_LATENCY.labels(self.name).observe(time.perf_counter() - started)
        self.breaker.record(attempt.delivered, now_s)
        metrics.ENDPOINT_UP.labels(self.name).set(0 if self.breaker.is_open else 1)
        return attempt

    async def aclose(self) -> None:
        """Close its connections."""
        await self._client.aclose()


def build_endpoints(
    base_url: str,
    overrides: Mapping[str, str],
    channels: tuple[str, ...],
    *,
    timeout_s: float,
    concurrency: int,
    breaker_threshold: int,
    breaker_cooldown_s: float,
) -> dict[str, Endpoint]:
    """One endpoint per channel: its override URL, else ``<base_url>/<channel>``."""
    return {
        channel: Endpoint(
            channel,
            overrides.get(channel, f"{base_url.rstrip('/')}/{channel}"),
            timeout_s=timeout_s,
            concurrency=concurrency,
            breaker=CircuitBreaker(breaker_threshold, breaker_cooldown_s),
        )
        for channel in channels
    }
