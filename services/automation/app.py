"""The automation process: the tier-change consumer, the sweeper, and the operator API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import httpx
from fastapi import FastAPI

from services.automation.api import router
from services.automation.delivery import WebhookSender
from services.automation.playbooks import load_playbooks
from services.automation.service import ActionRunner
from services.automation.settings import AutomationSettings
from services.automation.worker import AutomationHandler, sweep_forever
from shared.consumer import BatchConsumer
from shared.db import build_engine, build_sessionmaker
from shared.http import consumer_readiness, install_common
from shared.kafka import Publisher, build_consumer, build_producer, wait_for_broker
from shared.topics import ACTIONS, TIERS_CHANGES


def create_app(settings: AutomationSettings) -> FastAPI:
    """Build the app; playbooks are validated before anything starts."""
    playbooks = load_playbooks(settings.playbooks_path)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = build_engine(settings, application_name="tierflow-automation")
        sessions = build_sessionmaker(engine)
        await wait_for_broker(settings, timeout=60)
        producer = build_producer(settings)
        await producer.start()
        publisher = Publisher(producer)
        client = httpx.AsyncClient(
            timeout=settings.webhook_timeout_s,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )
        sender = WebhookSender(
            client,
            base_url=settings.webhook_base_url,
            secrets=[s.get_secret_value() for s in settings.webhook_secrets],
            attempts=settings.webhook_attempts,
        )
        runner = ActionRunner(sessions, playbooks, sender, publisher)
        consumer = build_consumer(settings, TIERS_CHANGES.name, group_id=settings.group_id)
        await consumer.start()
        loop = BatchConsumer(
            consumer, AutomationHandler(runner, publisher), group=settings.group_id
        )
        app.state.engine, app.state.sessions, app.state.producer = engine, sessions, producer
        app.state.loop, app.state.playbooks = loop, playbooks
        app.state.admin_token = settings.admin_token.get_secret_value()
        tasks = [
            asyncio.create_task(loop.run(), name="automation-consumer"),
            asyncio.create_task(sweep_forever(runner), name="automation-sweeper"),
        ]
        try:
            yield
        finally:
            loop.stop()
            tasks[1].cancel()
            with suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(asyncio.gather(*tasks), timeout=15)
            await consumer.stop()
            await producer.stop()
            await client.aclose()
            await engine.dispose()

    app = FastAPI(
        title="Tierflow automation",
        description="Touch actions per tier: a person's actions and the playbooks in force.",
        version="1",
        lifespan=lifespan,
    )
    install_common(app, "automation", consumer_readiness(app, ACTIONS.name))
    app.include_router(router)
    return app
