"""The operational HTTP surface every FastAPI service shares: health, readiness, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaProducer
from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.errors import install_error_handlers
from shared.metrics import install_request_metrics, metrics_payload

ReadinessCheck = Callable[[], Awaitable[dict[str, bool]]]


def ops_router(readiness: ReadinessCheck) -> APIRouter:
    """``/healthz`` (the process runs), ``/readyz`` (its dependencies answer), ``/metrics``."""
    router = APIRouter(include_in_schema=False)

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        checks = await readiness()
        ready = all(checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "not_ready", "checks": checks},
            status_code=200 if ready else 503,
        )

    @router.get("/metrics")
    async def metrics() -> Response:
        body, content_type = metrics_payload()
        return Response(body, media_type=content_type)

    return router


def install_common(app: FastAPI, service: str, readiness: ReadinessCheck) -> None:
    """Error rendering, request metrics and the ops routes, the same on every service."""
    install_error_handlers(app)
    install_request_metrics(app, service)
    app.include_router(ops_router(readiness))


async def database_ready(engine: AsyncEngine) -> bool:
    """True when a trivial query answers within two seconds."""
    try:
        async with asyncio.timeout(2), engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception:
        return False
    return True


async def producer_ready(producer: AIOKafkaProducer, topic: str) -> bool:
    """True when a broker answers a metadata request that knows ``topic``, within two seconds.

    Asks the cluster every time: cached metadata would call a broker that just went away ready.
    """
    try:
        async with asyncio.timeout(2):
            metadata = await producer.client.fetch_all_metadata()
            if not metadata.partitions_for_topic(topic):
                return False
    except Exception:
        return False
    return True


def consumer_readiness(app: FastAPI, topic: str) -> ReadinessCheck:
    """Readiness of a consumer service: its loop joined, its producer and database answer.

    Reads ``app.state.loop``, ``.producer`` and ``.engine``, which the lifespan sets.
    """

    async def readiness() -> dict[str, bool]:
        if not hasattr(app.state, "loop"):
            return {"started": False}
        return {
            "consumer": app.state.loop.joined,
            "kafka": await producer_ready(app.state.producer, topic),
            "database": await database_ready(app.state.engine),
        }

    return readiness
