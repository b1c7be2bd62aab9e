"""Concurrent resolvers on a real Postgres never split an identifier nor lose a merge."""

import asyncio
import random

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.identity.dedup import Sighting
from services.identity.rules import load_rules
from services.identity.service import Resolver
from shared.db import build_engine
from shared.settings import CommonSettings
from tests.factories import make_event


async def test_three_concurrent_resolvers_keep_one_person_per_identifier(
    settings: CommonSettings, engine: AsyncEngine
) -> None:
    rng = random.Random(11)
    # heavy overlap: 60 users, each event mixes a user id with a shared anonymous id
    batches = [
        [
            make_event(user_id=f"cc-u{rng.randrange(60)}", anonymous_id=f"cc-a{rng.randrange(40)}")
            for _ in range(50)
        ]
        for _ in range(24)
    ]
    engines = [build_engine(settings, application_name=f"resolver-{n}") for n in range(3)]
    resolvers = [Resolver(e, load_rules()) for e in engines]

    async def worker(n: int) -> None:
        for b, batch in enumerate(batches[n::3]):
            sightings = [Sighting(e.event_id, n, b * 100 + i) for i, e in enumerate(batch)]
            await resolvers[n].resolve(batch, sightings)

    try:
        await asyncio.gather(*(worker(n) for n in range(3)))
    finally:
        for resolver in resolvers:
            await resolver.close()
        for e in engines:
            await e.dispose()

    async with engine.connect() as connection:
        dangling = await connection.scalar(
            text(
                "SELECT count(*) FROM identity.identifiers i JOIN identity.persons p "
                "ON p.oneid = i.oneid WHERE p.merged_into IS NOT NULL AND i.id_value LIKE 'cc-%'"
            )
        )
        live = await connection.scalar(
            text(
                "SELECT count(DISTINCT oneid) FROM identity.identifiers WHERE id_value LIKE 'cc-%'"
            )
        )
        merges = await connection.scalar(
            text(
                "SELECT count(*) FROM identity.persons p WHERE p.merged_into IS NOT NULL "
                "AND NOT EXISTS (SELECT 1 FROM identity.merges m WHERE m.absorbed = p.oneid)"
            )
        )
    assert dangling == 0  # every identifier points at a live person
    assert merges == 0  # every absorbed person has its merge audited
    # a person holds one userId at most, so shared cookies never join two users: 60 users, 60
    # persons, each cookie with whichever user showed it first
    assert live == 60
