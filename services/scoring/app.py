"""The scoring Faust app: one loop (the only writer, one batch at a time) owning one table of
per-person state.

Everything about a person lives in one table value, so a crash can never separate "this event
was counted" from "its points were added" (see ARCHITECTURE.md). Messages a batch produces are
acknowledged before its states reach the changelog; the loop writes each changed person's
changelog record at most once per flush interval, and acks the consumed messages only after
those records are acknowledged: after a crash, work is redone, never lost.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any, cast

import aiohttp
import faust
from faust.exceptions import SameNode
from faust.web.exceptions import ServiceUnavailable
from prometheus_client import generate_latest

from services.scoring import metrics, service
from services.scoring.clock import build_clock
from services.scoring.feed import ScoringApp
from services.scoring.http_metrics import request_metrics
from services.scoring.loop import ScoringLoop
from services.scoring.pages import add_read_model_pages, error_page
from services.scoring.processor import is_live
from services.scoring.profiles import run_read_model
from services.scoring.recovery import ProbedRecovery, ProbedTableManager
from services.scoring.rules import ScoringModel, load_model
from services.scoring.settings import ScoringSettings
from services.scoring.store import PeopleTable
from shared.errors import NotFound, Unavailable
from shared.topics import EVENTS_RESOLVED, IDENTITY_MERGES, SCORING_COMMANDS

EXPLAIN_RETRY_AFTER_SECONDS = 2  # the owner is back once the group has rebalanced
EXPLAIN_FORWARD_TIMEOUT_SECONDS = 5.0


FED_TOPICS = (EVENTS_RESOLVED.name, IDENTITY_MERGES.name, SCORING_COMMANDS.name)
"""What the scoring loop consumes (each partitioned by OneID like the people table)."""
PEOPLE_TABLE = "people"
"""The table of every person's state (one value per OneID)."""


def url_host(host: str) -> str:
    """``host`` as a URL writes it: an IPv6 address in brackets (a pod IP on an IPv6 cluster
    made Faust fail to build its own URL, and the worker to start)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host  # a name, or already bracketed
    return f"[{host}]" if address.version == 6 else host


def people_changelog(app_id: str) -> str:
    """The compacted topic Faust keeps the people table in, for the app ``app_id``."""
    return f"{app_id}-{PEOPLE_TABLE}-changelog"


def create_app(settings: ScoringSettings, model: ScoringModel | None = None) -> faust.App:
    """Build the Faust app with its topics, table, scoring loop, timer, read-model writer and
    pages."""
    model = model or load_model(settings.scoring_model_path)
    clock = build_clock(settings.scoring_clock_file)
    app = ScoringApp(
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
        consumer_max_fetch_size=settings.scoring_max_fetch_bytes,
        # a poll never holds more than a batch: a batch blocks the event loop while it is scored
        broker_max_poll_records=settings.scoring_batch_size,
        TableManager=ProbedTableManager,
        Table=PeopleTable,
        web_enabled=True,
        web_port=settings.port,
        web_bind=settings.host,
        web_host=url_host(settings.advertised_host or settings.host),
        web_in_thread=False,
        stream_wait_empty=False,
        web_application_options={"middlewares": [request_metrics("scoring")]},
    )
    raw: dict[str, Any] = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    inputs = app.topic(*FED_TOPICS, **raw)
    app.topics.add(inputs)  # subscribed and acked; polls reach score() through app.feed
    app.fed_topics = frozenset(inputs.topics)
    app.fetch_max_wait_ms = settings.kafka_fetch_max_wait_ms
    # Changelog records are partitioned by key like every input, not by "the current event"
    # (a batch holds events of several partitions).
    people = app.Table(
        PEOPLE_TABLE,
        default=None,
        partitions=settings.topic_partitions,
        key_type=bytes,
        use_partitioner=True,
    )
    flush_interval = settings.scoring_flush_interval
    loop = ScoringLoop(
        app,
        people,
        model,
        clock,
        settings.topic_partitions,
        flush_interval,
        rebuild_slice=settings.scoring_rebuild_slice_seconds,
    )
    app.resumes_at = loop.resumes_at

    @app.task  # type: ignore[untyped-decorator]
    async def score() -> None:
        """One batch at a time (an empty one when the feed was idle for the flush interval)."""
        async for messages in app.batches(settings.scoring_batch_size, flush_interval or 1.0):
            await loop.handle(messages)

    @app.timer(interval=settings.scoring_timer_interval)  # type: ignore[untyped-decorator]
    async def due() -> None:
        await loop.tick()

    @app.task  # type: ignore[untyped-decorator]
    async def read_model() -> None:
        """Write tierflow.profiles into the Postgres read model, a poll batch per transaction."""
        await run_read_model(settings)

    add_read_model_pages(app, model, settings)

    def recovered() -> bool:
        """The current assignment's table partitions are recovered."""
        return cast(ProbedRecovery, cast(Any, app.tables).recovery).current()

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        consumer = app.consumer if app.consumer is not None else None
        checks = {
            "consumer": bool(consumer and consumer.assignment()),
            "tables_recovered": recovered(),
        }
        ready = all(checks.values())
        return web.json(
            {"status": "ready" if ready else "not_ready", "checks": checks},
            status=200 if ready else 503,
        )

    @app.page("/metrics")
    async def prometheus(web: Any, request: Any) -> Any:
        for table, size in (
            (PEOPLE_TABLE, loop.entries),
            ("deadlines", len(loop.deadlines)),
            ("deadline_heap", loop.deadlines.entries),
        ):
            metrics.TABLE_SIZE.labels(table).set(size)
        changelog = people.changelog_topic.get_topic_name()
        assignor = app.assignor
        for role, tps in (
            ("active", assignor.assigned_actives()),
            ("standby", assignor.assigned_standbys()),
        ):
            metrics.PARTITIONS.labels(role).set(sum(tp.topic == changelog for tp in tps))
        metrics.TIER_POPULATION.clear()  # a tier no longer held must not keep its old count
        for tier, count in loop.population.items():
            metrics.TIER_POPULATION.labels(tier).set(count)
        return web.bytes(generate_latest(), content_type="text/plain; version=0.0.4")

    @app.page("/v1/scores/{oneid}/explain")
    async def explain(web: Any, request: Any, oneid: str) -> Any:
        """From the table, measured now: the worker owning the person answers, another one
        forwards the request to it. While no owner is known or the owner cannot be reached (a
        rebalance; a member that died and has not left the group yet), 503 and Retry-After
        (Faust's own table route answered 500 to a refused connection). Nor does a worker
        answer while it rebalances or until the current assignment's recovery is done
        (:meth:`ProbedRecovery.current`): until then the table may not hold the person's
        latest state, or the person at all."""
        if app.rebalancing or not recovered():
            taking_over = "this worker is taking over partitions (rebalance or recovery); retry"
            return error_page(
                web, Unavailable(taking_over, retry_after=EXPLAIN_RETRY_AFTER_SECONDS)
            )
        answer = await _forwarded(app, people.name, oneid, web, request)
        if answer is not None:
            return answer
        state = loop.state_of(oneid.encode())
        if state is None or not is_live(state):
            return error_page(web, NotFound(f"no scores for {oneid}"))
        return web.json(service.explain(oneid, state, model, clock()))

    del score, due, read_model, healthz, readyz, prometheus, explain
    return app


async def _forwarded(app: faust.App, table: str, oneid: str, web: Any, request: Any) -> Any:
    """The owner's answer to ``request`` when another worker owns ``oneid`` (None when this
    one does), or 503 with Retry-After while the owner is unknown or cannot be reached."""
    try:
        # Faust's client waits 300 s: an owner that accepts and never answers (stopped, or busy
        # with a long batch) would hold the request that long
        async with asyncio.timeout(EXPLAIN_FORWARD_TIMEOUT_SECONDS):
            forwarded = await app.router.route_req(table, oneid, web, request)
    except SameNode:
        return None
    except (ServiceUnavailable, aiohttp.ClientError, TimeoutError):
        unreachable = f"the worker holding {oneid} cannot be reached now; retry"
        return error_page(web, Unavailable(unreachable, retry_after=EXPLAIN_RETRY_AFTER_SECONDS))
    if forwarded.status == Unavailable.status_code:  # Faust relays no header
        forwarded.headers["Retry-After"] = str(EXPLAIN_RETRY_AFTER_SECONDS)
    return forwarded
