"""The identity process: the resolving consumer plus its HTTP surface (ops, lookups)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import timedelta

import httpx
from fastapi import FastAPI

from services.identity.api import router
from services.identity.rules import load_rules
from services.identity.service import RELAY_EVERY_S, NoticeRelay, Resolver
from services.identity.settings import IdentitySettings
from services.identity.worker import IdentityHandler, tune_gc
from shared.consumer import BatchConsumer
from shared.db import build_engine, build_sessionmaker
from shared.deadletters import dead_letter_sink
from shared.http import consumer_readiness, install_common
from shared.kafka import Publisher, build_consumer, build_producer, wait_for_broker
from shared.topics import EVENTS_RAW, EVENTS_RESOLVED


def create_app(settings: IdentitySettings) -> FastAPI:
    """Build the app; the consumer loop runs as a task of its lifespan."""
    rules = load_rules(settings.rules_path)  # a broken rules file stops the start, with the field

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = build_engine(settings, application_name="tierflow-identity")
        await wait_for_broker(settings, timeout=60)
        producer = build_producer(settings)
        await producer.start()
        consumer = build_consumer(settings, EVENTS_RAW.name, group_id=settings.group_id)
        await consumer.start()
        resolver = Resolver(
            engine,
            rules,
            phone_region=settings.phone_region,
            suppression_key=settings.suppression_key.get_secret_value().encode(),
            dedup_window=timedelta(hours=settings.dedup_window_hours),
            cache_size=settings.cache_size,
        )
        relay = NoticeRelay(build_sessionmaker(engine), Publisher(producer))
        handler = IdentityHandler(resolver, Publisher(producer), relay)
        loop = BatchConsumer(
            consumer,
            handler,
            group=settings.group_id,
            max_records=settings.batch_size,
            settle_ahead=1,
            poison=dead_letter_sink(Publisher(producer), "identity"),
        )
        app.state.engine, app.state.producer, app.state.loop = engine, producer, loop
        app.state.sessions = resolver.sessions
        app.state.resolver, app.state.relay = resolver, relay
        app.state.scoring = httpx.AsyncClient(base_url=settings.scoring_url, timeout=2.0)
        app.state.admin_token = settings.admin_token.get_secret_value()
        tune_gc()
        task = asyncio.create_task(loop.run(), name="identity-consumer")
        relaying = asyncio.create_task(relay.relay_forever(RELAY_EVERY_S), name="identity-relay")
        try:
            yield
        finally:
            relaying.cancel()
            loop.stop()
            with suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=15)
            await consumer.stop()
            await producer.stop()
            await app.state.scoring.aclose()
            await resolver.close()
            await engine.dispose()

    app = FastAPI(
        title="Tierflow identity",
        description="OneID resolution: 360° profiles, lookups by identifier, merges, erasure.",
        version="1",
        lifespan=lifespan,
    )
    install_common(app, "identity", consumer_readiness(app, EVENTS_RESOLVED.name))
    app.include_router(router)
    return app
