"""The embedded stack's webhook sink: verifies signatures and records deliveries in memory.

So that the demo shows actions without any external endpoint. ``python -m shared.stack.sink``.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.serve import run_http
from shared.webhooks import verify


class SinkSettings(BaseSettings):
    """Where the sink listens and which secret it verifies with."""

    model_config = SettingsConfigDict(env_prefix="TIERFLOW_SINK_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8090
    secret: str = Field(validation_alias="TIERFLOW_WEBHOOK_SECRET")


KEPT_DELIVERIES = 10_000
"""Deliveries (and webhook ids) the sink keeps: compose runs it as long as the stack."""


def create_app(secret: str) -> FastAPI:
    """An app with ``POST /hooks/{channel}`` and ``GET /deliveries``."""
    app = FastAPI(title="Tierflow webhook sink")
    deliveries: deque[dict[str, Any]] = deque(maxlen=KEPT_DELIVERIES)
    seen: dict[str, int] = {}  # attempts per webhook id, oldest first
    counts = {"total": 0, "unique": 0}
    primary = secret.split(",", maxsplit=1)[0].strip()

    @app.post("/hooks/{channel}")
    async def receive(channel: str, request: Request) -> JSONResponse:
        body = await request.body()
        if not verify(primary, request.headers, body):
            return JSONResponse({"error": "bad signature"}, status_code=401)
        webhook_id = request.headers["webhook-id"]
        if webhook_id not in seen:
            counts["unique"] += 1
            if len(seen) >= KEPT_DELIVERIES:
                del seen[next(iter(seen))]
        seen[webhook_id] = seen.get(webhook_id, 0) + 1
        counts["total"] += 1
        deliveries.append(
            {
                "webhook_id": webhook_id,
                "channel": channel,
                "received_at": time.time(),
                "attempt": seen[webhook_id],
                "payload": orjson.loads(body),
            }
        )
        return JSONResponse({"ok": True})

    @app.get("/deliveries")
    async def listing(limit: int = 1000) -> dict[str, Any]:
        kept = list(deliveries)
        return {**counts, "deliveries": kept[-limit:] if limit > 0 else []}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    """Serve the sink."""
    settings = SinkSettings()
    run_http(create_app(settings.secret), settings.host, settings.port)


if __name__ == "__main__":
    main()
