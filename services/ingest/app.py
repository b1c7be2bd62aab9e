"""The ingest FastAPI application and its lifespan (producer, database, sources)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.ingest.api import install_tracking
from services.ingest.ratelimit import SourceLimiter
from services.ingest.service import Acceptor
from services.ingest.settings import IngestSettings
from services.ingest.sources import SourceDirectory, ensure_source
from shared.db import build_engine, build_sessionmaker
from shared.http import database_ready, install_common, producer_ready
from shared.kafka import build_producer, wait_for_broker
from shared.topics import EVENTS_RAW

DEV_SOURCE_ID = "dev"


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
        app.state.sources = SourceDirectory(sessions, ttl_s=settings.source_cache_ttl_s)
        app.state.limiter = SourceLimiter(settings.default_rate_limit_per_s)
        app.state.acceptor = Acceptor(
            producer, timeout_s=settings.produce_timeout_s, retry_after_s=settings.retry_after_s
        )
        try:
            yield
        finally:
            await producer.stop()
            await engine.dispose()

    async def readiness() -> dict[str, bool]:
        if not hasattr(app.state, "acceptor"):
            return {"started": False}
        return {
            "kafka": await producer_ready(app.state.acceptor.producer, EVENTS_RAW.name),
            "database": await database_ready(app.state.engine),
        }

    app = FastAPI(
        title="Tierflow ingest",
        description="Segment-compatible Tracking API. A 2xx means Kafka acknowledged every event.",
        version="1",
        lifespan=lifespan,
        # Prometheus is the metrics path; FastAPI's OpenTelemetry probe costs ~4% per request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_common(app, "ingest", readiness)
    install_tracking(app)
    return app
