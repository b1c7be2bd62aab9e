"""Demo traffic: a few thousand simulated customers browsing, attending webinars, buying and
going silent, posted to ingest as Segment batches. ``python -m shared.stack.demo``."""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PERSONAS = ("browser", "webinar_regular", "buyer", "big_buyer", "drifter")
WEIGHTS = (0.45, 0.2, 0.2, 0.05, 0.1)


class DemoSettings(BaseSettings):
    """Where to send, as whom, and how much."""

    model_config = SettingsConfigDict(env_prefix="TIERFLOW_DEMO_", extra="ignore")

    ingest_url: str = "http://127.0.0.1:8080"
    write_key: SecretStr = Field(
        default=SecretStr("dev-write-key"), validation_alias="TIERFLOW_DEV_WRITE_KEY"
    )
    customers: int = Field(default=3000, ge=1)
    events_per_second: float = Field(default=200.0, gt=0)
    batch_size: int = Field(default=50, ge=1, le=500)
    seed: int = 7


@dataclass
class Customer:
    """One simulated person: an anonymous cookie first, an account and email once they sign up."""

    anonymous_id: str
    persona: str
    user_id: str | None = None
    active: bool = True


def _event(customer: Customer, rng: random.Random) -> dict[str, Any]:
    ids: dict[str, Any] = {"anonymousId": customer.anonymous_id}
    if customer.user_id:
        ids["userId"] = customer.user_id
    now = datetime.now(UTC).isoformat()
    base = {**ids, "messageId": str(uuid.uuid4()), "timestamp": now}
    roll = rng.random()
    persona = customer.persona
    if customer.user_id is None and roll < 0.05:
        customer.user_id = f"user-{customer.anonymous_id[-8:]}"
        return {
            **base,
            "type": "identify",
            "userId": customer.user_id,
            "traits": {
                "email": f"{customer.user_id}@example.org",
                "company_size": rng.choice([10, 50, 500]),
            },
        }
    if persona in ("buyer", "big_buyer") and roll < 0.25:
        revenue = (
            rng.choice([200, 400, 900]) if persona == "big_buyer" else rng.choice([20, 60, 120])
        )
        return {
            **base,
            "type": "track",
            "event": "Order Completed",
            "properties": {"revenue": revenue},
        }
    if persona == "webinar_regular" and roll < 0.4:
        return {
            **base,
            "type": "track",
            "event": "Webinar Attended",
            "properties": {"webinar": "weekly"},
        }
    if roll < 0.5:
        return {**base, "type": "page", "name": "Pricing", "properties": {"path": "/pricing"}}
    if roll < 0.55:
        return {**base, "type": "track", "event": "Form Submitted"}
    return {**base, "type": "page", "name": "Docs", "properties": {"path": "/docs"}}


async def run(settings: DemoSettings) -> None:
    """Post batches at the configured rate until cancelled; drifters fall silent over time."""
    rng = random.Random(settings.seed)
    customers = [
        Customer(f"anon-{uuid.UUID(int=rng.getrandbits(128))}", rng.choices(PERSONAS, WEIGHTS)[0])
        for _ in range(settings.customers)
    ]
    interval = settings.batch_size / settings.events_per_second
    auth = (settings.write_key.get_secret_value(), "")
    async with httpx.AsyncClient(base_url=settings.ingest_url, auth=auth, timeout=10) as client:
        while True:
            started = asyncio.get_running_loop().time()
            active = [c for c in customers if c.active]
            batch = [_event(rng.choice(active), rng) for _ in range(settings.batch_size)]
            for customer in active:
                if customer.persona == "drifter" and rng.random() < 0.001:
                    customer.active = False
            try:
                await client.post(
                    "/v1/batch", json={"batch": batch, "sentAt": datetime.now(UTC).isoformat()}
                )
            except httpx.HTTPError:
                await asyncio.sleep(1)
            elapsed = asyncio.get_running_loop().time() - started
            await asyncio.sleep(max(0.0, interval - elapsed))


def main() -> None:
    """Run until interrupted."""
    try:
        asyncio.run(run(DemoSettings()))
    except KeyboardInterrupt:
        return


if __name__ == "__main__":
    main()
