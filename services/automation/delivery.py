"""Signed webhook delivery with retries: backoff with jitter, Retry-After, no retry on 4xx."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import httpx
import orjson

from services.automation import metrics
from shared.webhooks import sign_headers

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """How a delivery ended."""

    delivered: bool
    attempts: int
    status_code: int | None
    error: str | None


def backoff_s(attempt: int, base: float, cap: float, retry_after: str | None) -> float:
    """Seconds before the next try: the server's Retry-After if given, else full-jitter backoff."""
    if retry_after is not None and retry_after.isdigit():
        return min(float(retry_after), cap)
    return random.uniform(0, min(cap, base * 2**attempt))


class WebhookSender:
    """Posts signed JSON; the webhook id is the action id, so receivers can deduplicate."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        base_url: str,
        secrets: list[str],
        attempts: int,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
    ) -> None:
        self._client = client
        self._base_url = base_url.rstrip("/")
        self._secrets = secrets
        self._attempts = attempts
        self._base = backoff_base_s
        self._cap = backoff_cap_s

    def url_for(self, channel: str) -> str:
        """The endpoint of a channel."""
        return f"{self._base_url}/{channel}"

    async def send(
        self, action_id: str, channel: str, payload: dict[str, object]
    ) -> DeliveryResult:
        """Deliver once, retrying transient failures up to the configured attempts."""
        body = orjson.dumps(payload)
        status: int | None = None
        error: str | None = None
        for attempt in range(1, self._attempts + 1):
            headers = {
                "content-type": "application/json",
                **sign_headers(self._secrets, action_id, body),
            }
            started = asyncio.get_running_loop().time()
            retry_after: str | None = None
            try:
                response = await self._client.post(
                    self.url_for(channel), content=body, headers=headers
                )
                status, error = response.status_code, None
                metrics.DELIVERY_LATENCY.labels(channel).observe(
                    asyncio.get_running_loop().time() - started
                )
                if response.is_success:
                    return DeliveryResult(True, attempt, status, None)
                if status not in RETRYABLE_STATUS:
                    return DeliveryResult(False, attempt, status, f"HTTP {status}: not retried")
                retry_after = response.headers.get("retry-after")
                error = f"HTTP {status}"
            except httpx.HTTPError as exc:
                status, error = None, f"{type(exc).__name__}: {exc}"
            if attempt < self._attempts:
                metrics.RETRIES.labels(channel).inc()
                await asyncio.sleep(backoff_s(attempt, self._base, self._cap, retry_after))
        return DeliveryResult(False, self._attempts, status, error)
