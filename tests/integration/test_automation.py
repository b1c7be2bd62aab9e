"""The automation service in-process (its real app and lifespan) against the real broker, a
real Postgres and a real HTTP receiver, with a clock the tests move forward."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson
import pytest
import yaml
from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.automation import repository
from services.automation.app import create_app
from services.automation.clock import ManualClock
from services.automation.delivery import build_endpoints
from services.automation.playbooks import CHANNELS, DEFAULT_PLAYBOOKS_PATH
from services.automation.service import AutomationService, DeliveryPolicy, IncomingChange
from services.automation.settings import AutomationSettings
from services.automation.worker import run_loop
from shared.contracts import (
    IdentityErasure,
    IdentityMerge,
    TierChangeEvent,
    encode,
)
from shared.db import build_engine, build_sessionmaker, unit_of_work
from shared.settings import CommonSettings
from shared.topics import ACTIONS, DEADLETTER, IDENTITY_MERGES, PROFILES, TIERS_CHANGES
from shared.webhooks import verify
from tests.factories import free_port, make_tier_change
from tests.support.services import collect

SECRET = "whsec_" + base64.b64encode(b"automation-tests-secret!").decode()
ADMIN = "automation-admin"
START = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)  # 10:00 UTC: outside quiet hours in UTC
HANG_S = 6.0
TRICKLE = -1
"""A behaviour's status: answer 200, then one byte of a 16-byte body every 0.5 s."""
Behaviour = Callable[[int], tuple[int, dict[str, str]]]


def by_hand(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks verification written out from the spec, independent of shared code."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        sig.split(",", 1)[1] == expected
        for sig in headers["webhook-signature"].split()
        if sig.startswith("v1,")
    )


@dataclass
class Delivery:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def payload(self) -> dict[str, Any]:
        """The parsed body."""
        value: dict[str, Any] = orjson.loads(self.body)
        return value


class Receiver:
    """A real HTTP server; each path answers 200 unless a behaviour says otherwise."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.behaviours: dict[str, Behaviour] = {}
        self.hanging = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.deliveries.append(Delivery(self.path, headers, body, time.monotonic()))
                count = sum(1 for d in receiver.deliveries if d.path == self.path)
                behaviour = receiver.behaviours.get(self.path)
                status, extra = behaviour(count) if behaviour else (200, {})
                if status == 0:  # hang past the client's timeout
                    receiver.hanging += 1
                    time.sleep(HANG_S)
                    receiver.hanging -= 1
                    status = 503
                if status == TRICKLE:  # each read well within the timeout, the whole not
                    self.send_response(200)
                    self.send_header("content-length", "16")
                    self.end_headers()
                    for _ in range(16):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(0.5)
                    return
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of(self, oneid: str) -> list[Delivery]:
        """Deliveries for one person, in arrival order."""
        return [d for d in self.deliveries if d.payload.get("oneid") == oneid]


def merge_of(absorbed: str, winner: str) -> IdentityMerge:
    """Identity's notice that ``absorbed`` joined ``winner``."""
    return IdentityMerge(
        merge_id=f"m-{absorbed}",
        winner=winner,
        absorbed=absorbed,
        cause_event_id="e",
        rule="email",
        merged_at=datetime.now(UTC),
    )


@dataclass
class Worker:
    """The running app, its clock and its receiver."""

    service: AutomationService
    api: httpx.AsyncClient
    clock: ManualClock
    receiver: Receiver
    producer: AIOKafkaProducer
    bootstrap: str

    async def advance(self, by: timedelta) -> None:
        """Move time on once nothing is in flight (a lease must not expire under a request)."""
        await wait_for(lambda: self.service.idle, "in-flight deliveries")
        self.clock.advance(by)
        self.service.wake.set()

    async def advance_to_hour(self, hour: int) -> None:
        """Move time on to the next ``hour``:00 UTC."""
        now = self.clock.now()
        target = now.replace(hour=hour, minute=0, second=0, microsecond=0)
        await self.advance((target - now) % timedelta(days=1))

    async def merge(self, winner: str, absorbed: str) -> None:
        """Publish identity's notice that ``absorbed`` joined ``winner``."""
        await self.producer.send_and_wait(
            IDENTITY_MERGES.name, encode(merge_of(absorbed, winner)), key=absorbed.encode()
        )

    async def publish(self, *events: TierChangeEvent, extra: dict[str, Any] | None = None) -> None:
        """Publish tier changes, optionally with data fields outside the contract."""
        for event in events:
            raw = orjson.loads(encode(event))
            raw["data"].update(extra or {})
            await self.producer.send_and_wait(
                TIERS_CHANGES.name, orjson.dumps(raw), key=event.data.oneid.encode()
            )


EXTRA_PLAYBOOKS: list[dict[str, Any]] = [
    {
        "name": "flaky_hook",
        "trigger": {"entered": "flaky"},
        "steps": [{"send": "notify", "channel": "webhook", "content": {"x": 1}}],
    },
    {
        "name": "slow_sms",
        "trigger": {"entered": "slow"},
        "steps": [{"send": "ping", "channel": "sms"}],
    },
    {
        "name": "held",
        "trigger": {"entered": "control"},
        "steps": [{"send": "offer", "channel": "email"}],
    },
]


@pytest.fixture(scope="module")
async def worker(
    settings: CommonSettings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Worker]:
    """The automation app with a manual clock, its own consumer groups and a receiver."""
    receiver = Receiver()
    defaults = yaml.safe_load(DEFAULT_PLAYBOOKS_PATH.read_text())
    defaults["guards"]["holdout"]["shares"] = {"control": 1.0}
    defaults["playbooks"] += EXTRA_PLAYBOOKS
    path = tmp_path_factory.mktemp("playbooks") / "playbooks.yaml"
    path.write_text(yaml.safe_dump(defaults))
    group = f"automation-test-{uuid.uuid4().hex[:8]}"
    app_settings = AutomationSettings(
        kafka_bootstrap=settings.kafka_bootstrap,
        database_url=settings.database_url,
        kafka_session_timeout_ms=6000,
        kafka_rebalance_timeout_ms=3000,
        playbooks_path=path,
        webhook_base_url=f"{receiver.url}/hooks",
        webhook_timeout_s=3.0,
        webhook_attempts=4,
        webhook_backoff_base_s=60,
        webhook_backoff_cap_s=3600,
        endpoint_concurrency=4,
        delivery_lease_s=30,
        admin_token=ADMIN,
        **{
            "TIERFLOW_WEBHOOK_SECRET": SECRET,
            "TIERFLOW_AUTOMATION_GROUP": group,
        },
    )
    clock = ManualClock(START)
    app = create_app(app_settings, clock)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport,
                base_url="http://automation",
                headers={"authorization": f"Bearer {ADMIN}"},
            ) as api:
                yield Worker(
                    app.state.service, api, clock, receiver, producer, settings.kafka_bootstrap
                )
    finally:
        await producer.stop()
        receiver.server.shutdown()


async def wait_for(check: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Poll until ``check()`` is truthy (generous: the machine is shared)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30) -> None:
    """Like :func:`wait_for`, for checks that ask the API or the database."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def person() -> str:
    return str(uuid.uuid4())


def steps(deliveries: list[Delivery]) -> list[str]:
    return [d.payload["step"] for d in deliveries]


async def test_each_default_playbook_fires_its_sequence_with_delays(worker: Worker) -> None:
    people = {tier: person() for tier in ("vip", "growth", "prospect", "at_risk")}
    await worker.publish(*(make_tier_change(oneid, tier) for tier, oneid in people.items()))
    got = worker.receiver.of
    await wait_for(lambda: all(got(p) for p in people.values()), "first steps")
    await wait_for(lambda: len(got(people["vip"])) == 2, "both vip first steps")
    assert sorted(steps(got(people["vip"]))) == ["assign_success_manager", "exclusive_offer"]
    assert steps(got(people["growth"])) == ["industry_solutions"]
    assert steps(got(people["prospect"])) == ["light_education"]
    assert steps(got(people["at_risk"])) == ["winback_offer"]

    expected_after = {
        3: {
            "vip": "early_access",
            "growth": "webinar_invitation",
            "at_risk": "satisfaction_survey",
        },
        5: {"prospect": "case_studies"},
        7: {"growth": "product_trial", "at_risk": "winback_call"},
        10: {"prospect": "free_resources"},
    }
    elapsed = 0
    for day, fired in expected_after.items():
        before = {tier: len(got(p)) for tier, p in people.items()}
        await worker.advance(timedelta(days=day - elapsed))
        elapsed = day
        await wait_for(
            lambda fired=fired, before=before: all(  # type: ignore[misc]
                len(got(people[t])) == before[t] + 1 for t in fired
            ),
            f"day {day} steps",
        )
        for tier, step in fired.items():
            assert steps(got(people[tier]))[-1] == step
    assert steps(got(people["at_risk"])) == [
        "winback_offer",
        "satisfaction_survey",
        "winback_call",
    ]
    for delivery in (d for p in people.values() for d in got(p)):
        assert delivery.path == f"/hooks/{delivery.payload['channel']}"
        assert verify(SECRET, delivery.headers, delivery.body)
        assert by_hand(SECRET, delivery.headers, delivery.body)
        assert delivery.headers["webhook-id"] == delivery.payload["action_id"]


async def test_unreadable_tier_changes_are_dead_lettered_and_block_nothing(worker: Worker) -> None:
    good, long_id = person(), "x" * 65
    too_long = orjson.loads(encode(make_tier_change(good, "vip")))
    too_long["data"]["oneid"] = too_long["subject"] = long_id
    for key, value in (
        (b"poison-json", b"{not json"),
        (long_id.encode(), orjson.dumps(too_long)),
    ):
        await worker.producer.send_and_wait(TIERS_CHANGES.name, value, key=key)
    await worker.publish(make_tier_change(good, "prospect"))
    await wait_for(lambda: worker.receiver.of(good), "the good change's first step")
    letters = await collect(
        worker.bootstrap,
        DEADLETTER.name,
        lambda r: r.get("key") in {"poison-json", long_id},
        count=2,
        timeout=20,
    )
    reasons = {r["key"]: (r["stage"], r["error_type"], r["field"]) for r in letters}
    assert reasons["poison-json"][:2] == ("automation", "validation")
    assert reasons[long_id] == ("automation", "validation", "subject")
    assert all(r["origin"]["topic"] == TIERS_CHANGES.name for r in letters)


async def test_a_change_postgres_refuses_is_dead_lettered_alone(worker: Worker) -> None:
    """A NUL character passes the contract but no Postgres text column takes it: the batch
    fails the same way three times, then the change is dead-lettered on its own."""
    before, after = person(), person()
    refused = orjson.loads(encode(make_tier_change(person(), "vip")))
    refused["data"]["oneid"] = refused["subject"] = nul_id = "nul\u0000" + person()[:20]
    await worker.publish(make_tier_change(before, "growth"))
    await worker.producer.send_and_wait(
        TIERS_CHANGES.name, orjson.dumps(refused), key=nul_id.encode()
    )
    await worker.publish(make_tier_change(after, "growth"))
    await wait_for(lambda: worker.receiver.of(before) and worker.receiver.of(after), "both")
    letters = await collect(
        worker.bootstrap, DEADLETTER.name, lambda r: r.get("key") == nul_id, count=1, timeout=20
    )
    assert len(letters) == 1
    assert letters[0]["stage"] == "automation"
    assert "0x00" in letters[0]["reason"]


async def test_a_stage_change_within_a_tier_fires_the_stage_playbook_only(worker: Worker) -> None:
    vip, growth = person(), person()
    await worker.publish(
        make_tier_change(vip, "vip", "vip", stage="declining", from_stage="mature"),
        make_tier_change(growth, "growth", "growth", stage="declining", from_stage="growing"),
    )
    got = worker.receiver.of
    await wait_for(lambda: got(vip) and got(growth), "check-ins")
    await worker.advance(timedelta(days=10))
    await asyncio.sleep(0.7)
    assert steps(got(vip)) == ["success_manager_checkin"]
    assert steps(got(growth)) == ["whats_new"]
    assert got(vip)[0].path == "/hooks/crm_task"
    assert got(growth)[0].path == "/hooks/email"


async def test_signatures_verify_and_a_tampered_or_stale_one_does_not(worker: Worker) -> None:
    oneid = person()
    await worker.publish(make_tier_change(oneid, "growth"))
    await wait_for(lambda: worker.receiver.of(oneid), "a delivery")
    delivery = worker.receiver.of(oneid)[0]
    assert by_hand(SECRET, delivery.headers, delivery.body)
    assert verify(SECRET, delivery.headers, delivery.body)
    tampered = delivery.body.replace(b"industry_solutions", b"industry_solution5")
    assert not verify(SECRET, delivery.headers, tampered)
    assert not by_hand(SECRET, delivery.headers, tampered)
    forged = {**delivery.headers, "webhook-id": "someone-else"}
    assert not verify(SECRET, forged, delivery.body)
    stale = int(delivery.headers["webhook-timestamp"]) + 301
    assert not verify(SECRET, delivery.headers, delivery.body, now=stale)
    other = "whsec_" + base64.b64encode(b"not-the-automation-key!!").decode()
    assert not verify(other, delivery.headers, delivery.body)


async def test_redelivered_changes_deliver_each_action_once(worker: Worker) -> None:
    oneid = person()
    change = make_tier_change(oneid, "vip")
    await worker.publish(change, change, change)
    await wait_for(lambda: len(worker.receiver.of(oneid)) >= 2, "vip first steps")
    await worker.publish(change)
    await asyncio.sleep(1.5)
    ids = [d.headers["webhook-id"] for d in worker.receiver.of(oneid)]
    assert len(ids) == len(set(ids)) == 2


async def test_several_workers_claim_without_double_firing(
    worker: Worker, settings: CommonSettings
) -> None:
    """A second worker's dispatcher races the first over the same table."""
    engine = build_engine(settings, application_name="automation-second-worker")
    endpoints = build_endpoints(
        f"{worker.receiver.url}/hooks",
        {},
        CHANNELS,
        timeout_s=3,
        concurrency=4,
        breaker_threshold=20,
        breaker_cooldown_s=30,
    )
    second = AutomationService(
        build_sessionmaker(engine),
        worker.service.playbooks,
        endpoints,
        DeliveryPolicy(secrets=[SECRET], lease_s=30),
        worker.clock,
    )
    stopping = asyncio.Event()
    claimed: list[int] = []

    async def dispatch() -> int:
        claimed.append(await second.dispatch_once())
        return claimed[-1]

    racing = asyncio.create_task(
        run_loop("second", dispatch, second.wake, idle_s=0.05, stopping=stopping)
    )
    try:
        people = [person() for _ in range(60)]
        await worker.publish(*(make_tier_change(p, "vip") for p in people))
        got = worker.receiver.of
        await wait_for(lambda: all(len(got(p)) >= 2 for p in people), "vip first steps")
        await wait_for(lambda: second.idle, "the second worker's deliveries")
        await worker.advance_to_hour(10)
        await worker.advance(timedelta(days=3))
        second.wake.set()
        await wait_for(lambda: all(len(got(p)) >= 3 for p in people), "vip early access")
        await asyncio.sleep(1.0)
    finally:
        stopping.set()
        await racing
        await second.drain()
        for endpoint in endpoints.values():
            await endpoint.aclose()
        await engine.dispose()
    ids = [d.headers["webhook-id"] for p in people for d in got(p)]
    assert len(ids) == len(set(ids)) == 3 * len(people)
    assert sum(claimed) > 0, "the second worker never got any work"


async def test_failing_endpoint_is_retried_on_schedule_then_dead_lettered(
    worker: Worker, engine: AsyncEngine
) -> None:
    worker.receiver.behaviours["/hooks/webhook"] = lambda _: (503, {})
    oneid = person()
    await worker.publish(make_tier_change(oneid, "flaky"))
    got = worker.receiver.of
    await wait_for(lambda: len(got(oneid)) == 1, "first attempt")
    # backoff with equal jitter: attempt n+1 comes between 60*2^(n-1)/2 and 60*2^(n-1) seconds
    for attempt, ceiling_s in ((2, 60), (3, 120), (4, 240)):
        await worker.advance(timedelta(seconds=ceiling_s / 2 - 1))
        await asyncio.sleep(0.7)
        assert len(got(oneid)) == attempt - 1, "retried before its schedule"
        await worker.advance(timedelta(seconds=ceiling_s / 2 + 1))
        await wait_for(lambda attempt=attempt: len(got(oneid)) == attempt, f"attempt {attempt}")
    ids = {d.headers["webhook-id"] for d in got(oneid)}
    bodies = {d.body for d in got(oneid)}
    assert len(ids) == 1
    assert len(bodies) == 1
    action_id = ids.pop()

    async def status() -> str:
        async with engine.connect() as connection:
            row = await connection.execute(
                text("SELECT status FROM automation.actions WHERE action_id = :a"),
                {"a": action_id},
            )
            return str(row.scalar_one())

    async def dead() -> bool:
        return await status() == "dead_lettered"

    await eventually(dead, "dead-lettering")
    await worker.advance(timedelta(hours=2))
    await asyncio.sleep(0.7)
    assert len(got(oneid)) == 4, "a dead letter is not retried on its own"

    dead = await worker.api.get("/v1/deadletters")
    assert action_id in [a["action_id"] for a in dead.json()]
    worker.receiver.behaviours.pop("/hooks/webhook")
    retried = await worker.api.post(f"/v1/deadletters/{action_id}/retry")
    assert retried.status_code == 200
    await wait_for(lambda: len(got(oneid)) == 5, "operator retry")
    assert got(oneid)[-1].body == got(oneid)[0].body
    assert (await worker.api.post(f"/v1/deadletters/{action_id}/retry")).status_code == 404

    history = (await worker.api.get(f"/v1/persons/{oneid}/actions")).json()["history"]
    outcomes = [h["outcome"] for h in history]
    assert outcomes == ["requested", "failed", "failed", "failed", "dead_lettered", "sent"]
    records = await collect(
        worker.bootstrap, ACTIONS.name, lambda r: r.get("oneid") == oneid, count=6, timeout=20
    )
    assert [r["outcome"] for r in records] == outcomes
    # beside every other stage's failures, with the action the operator's retry takes
    (letter,) = await collect(
        worker.bootstrap, DEADLETTER.name, lambda r: r.get("key") == oneid, count=1, timeout=20
    )
    assert letter["stage"] == "automation"
    assert letter["error_type"] == "delivery"
    assert "503" in letter["reason"]
    assert orjson.loads(letter["payload"])["action_id"] == action_id


async def test_retry_after_is_honoured_and_other_4xx_are_not_retried(worker: Worker) -> None:
    answered: list[int] = []

    def limited_once(n: int) -> tuple[int, dict[str, str]]:
        answered.append(n)
        return (429, {"retry-after": "7"}) if len(answered) == 1 else (200, {})

    worker.receiver.behaviours["/hooks/webhook"] = limited_once
    limited = person()
    await worker.publish(make_tier_change(limited, "flaky"))
    got = worker.receiver.of
    await wait_for(lambda: len(got(limited)) == 1, "first attempt")
    await worker.advance(timedelta(seconds=5))
    await asyncio.sleep(0.7)
    assert len(got(limited)) == 1
    await worker.advance(timedelta(seconds=3))
    await wait_for(lambda: len(got(limited)) == 2, "retry after 7s")

    worker.receiver.behaviours["/hooks/webhook"] = lambda _: (410, {})
    gone = person()
    await worker.publish(make_tier_change(gone, "flaky"))
    await wait_for(lambda: len(got(gone)) == 1, "the one attempt")
    await worker.advance(timedelta(hours=3))
    await asyncio.sleep(0.7)
    assert len(got(gone)) == 1
    history = (await worker.api.get(f"/v1/persons/{gone}/actions")).json()["history"]
    assert [h["outcome"] for h in history] == ["requested", "dead_lettered"]
    worker.receiver.behaviours.pop("/hooks/webhook")


async def test_a_receiver_trickling_its_answer_is_cut_off_at_the_timeout(worker: Worker) -> None:
    """httpx's timeout bounds each read: an answer trickled a byte at a time took 8 s against
    a 3 s timeout, long enough to outlive a lease and be sent to again meanwhile."""
    worker.receiver.behaviours["/hooks/webhook"] = lambda _: (TRICKLE, {})
    slow = person()
    started = time.monotonic()
    await worker.publish(make_tier_change(slow, "flaky"))

    async def failed() -> bool:
        history = (await worker.api.get(f"/v1/persons/{slow}/actions")).json()["history"]
        return any(h["outcome"] == "failed" for h in history)

    await eventually(failed, "the cut-off attempt")
    took = time.monotonic() - started
    actions = (await worker.api.get(f"/v1/persons/{slow}/actions")).json()["actions"]
    assert "no complete answer within 3 s" in actions[0]["last_error"]
    assert took < 7.5, took  # the trickle lasts 8 s
    worker.receiver.behaviours.pop("/hooks/webhook")


async def test_guards_postpone_cap_suppress_and_hold_out(worker: Worker) -> None:
    got = worker.receiver.of
    # quiet hours: VIP early access is an SMS, due 3 days later at 10:00 UTC = 18:00 Shanghai,
    # allowed; for a person in Honolulu (UTC-10) it is 00:00, so it waits until 08:00 local.
    await worker.advance_to_hour(10)
    shanghai, honolulu = person(), person()
    await worker.publish(make_tier_change(shanghai, "vip"), extra={"timezone": "Asia/Shanghai"})
    await worker.publish(make_tier_change(honolulu, "vip"), extra={"timezone": "Pacific/Honolulu"})
    await wait_for(lambda: len(got(shanghai)) == 2 and len(got(honolulu)) == 2, "vip day 0")
    await worker.advance(timedelta(days=3))
    await wait_for(lambda: len(got(shanghai)) == 3, "sms in Shanghai")
    await asyncio.sleep(0.7)
    assert len(got(honolulu)) == 2
    await worker.advance(timedelta(hours=8))
    await wait_for(lambda: len(got(honolulu)) == 3, "sms in Honolulu after quiet hours")
    history = (await worker.api.get(f"/v1/persons/{honolulu}/actions")).json()["history"]
    assert "postponed" in [h["outcome"] for h in history]

    # consent: email refused, the CRM task still goes
    refusing = person()
    await worker.publish(make_tier_change(refusing, "vip"), extra={"consent": {"email": False}})
    await wait_for(lambda: got(refusing), "the crm task")
    await asyncio.sleep(0.7)
    assert steps(got(refusing)) == ["assign_success_manager"]

    # an unsubscribe given mid-sequence (a later change's contact, scoring's form) stops the
    # rest of a sequence planned before it: the stored copy alone let it go on for a week
    changing = person()
    await worker.publish(make_tier_change(changing, "growth"), extra={"contact": {"optouts": []}})
    await wait_for(lambda: got(changing), "the first nurture email")
    stage = make_tier_change(changing, "growth", "growth", stage="mature", from_stage="growing")
    await worker.publish(stage, extra={"contact": {"optouts": ["email"]}})
    await asyncio.sleep(1.0)
    await worker.advance(timedelta(days=8))
    await asyncio.sleep(1.0)
    assert steps(got(changing)) == ["industry_solutions"]
    history = (await worker.api.get(f"/v1/persons/{changing}/actions")).json()["history"]
    refused = sorted(h["record"]["step"] for h in history if h["outcome"] == "suppressed")
    assert refused == ["product_trial", "webinar_invitation"]

    # frequency cap: 3 emails a day across playbooks, the 4th is capped
    busy = person()
    for to_tier, from_tier in (("prospect", None), ("growth", "prospect"), ("vip", "growth")):
        await worker.publish(make_tier_change(busy, to_tier, from_tier))
        await wait_for(
            lambda to_tier=to_tier: any(d.payload["tier"] == to_tier for d in got(busy)), to_tier
        )  # type: ignore[misc]
    await worker.publish(make_tier_change(busy, "prospect", "vip"))
    await asyncio.sleep(1.5)
    emails = [d for d in got(busy) if d.payload["channel"] == "email"]
    assert len(emails) == 3
    history = (await worker.api.get(f"/v1/persons/{busy}/actions")).json()["history"]
    assert [h["record"]["step"] for h in history if h["outcome"] == "capped"] == ["light_education"]

    # holdout: the "control" tier is fully held out, recorded, never sent
    control = person()
    await worker.publish(make_tier_change(control, "control"))
    await asyncio.sleep(1.5)
    assert got(control) == []
    history = (await worker.api.get(f"/v1/persons/{control}/actions")).json()["history"]
    assert [h["outcome"] for h in history] == ["held_out"]


async def test_leaving_the_tier_drops_the_remaining_steps(worker: Worker) -> None:
    oneid = person()
    await worker.publish(make_tier_change(oneid, "growth"))
    await wait_for(lambda: len(worker.receiver.of(oneid)) == 1, "industry solutions")
    await worker.publish(make_tier_change(oneid, "vip", "growth"))
    await wait_for(lambda: len(worker.receiver.of(oneid)) == 3, "vip first steps")
    await worker.advance(timedelta(days=8))
    await wait_for(lambda: len(worker.receiver.of(oneid)) == 4, "vip early access")
    await asyncio.sleep(0.7)
    assert "webinar_invitation" not in steps(worker.receiver.of(oneid))
    history = (await worker.api.get(f"/v1/persons/{oneid}/actions")).json()["history"]
    exited = sorted(h["record"]["step"] for h in history if h["outcome"] == "exited")
    assert exited == ["product_trial", "webinar_invitation"]


async def test_a_move_back_at_the_same_time_as_the_drop_exits_its_win_back(
    worker: Worker,
) -> None:
    """An event dated before the inactivity drop, scored after it, moves the person back at the
    drop's time: only the change sequence orders the two. Compared by time alone, the survey
    and the call of the win-back still went to a customer who had come back."""
    oneid = person()
    at = datetime.now(UTC)
    await worker.publish(make_tier_change(oneid, "at_risk", "growth", at=at, sequence=3))
    await wait_for(lambda: len(worker.receiver.of(oneid)) == 1, "the win-back offer")
    await worker.publish(make_tier_change(oneid, "growth", "at_risk", at=at, sequence=4))
    history: list[dict[str, Any]] = []

    async def exited() -> bool:
        nonlocal history
        history = (await worker.api.get(f"/v1/persons/{oneid}/actions")).json()["history"]
        return any(h["outcome"] == "exited" for h in history)

    await eventually(exited, "the win-back's later steps exited")
    winback = sorted(
        h["record"]["step"]
        for h in history
        if h["outcome"] == "exited" and h["record"]["playbook"] == "winback"
    )
    assert winback == ["satisfaction_survey", "winback_call"], history
    # a redelivered older change at that time exits nothing of the newer one
    await worker.publish(make_tier_change(oneid, "at_risk", "growth", at=at, sequence=3))
    await asyncio.sleep(1.0)
    pending = (await worker.api.get(f"/v1/persons/{oneid}/actions")).json()["actions"]
    nurture = [a for a in pending if a["playbook"] == "growth_nurture"]
    assert nurture
    assert all(a["status"] != "exited" for a in nurture)


async def test_erasure_and_merge_notices(worker: Worker) -> None:
    got = worker.receiver.of
    erased, absorbed, winner = person(), person(), person()
    await worker.publish(make_tier_change(erased, "growth"), make_tier_change(absorbed, "prospect"))
    await worker.publish(make_tier_change(winner, "prospect"))
    await wait_for(lambda: got(erased) and got(absorbed) and got(winner), "first steps")
    now = datetime.now(UTC)
    notices = [
        IdentityErasure(erasure_id="er-1", oneid=erased, oneids=(erased,), requested_at=now),
        IdentityMerge(
            merge_id="m-1",
            winner=winner,
            absorbed=absorbed,
            cause_event_id="e",
            rule="email",
            merged_at=now,
        ),
    ]
    for notice in notices:
        key = erased if isinstance(notice, IdentityErasure) else absorbed
        await worker.producer.send_and_wait(IDENTITY_MERGES.name, encode(notice), key=key.encode())

    async def erased_and_merged() -> bool:
        mine = await worker.api.get(f"/v1/persons/{erased}/actions")
        theirs = await worker.api.get(f"/v1/persons/{absorbed}/actions")
        return not mine.json()["actions"] and not theirs.json()["actions"]

    await eventually(erased_and_merged, "notices applied")
    await worker.publish(make_tier_change(erased, "vip", "growth"))
    await worker.advance(timedelta(days=11))
    await wait_for(lambda: len(got(winner)) == 3, "the winner's own prospect steps")
    await asyncio.sleep(1.0)
    assert len(got(erased)) == 1, "nothing is sent to an erased person"
    assert len(got(absorbed)) == 1, "the absorbed person's steps were duplicates"
    history = (await worker.api.get(f"/v1/persons/{winner}/actions")).json()
    exited = [h["record"]["step"] for h in history["history"] if h["outcome"] == "exited"]
    assert sorted(exited) == ["case_studies", "free_resources"]


async def test_an_unsubscribe_on_the_profile_topic_reaches_the_steps_not_yet_sent(
    worker: Worker, engine: AsyncEngine
) -> None:
    """A consent change that moves neither tier nor stage reaches automation only on scoring's
    profile: the rest of the nurture sequence must not go out."""
    got = worker.receiver.of
    oneid = person()
    await worker.publish(make_tier_change(oneid, "growth"))
    await wait_for(lambda: got(oneid), "the first nurture email")
    profile = {
        "schema_version": 1,
        "oneid": oneid,
        "tier": "growth",
        "lifecycle_stage": "growing",
        "scores": {"value": 0, "engagement": 50, "fit": 0, "total": 50},
        "events_counted": 3,
        "model_version": "test",
        "updated_at": datetime.now(UTC).isoformat(),
        "contact": {"optouts": ["email"], "timezone": None},
    }
    await worker.producer.send_and_wait(PROFILES.name, orjson.dumps(profile), key=oneid.encode())

    async def refused() -> bool:
        async with engine.connect() as connection:
            rows = await connection.execute(
                text("SELECT person FROM automation.actions WHERE oneid = :o AND sent_at IS NULL"),
                {"o": oneid},
            )
            return all("email" in row[0]["optouts"] for row in rows)

    await eventually(refused, "the refusal on the pending steps", timeout=60)
    await worker.advance(timedelta(days=8))
    await asyncio.sleep(1.0)
    assert steps(got(oneid)) == ["industry_solutions"]

    # a profile read before the change that plans the steps still guards them
    early = person()
    await worker.producer.send_and_wait(
        PROFILES.name, orjson.dumps({**profile, "oneid": early}), key=early.encode()
    )

    async def stored() -> bool:
        async with engine.connect() as connection:
            found = await connection.scalar(
                text("SELECT count(*) FROM automation.contacts WHERE oneid = :o"), {"o": early}
            )
            return bool(found)

    await eventually(stored, "the early profile's contact", timeout=60)
    await worker.publish(make_tier_change(early, "growth"))

    async def suppressed() -> bool:
        history = (await worker.api.get(f"/v1/persons/{early}/actions")).json()["history"]
        return any(h["outcome"] == "suppressed" for h in history)

    await eventually(suppressed, "the first email suppressed")
    assert got(early) == []


async def test_a_merge_drops_the_absorbed_steps_held_in_a_tier_the_winner_is_not_in(
    worker: Worker,
) -> None:
    """The absorbed id went at_risk (its win-back pending), the winner is an active growth
    customer: moved to the winner as they were, the survey and the call went to them."""
    got = worker.receiver.of
    absorbed, winner = person(), person()
    await worker.publish(make_tier_change(winner, "growth"))
    await worker.publish(make_tier_change(absorbed, "at_risk", "growth"))
    await wait_for(lambda: got(winner) and got(absorbed), "first steps")
    await worker.merge(winner, absorbed)
    history: list[dict[str, Any]] = []

    async def merged() -> bool:
        nonlocal history
        history = (await worker.api.get(f"/v1/persons/{winner}/actions")).json()["history"]
        return any(h["record"]["playbook"] == "winback" for h in history)

    await eventually(merged, "the merge applied")
    left = sorted(
        h["record"]["step"]
        for h in history
        if h["outcome"] == "exited" and "who is in growth" in (h["record"].get("detail") or "")
    )
    assert left == ["satisfaction_survey", "winback_call"], history


async def test_a_step_the_winner_was_sent_in_an_earlier_run_is_no_duplicate(
    worker: Worker,
) -> None:
    """The winner finished the nurture sequence a week ago; the absorbed id has just started
    it. Compared with every step the winner was ever sent, its remaining steps were dropped as
    duplicates of that earlier run."""
    got = worker.receiver.of
    absorbed, winner = person(), person()
    await worker.publish(make_tier_change(winner, "growth", at=worker.clock.now()))
    await wait_for(lambda: len(got(winner)) == 1, "the winner's first email")
    await worker.advance(timedelta(days=8))
    await wait_for(lambda: len(got(winner)) == 3, "the winner's whole sequence")
    await worker.advance(timedelta(minutes=1))  # planned after the winner's last send
    await worker.publish(make_tier_change(absorbed, "growth"))
    await wait_for(lambda: len(got(absorbed)) == 1, "the absorbed id's first email")
    await worker.merge(winner, absorbed)

    async def merged() -> bool:
        theirs = await worker.api.get(f"/v1/persons/{absorbed}/actions")
        return not theirs.json()["actions"]

    await eventually(merged, "the merge applied")
    await worker.advance(timedelta(days=8))
    await wait_for(lambda: len(got(winner)) == 5, "the absorbed run's steps, for the winner")
    assert sorted(steps(got(winner))[3:]) == ["product_trial", "webinar_invitation"]


async def test_a_dead_endpoint_does_not_slow_the_others(worker: Worker) -> None:
    """SMS hangs past its timeout; e-mails meanwhile are delivered while those requests still
    hang (how fast, compared with before, is a figure for a benchmark, not a test)."""
    got = worker.receiver.of

    async def emails(n: int) -> None:
        people = [person() for _ in range(n)]
        await worker.publish(*(make_tier_change(p, "growth") for p in people))
        await wait_for(lambda: all(got(p) for p in people), "emails")

    worker.receiver.behaviours["/hooks/sms"] = lambda _: (0, {})
    slow = [person() for _ in range(12)]
    await worker.publish(*(make_tier_change(p, "slow") for p in slow))
    await wait_for(lambda: worker.receiver.hanging >= 4, "sms requests hanging")
    hung_at = time.monotonic()
    await emails(20)
    assert worker.receiver.hanging <= 4, "the dead endpoint got more than its concurrency"
    assert time.monotonic() - hung_at < HANG_S - 1, "emails waited for the dead endpoint"
    worker.receiver.behaviours["/hooks/sms"] = lambda _: (410, {})
    await wait_for(lambda: worker.receiver.hanging == 0, "hanging requests", timeout=HANG_S * 3)


async def test_metrics_show_outcomes_retries_and_endpoint_health(worker: Worker) -> None:
    await worker.service.refresh_gauges()
    text_ = (await worker.api.get("/metrics")).text
    assert 'tierflow_automation_actions_total{outcome="sent",playbook="vip_welcome"' in text_
    assert 'tierflow_automation_retries_total{endpoint="webhook"}' in text_
    assert 'tierflow_automation_endpoint_failures_total{endpoint="webhook",kind="5xx"}' in text_
    assert 'tierflow_automation_endpoint_up{endpoint="email"} 1.0' in text_
    assert "tierflow_automation_delivery_lag_seconds_bucket" in text_
    dead = [
        line
        for line in text_.splitlines()
        if line.startswith("tierflow_automation_deadletter_size")
    ]
    assert float(dead[0].split()[-1]) >= 1


async def test_playbook_list_and_admin_token(worker: Worker) -> None:
    listed = (await worker.api.get("/v1/playbooks")).json()
    by_name = {p["name"]: p for p in listed}
    assert {"vip_welcome", "growth_nurture", "prospect_education", "winback"} <= set(by_name)
    assert by_name["growth_nurture"]["trigger"] == {"entered": "growth"}
    assert [s.get("send") or s.get("wait") for s in by_name["growth_nurture"]["steps"]] == [
        "industry_solutions",
        "P3D",
        "webinar_invitation",
        "P4D",
        "product_trial",
    ]
    anonymous = await worker.api.get("/v1/playbooks", headers={"authorization": "Bearer nope"})
    assert anonymous.status_code == 401
    assert anonymous.json()["error"] == "unauthorized"


async def pending_of(engine: AsyncEngine, oneid: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(step, payload oneid, stored person) of a person's steps not yet sent."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT step, payload->>'oneid', person FROM automation.actions"
                " WHERE oneid = :o AND status = 'scheduled' AND sent_at IS NULL ORDER BY step"
            ),
            {"o": oneid},
        )
        return [(step, payload_oneid, person) for step, payload_oneid, person in rows]


async def test_a_time_zone_that_is_not_iana_blocks_no_delivery(
    worker: Worker, engine: AsyncEngine
) -> None:
    """A profile's ``timezone`` trait is any string ("GMT+8"): stored as it was, it failed the
    quiet-hours guard of every dispatch round, and nobody's due steps went out."""
    got = worker.receiver.of
    odd, other = person(), person()
    await worker.service.refresh_contacts(
        {odd: ({"optouts": [], "timezone": "GMT+8"}, worker.clock.now())}
    )
    await worker.publish(make_tier_change(odd, "vip", at=worker.clock.now()))
    await wait_for(lambda: len(got(odd)) == 2, "the vip's first steps")
    await worker.advance(timedelta(days=3, minutes=1))  # the early-access SMS is due
    await worker.publish(make_tier_change(other, "growth", at=worker.clock.now()))
    await wait_for(lambda: got(other), "another person's first step")
    await wait_for(lambda: len(got(odd)) == 3, "the SMS, guarded in the default zone")
    assert steps(got(odd))[-1] == "early_access"
    async with engine.connect() as connection:
        zone = await connection.scalar(
            text("SELECT timezone FROM automation.contacts WHERE oneid = :o"), {"o": odd}
        )
    assert zone is None


async def test_an_erased_persons_late_profile_stores_no_contact(
    worker: Worker, engine: AsyncEngine
) -> None:
    """A profile published before the erasure and read after it (profiles have their own
    consumer group) must not bring the person's contact data back."""
    erased = person()
    now = datetime.now(UTC)
    await worker.service.apply_notice(
        IdentityErasure(erasure_id=f"er-{erased}", oneid=erased, oneids=(erased,), requested_at=now)
    )
    contact = {"optouts": ["sms"], "timezone": "Asia/Shanghai"}
    await worker.service.refresh_contacts({erased: (contact, worker.clock.now())})
    async with engine.connect() as connection:
        stored = await connection.scalar(
            text("SELECT count(*) FROM automation.contacts WHERE oneid = :o"), {"o": erased}
        )
    assert stored == 0


async def test_an_erasure_in_progress_holds_back_the_planning_of_its_person(
    worker: Worker, engine: AsyncEngine
) -> None:
    """Planning checked for an erasure and then inserted: an erasure committed in between let
    the erased person's steps be stored and sent. Planning now waits for the erasure."""
    erased = person()
    change = make_tier_change(erased, "vip", at=worker.clock.now())
    incoming = IncomingChange(change, orjson.loads(encode(change))["data"])
    sessions = build_sessionmaker(engine)
    async with unit_of_work(sessions) as session:  # the notice consumer's transaction
        await repository.lock_identities(session, [erased])
        await repository.erase(session, [erased], worker.clock.now())
        planning = asyncio.create_task(worker.service.handle_changes([incoming]))
        await asyncio.sleep(1.0)
    assert await planning == 0
    assert await pending_of(engine, erased) == []
    await asyncio.sleep(0.5)
    assert worker.receiver.of(erased) == []


async def test_merges_applied_out_of_order_end_in_the_surviving_oneid(
    worker: Worker, engine: AsyncEngine
) -> None:
    """Identity merged X into B, then B into A; the notices are keyed by the absorbed id, so
    B→A can be applied first. X's steps must end under A (not B, which nobody has any more),
    and a late tier change of B plans nothing."""
    got = worker.receiver.of
    x, b, a = person(), person(), person()
    await worker.publish(make_tier_change(a, "at_risk", "growth"))
    await worker.publish(make_tier_change(b, "prospect"))
    await worker.publish(make_tier_change(x, "at_risk", "growth"))
    await wait_for(lambda: got(a) and got(b) and got(x), "first steps")
    await worker.service.apply_notice(merge_of(b, a))
    await worker.service.apply_notice(merge_of(x, b))
    assert await pending_of(engine, b) == []
    assert await pending_of(engine, x) == []
    moved = await pending_of(engine, a)
    assert {payload_oneid for _, payload_oneid, _ in moved} == {a}
    late = make_tier_change(b, "vip", "prospect", at=worker.clock.now())
    incoming = IncomingChange(late, orjson.loads(encode(late))["data"])
    labels = {"reason": "merged"}
    before = REGISTRY.get_sample_value("tierflow_automation_changes_ignored_total", labels) or 0
    assert await worker.service.handle_changes([incoming]) == 0
    after = REGISTRY.get_sample_value("tierflow_automation_changes_ignored_total", labels)
    assert after == before + 1  # an SRE sees changes that planned nothing
    assert await pending_of(engine, b) == []


async def test_a_merge_applies_the_winners_refusals_to_the_steps_it_moves(
    worker: Worker, engine: AsyncEngine
) -> None:
    """The winner refused email on their profile; the absorbed id's nurture emails, moved to
    the winner, must be guarded by that refusal (they kept the absorbed id's consent)."""
    got = worker.receiver.of
    absorbed, winner = person(), person()
    await worker.service.refresh_contacts(
        {winner: ({"optouts": ["email"], "timezone": "Europe/Berlin"}, worker.clock.now())}
    )
    await worker.publish(make_tier_change(absorbed, "growth"))
    await wait_for(lambda: got(absorbed), "the absorbed id's first email")
    await worker.service.apply_notice(merge_of(absorbed, winner))
    moved = await pending_of(engine, winner)
    assert moved, "the rest of the nurture sequence moved"
    for step, _, stored in moved:
        assert "email" in stored["optouts"], step
        assert stored["timezone"] == "Europe/Berlin", step


async def test_a_chains_merges_applied_at_once_end_in_its_last_winner(
    worker: Worker, engine: AsyncEngine
) -> None:
    """X→B, B→A and A→Z arrive together on three partitions, as identity emits a chain in one
    batch. A merge used to read where its winner ended up and then wait for the merges ahead of
    it, which moved that end on: X's steps could land under A after A was absorbed into Z.
    Several chains, each chain's notices applied at once, in the order that showed it."""
    at = worker.clock.now()
    chains = [tuple(person() for _ in range(4)) for _ in range(6)]
    for chain in chains:
        for oneid in chain:
            change = make_tier_change(oneid, "at_risk", "growth", at=at)
            await worker.service.handle_changes(
                [IncomingChange(change, orjson.loads(encode(change))["data"])]
            )
    await asyncio.gather(
        *(
            worker.service.apply_notice(merge_of(absorbed, winner))
            for x, b, a, z in chains
            for absorbed, winner in ((b, a), (a, z), (x, b))
        )
    )
    for x, b, a, z in chains:
        for absorbed in (x, b, a):
            assert await pending_of(engine, absorbed) == [], absorbed
        moved = await pending_of(engine, z)
        # Z's own survey and call; the others' copies, moved to Z, were exited as duplicates
        assert [step for step, _, _ in moved] == ["satisfaction_survey", "winback_call"]
        assert {payload_oneid for _, payload_oneid, _ in moved} == {z}
