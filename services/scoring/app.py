"""The scoring Faust app: one agent (concurrency 1) owning one table of per-person state.

Everything about a person lives in one table value, written once per event, so a crash can
never separate "this event was counted" from "its points were added" (see ARCHITECTURE.md).
"""

from __future__ import annotations

import logging
import time
from typing import Any, cast

import faust
from prometheus_client import generate_latest
from pydantic import ValidationError

from services.scoring import metrics
from services.scoring.rules import ScoringModel, load_model
from services.scoring.service import profile_of, score_event
from services.scoring.settings import ScoringSettings
from shared.contracts import ResolvedEvent, decode, encode
from shared.deadletters import from_record
from shared.topics import DEADLETTER, EVENTS_RESOLVED, PROFILES, TIERS_CHANGES

log = logging.getLogger(__name__)


def create_app(settings: ScoringSettings, model: ScoringModel | None = None) -> faust.App:
    """Build the Faust app with its topics, table, agent and HTTP pages."""
    model = model or load_model(settings.scoring_model_path)
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{host}" for host in settings.kafka_bootstrap.split(",")],
        store=settings.scoring_store,
        datadir=str(settings.scoring_data_dir),
        processing_guarantee="at_least_once",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        topic_allow_declare=True,
        broker_session_timeout=settings.kafka_session_timeout_ms / 1000,
        broker_heartbeat_interval=settings.kafka_heartbeat_interval_ms / 1000,
        broker_rebalance_timeout=settings.kafka_rebalance_timeout_ms / 1000,
        broker_commit_interval=1.0,
        broker_request_timeout=max(30.0, settings.kafka_session_timeout_ms / 1000),
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_max_batch_size=settings.scoring_producer_max_batch_size,
        web_enabled=True,
        web_port=settings.port,
        web_bind=settings.host,
        web_host=settings.host,
        web_in_thread=False,
        stream_wait_empty=False,
    )
    raw: dict[str, Any] = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    resolved_topic = app.topic(EVENTS_RESOLVED.name, **raw)
    changes_topic = app.topic(TIERS_CHANGES.name, **raw)
    profiles_topic = app.topic(PROFILES.name, **raw)
    dead_topic = app.topic(DEADLETTER.name, **raw)
    # bytes keys: the changelog is keyed exactly like events.resolved, so partitions line up.
    people = app.Table("people", default=None, partitions=settings.topic_partitions, key_type=bytes)

    @app.agent(resolved_topic, concurrency=1)
    async def score(stream: Any) -> None:
        async for event in stream.events():
            key: bytes = event.key or b""
            try:
                resolved = decode(ResolvedEvent, event.value)
                state, counted, change = score_event(people.get(key), resolved, model)
            except Exception as error:
                # faust treats an event whose handler raised as done, so a message the model
                # cannot apply must be dead-lettered here with its cause, never dropped.
                outcome = "invalid" if isinstance(error, ValidationError) else "failed"
                metrics.EVENTS.labels(outcome).inc()
                log.warning("dead-lettering event: %r", error)
                letter = from_record("scoring", cast(Any, _AsRecord(event)), error)
                await dead_topic.send(key=key, value=encode(letter))
                continue
            if not counted:
                metrics.EVENTS.labels("duplicate").inc()
                continue
            metrics.EVENTS.labels("scored").inc()
            people[key] = state
            if change is not None:
                # wait for the ack: the offset is committed only after this event is handled
                await (await changes_topic.send(key=key, value=encode(change)))
                profile = profile_of(resolved.oneid, state, model, time.time())
                await profiles_topic.send(key=key, value=encode(profile))
                data = change.data
                metrics.TIER_CHANGES.labels(data.from_tier or "none", data.to_tier).inc()
                metrics.EVENT_TO_CHANGE.observe(
                    max(0.0, time.time() - resolved.event.received_at.timestamp())
                )

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        consumer = app.consumer if app.consumer is not None else None
        checks = {
            "consumer": bool(consumer and consumer.assignment()),
            "tables_recovered": cast(Any, app.tables).recovery.completed.is_set(),
        }
        ready = all(checks.values())
        return web.json(
            {"status": "ready" if ready else "not_ready", "checks": checks},
            status=200 if ready else 503,
        )

    @app.page("/metrics")
    async def prometheus(web: Any, request: Any) -> Any:
        metrics.PEOPLE.set(len(people))
        return web.bytes(generate_latest(), content_type="text/plain; version=0.0.4")

    @app.page("/v1/scores/{oneid}")
    @app.table_route(table=people, match_info="oneid")
    async def scores(web: Any, request: Any, oneid: str) -> Any:
        state = people.get(oneid.encode())
        if state is None:
            return web.json({"error": "not_found", "detail": f"no scores for {oneid}"}, status=404)
        return web.json(profile_of(oneid, state, model, time.time()).model_dump(mode="json"))

    del score, healthz, readyz, prometheus, scores
    return app


class _AsRecord:
    """Adapts a Faust event to the fields a dead letter names (topic, partition, offset)."""

    def __init__(self, event: Any) -> None:
        message = event.message
        self.topic, self.partition, self.offset = message.topic, message.partition, message.offset
        self.key, self.value = event.key, event.value
