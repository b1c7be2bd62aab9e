"""The identity process: the resolving consumer plus its HTTP surface (ops, lookups)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import timedelta

from fastapi import FastAPI

from services.identity.api import router
from services.identity.service import Resolver
from services.identity.settings import IdentitySettings
from services.identity.worker import IdentityHandler
from shared.consumer import BatchConsumer
from shared.db import build_engine
from shared.http import consumer_readiness, install_common
from shared.kafka import Publisher, build_consumer, build_producer, wait_for_broker
from shared.topics import EVENTS_RAW, EVENTS_RESOLVED


def create_app(settings: IdentitySettings) -> FastAPI:
    """Build the app; the consumer loop runs as a task of its lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = build_engine(settings, application_name="tierflow-identity")
        await wait_for_broker(settings, timeout=60)
        producer = build_producer(settings)
        await producer.start()
        consumer = build_consumer(settings, EVENTS_RAW.name, group_id=settings.group_id)
        await consumer.start()
        resolver = Resolver(engine, dedup_window=timedelta(hours=settings.dedup_window_hours))
        handler = IdentityHandler(resolver, Publisher(producer))
        loop = BatchConsumer(
            consumer, handler, group=settings.group_id, max_records=settings.batch_size
        )
        app.state.engine, app.state.producer, app.state.loop = engine, producer, loop
        app.state.sessions = resolver.sessions
        app.state.admin_token = settings.admin_token.get_secret_value()
        task = asyncio.create_task(loop.run(), name="identity-consumer")
        try:
            yield
        finally:
            loop.stop()
            with suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=15)
            await consumer.stop()
            await producer.stop()
            await engine.dispose()

    app = FastAPI(
        title="Tierflow identity",
        description="OneID resolution: lookups of persons by OneID or identifier.",
        version="1",
        lifespan=lifespan,
    )
    install_common(app, "identity", consumer_readiness(app, EVENTS_RESOLVED.name))
    app.include_router(router)
    return app
