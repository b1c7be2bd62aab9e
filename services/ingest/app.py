"""The ingest FastAPI application and its lifespan (producer, database, sources)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from functools import lru_cache
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from prometheus_client import Counter, Histogram
from starlette.types import Message, Receive, Scope, Send

from services.ingest.api import (
    TRACKING,
    Disconnected,
    document,
    no_route,
    preflight,
    respond_error,
    tracking_route,
    tracking_routes,
    wrong_method,
)
from services.ingest.ratelimit import SourceLimiter
from services.ingest.service import Acceptor, Collector
from services.ingest.settings import IngestSettings
from services.ingest.sources import SourceDirectory, ensure_source
from shared.db import build_engine, build_sessionmaker
from shared.errors import TierflowError
from shared.http import install_common, producer_ready
from shared.kafka import build_producer, wait_for_broker
from shared.metrics import HTTP_LATENCY, HTTP_REQUESTS
from shared.topics import EVENTS_RAW

DEV_SOURCE_ID = "dev"
SERVICE = "ingest"

log = logging.getLogger(__name__)


@lru_cache(maxsize=64)
def _requests(route: str, status: str) -> Counter:
    return HTTP_REQUESTS.labels(SERVICE, route, status)


@lru_cache(maxsize=64)
def _latency(route: str) -> Histogram:
    return HTTP_LATENCY.labels(SERVICE, route)


class IngestApp(FastAPI):
    """FastAPI for everything but the tracking calls, which go straight to their endpoints.

    Tracking POSTs skip FastAPI's and Starlette's middleware stack (error middleware, exception
    middleware, body limits, request metrics) and do the same work themselves: typed errors are
    rendered in the shared shape, unexpected ones as 500, and the request metrics are recorded
    with the same names and labels. Every answer under ``/v1/`` (a 404, a 405) is theirs, so a
    page can read it (CORS).
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = tracking_route(scope["path"]) if scope["type"] == "http" else None
        if route is None:
            await super().__call__(scope, receive, send)
            return
        endpoint = TRACKING.get(route, no_route)
        if endpoint is not no_route and scope["method"] != "POST":
            if scope["method"] == "OPTIONS":
                await preflight(send)
                return
            endpoint = wrong_method
        scope["app"] = self
        started = time.perf_counter()
        status = 500
        response_started = False

        async def sending(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
            await send(message)

        try:
            await endpoint(scope, receive, sending)
        except TierflowError as error:
            await respond_error(sending, error)
        except Disconnected:
            status = 499
        except Exception:
            log.exception("unexpected error on %s", scope["path"])
            if response_started:
                raise
            await respond_error(sending, TierflowError("internal error"))
        finally:
            _latency(route).observe(time.perf_counter() - started)
            _requests(route, f"{status // 100}xx").inc()


def create_app(settings: IngestSettings) -> FastAPI:
    """Build the app; clients are created in the lifespan and kept on ``app.state``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = build_engine(settings, application_name="tierflow-ingest")
        sessions = build_sessionmaker(engine)
        dev_key = settings.dev_write_key.get_secret_value()
        if dev_key:
            await ensure_source(sessions, source_id=DEV_SOURCE_ID, name="dev", write_key=dev_key)
        await wait_for_broker(settings, timeout=60)
        producer = build_producer(settings)
        await producer.start()
        app.state.settings = settings
        app.state.engine = engine
        app.state.sources = SourceDirectory(
            sessions,
            ttl_s=settings.source_cache_ttl_s,
            timeout_s=settings.produce_timeout_s,
            retry_after_s=settings.retry_after_s,
        )
        acceptor = Acceptor(
            producer, timeout_s=settings.produce_timeout_s, retry_after_s=settings.retry_after_s
        )
        app.state.collector = Collector(
            acceptor,
            SourceLimiter(settings.default_rate_limit_per_s),
            max_event_bytes=settings.max_event_bytes,
            max_clock_ahead=timedelta(seconds=settings.max_clock_ahead_s),
        )
        try:
            yield
        finally:
            await producer.stop()
            await engine.dispose()

    async def readiness() -> dict[str, bool]:
        """Kafka only: without Postgres, ingest still serves every write key it has checked
        (:class:`SourceDirectory`), so a database outage must not take every replica out of
        the load balancer."""
        if not hasattr(app.state, "collector"):
            return {"started": False}
        return {
            "kafka": await producer_ready(app.state.collector.acceptor.producer, EVENTS_RAW.name)
        }

    app = IngestApp(
        title="Tierflow ingest",
        description="Segment-compatible Tracking API. A 2xx means Kafka acknowledged every event.",
        version="1",
        lifespan=lifespan,
        # Prometheus is the metrics path; FastAPI's OpenTelemetry probe costs ~4% per request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_common(app, SERVICE, readiness)
    app.router.routes.extend(tracking_routes())

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
