"""Three identity workers in one consumer group, on the real broker and Postgres, resolving
~20k events whose identifiers overlap heavily: one live person per identifier, no limit broken,
no merge lost or unaudited, every event's kept identifiers in one person."""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.identity.rules import identifiers_of, load_rules
from shared.contracts import EventEnvelope, encode
from shared.settings import CommonSettings
from shared.stack.launcher import Stack
from shared.topics import EVENTS_RAW, EVENTS_RESOLVED, IDENTITY_MERGES
from tests.factories import T0, make_event
from tests.support.services import Service, collect, service_env, start_service

RULES = load_rules()
EVENTS = 20_000
PEOPLE = 1_500


def journey(run: str, rng: random.Random) -> list[EventEnvelope]:
    """Events of people who browse anonymously on several devices, then log in, leave emails and
    phones, and sometimes share a computer (a cookie seen with two userIds)."""
    people = []
    for n in range(PEOPLE):
        people.append(
            {
                "user": f"{run}-u{n}",
                "email": f"{run}-p{n}@acme.io",
                "phone": f"+1415{n:07d}",
                "crm": f"{run}-crm{n}",
                "cookies": [f"{run}-c{n}-{k}" for k in range(3)],
            }
        )
    shared_cookies = [f"{run}-shared{k}" for k in range(40)]
    events = []
    for i in range(EVENTS):
        person = rng.choice(people)
        cookie = rng.choice(shared_cookies if rng.random() < 0.1 else person["cookies"])
        shape = rng.random()
        fields: dict[str, object] = {"anonymous_id": cookie, "user_id": None}
        if shape < 0.35:
            fields["user_id"] = person["user"]
        elif shape < 0.5:
            fields["traits"] = {"email": person["email"]}
            fields["type"] = "identify"
        elif shape < 0.6:
            fields["traits"] = {"phone": person["phone"]}
            fields["type"] = "identify"
        elif shape < 0.7:
            fields["external_ids"] = [{"id": person["crm"], "type": "crm_id"}]
        events.append(
            make_event(
                message_id=f"{run}-m{i}",
                source_id=run,
                timestamp=T0 + timedelta(seconds=i),
                **fields,
            )
        )
    return events


@pytest.fixture
async def workers(
    infra: Stack, settings: CommonSettings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[list[Service]]:
    env = service_env(infra.env, admin_token="workers-test", log_level="WARNING")
    logs = tmp_path_factory.mktemp("workers")
    started = [await start_service("identity", env, logs) for _ in range(3)]
    yield started
    for service in started:
        service.stop()


async def test_three_workers_resolve_overlapping_identities_consistently(
    workers: list[Service], settings: CommonSettings, engine: AsyncEngine
) -> None:
    run = f"w{uuid.uuid4().hex[:6]}"
    events = journey(run, random.Random(7))
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for chunk in range(0, len(events), 1000):
            futures = [
                await producer.send(EVENTS_RAW.name, encode(e), key=e.routing_id.encode())
                for e in events[chunk : chunk + 1000]
            ]
            for future in futures:
                await future
    finally:
        await producer.stop()

    resolved = await collect(
        settings.kafka_bootstrap,
        EVENTS_RESOLVED.name,
        lambda r: r["event"]["source_id"] == run,
        count=EVENTS,
        timeout=300,
        linger=2.0,
    )
    assert len(resolved) == EVENTS
    assert all(w.child.alive() for w in workers)

    async with engine.connect() as connection:
        owner = {
            (t, v): o
            for t, v, o in await connection.execute(
                text(
                    "SELECT i.id_type, i.id_value, i.oneid FROM identity.identifiers i "
                    "JOIN identity.persons p ON p.oneid = i.oneid "
                    "WHERE p.merged_into IS NULL AND p.erased_at IS NULL "
                    "AND (i.id_value LIKE :run OR i.id_type = 'phone')"
                ),
                {"run": f"{run}-%"},
            )
        }
        dead_links = await connection.scalar(
            text(
                "SELECT count(*) FROM identity.identifiers i JOIN identity.persons p "
                "ON p.oneid = i.oneid WHERE p.merged_into IS NOT NULL OR p.erased_at IS NOT NULL"
            )
        )
        root = dict(
            (
                await connection.execute(
                    text("SELECT oneid, coalesce(merged_into, oneid) FROM identity.persons")
                )
            ).all()
        )
        unaudited = await connection.scalar(
            text(
                "SELECT count(*) FROM identity.persons p WHERE p.merged_into IS NOT NULL "
                "AND NOT EXISTS (SELECT 1 FROM identity.merges m WHERE m.absorbed = p.oneid)"
            )
        )
        merges = set(
            (
                await connection.execute(
                    text(
                        "SELECT merge_id FROM identity.merges m WHERE EXISTS (SELECT 1 FROM "
                        "identity.identifiers i WHERE i.oneid = m.winner AND i.id_value LIKE :run)"
                    ),
                    {"run": f"{run}-%"},
                )
            ).scalars()
        )
        refused = defaultdict(set)
        for event_id, id_type, id_value in await connection.execute(
            text(
                "SELECT event_id, id_type, id_value FROM identity.refusals WHERE id_value LIKE :run"
            ),
            {"run": f"{run}-%"},
        ):
            refused[event_id].add((id_type, id_value))

    assert dead_links == 0  # every identifier points at a live person
    assert unaudited == 0  # every absorbed person has its merge in the audit
    per_person: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for (id_type, _), oneid in owner.items():
        per_person[oneid][id_type] += 1
    for oneid, counts in per_person.items():
        for id_type, n in counts.items():
            limit = RULES.limit(id_type)
            assert limit is None or n <= limit, (oneid, id_type, n)
    assert sum(len(r) for r in refused.values()) > 0  # shared cookies did meet the limits

    by_id = {r["event"]["event_id"]: r["oneid"] for r in resolved}
    for event in events:
        kept = [k for k in identifiers_of(event, RULES) if k not in refused[event.event_id]]
        owners = {owner[k] for k in kept}
        assert len(owners) == 1, (event.event_id, kept, owners)  # no merge was lost
        assert root[by_id[event.event_id]] == owners.pop()  # its OneID leads to that person

    notices = await collect(
        settings.kafka_bootstrap,
        IDENTITY_MERGES.name,
        lambda n: n.get("merge_id") in merges,
        count=len(merges),
        timeout=60,
    )
    assert merges  # anonymous browsing bridged by logins did merge persons
    assert {n["merge_id"] for n in notices} == merges  # every merge was published
