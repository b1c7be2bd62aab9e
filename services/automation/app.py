"""The automation process: three consumers (tier changes, identity notices, profiles), the
dispatcher, the outbox publisher, and the operator API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress

from aiokafka import AIOKafkaConsumer
from fastapi import FastAPI

from services.automation.api import router
from services.automation.clock import Clock, SystemClock
from services.automation.delivery import build_endpoints
from services.automation.playbooks import CHANNELS, load_playbooks
from services.automation.service import AutomationService, DeliveryPolicy
from services.automation.settings import AutomationSettings
from services.automation.worker import (
    IdentityNoticeHandler,
    ProfileHandler,
    TierChangeHandler,
    run_loop,
)
from shared.consumer import BatchConsumer, BatchHandler
from shared.db import build_engine, build_sessionmaker
from shared.deadletters import dead_letter_sink
from shared.http import consumer_readiness, install_common
from shared.kafka import Publisher, build_consumer, build_producer, wait_for_broker
from shared.topics import ACTIONS, IDENTITY_MERGES, PROFILES, TIERS_CHANGES


async def _start_feeds(
    settings: AutomationSettings, service: AutomationService, publisher: Publisher
) -> list[tuple[AIOKafkaConsumer, BatchConsumer]]:
    """The started consumers of tier changes, identity notices and profiles, each in its own
    group, with the loop that hands their batches over."""
    poison = dead_letter_sink(publisher, "automation")
    feeds: list[tuple[str, str, BatchHandler]] = [
        (TIERS_CHANGES.name, settings.group_id, TierChangeHandler(service, publisher)),
        (
            IDENTITY_MERGES.name,
            f"{settings.group_id}-identity",
            IdentityNoticeHandler(service, publisher),
        ),
        (PROFILES.name, f"{settings.group_id}-profiles", ProfileHandler(service)),
    ]
    started = []
    for topic, group, handler in feeds:
        consumer = build_consumer(settings, topic, group_id=group)
        await consumer.start()
        started.append((consumer, BatchConsumer(consumer, handler, group=group, poison=poison)))
    return started


def create_app(settings: AutomationSettings, clock: Clock | None = None) -> FastAPI:
    """Build the app; playbooks are validated before anything starts."""
    playbooks = load_playbooks(settings.playbooks_path)
    time_source = clock or SystemClock()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = build_engine(settings, application_name="tierflow-automation")
        sessions = build_sessionmaker(engine)
        await wait_for_broker(settings, timeout=60)
        producer = build_producer(settings)
        await producer.start()
        publisher = Publisher(producer)
        endpoints = build_endpoints(
            settings.webhook_base_url,
            settings.webhook_endpoints,
            CHANNELS,
            timeout_s=settings.webhook_timeout_s,
            concurrency=settings.endpoint_concurrency,
            breaker_threshold=settings.breaker_threshold,
            breaker_cooldown_s=settings.breaker_cooldown_s,
        )
        policy = DeliveryPolicy(
            secrets=[s.get_secret_value() for s in settings.webhook_secrets],
            attempts=settings.webhook_attempts,
            backoff_base_s=settings.webhook_backoff_base_s,
            backoff_cap_s=settings.webhook_backoff_cap_s,
            lease_s=settings.delivery_lease_s,
        )
        service = AutomationService(sessions, playbooks, endpoints, policy, time_source)
        feeds = await _start_feeds(settings, service, publisher)
        stopping = asyncio.Event()
        app.state.engine, app.state.sessions, app.state.producer = engine, sessions, producer
        app.state.loop, app.state.service = feeds[0][1], service
        app.state.admin_token = settings.admin_token.get_secret_value()
        consumers = [
            asyncio.create_task(feed.run(), name=f"automation-{topic}")
            for topic, (_, feed) in zip(("changes", "notices", "profiles"), feeds, strict=True)
        ]
        loops = [
            asyncio.create_task(
                run_loop(
                    "dispatch", service.dispatch_once, service.wake, idle_s=0.5, stopping=stopping
                )
            ),
            asyncio.create_task(
                run_loop(
                    "outbox",
                    lambda: service.publish_once(publisher),
                    service.outbox_wake,
                    idle_s=0.5,
                    stopping=stopping,
                )
            ),
            asyncio.create_task(
                run_loop("gauges", _gauges(service), None, idle_s=15, stopping=stopping)
            ),
        ]
        try:
            yield
        finally:
            for _, feed in feeds:
                feed.stop()
            with suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(asyncio.gather(*consumers), timeout=15)
            stopping.set()
            with suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(asyncio.gather(*loops), timeout=15)
            await service.drain()
            with suppress(Exception):
                await service.publish_once(publisher)
            for consumer, _ in feeds:
                await consumer.stop()
            await producer.stop()
            for endpoint in endpoints.values():
                await endpoint.aclose()
            await engine.dispose()

    app = FastAPI(
        title="Tierflow automation",
        description="Touch actions per tier: a person's actions, the dead-letter, the playbooks.",
        version="1",
        lifespan=lifespan,
    )
    install_common(app, "automation", consumer_readiness(app, ACTIONS.name))
    app.include_router(router)
    return app


def _gauges(service: AutomationService) -> Callable[[], Awaitable[int]]:
    async def refresh() -> int:
        await service.refresh_gauges()
        return 0

    return refresh
