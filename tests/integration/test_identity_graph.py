"""Concurrent resolvers on a real Postgres never split an identifier nor lose a merge."""

import asyncio
import random
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.identity.dedup import Sighting
from services.identity.rules import load_rules
from services.identity.service import Resolution, Resolver
from shared.contracts import EventEnvelope
from shared.db import build_engine
from shared.settings import CommonSettings
from tests.factories import T0, make_event


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


async def test_cached_batches_follow_merges_erasures_and_the_dedup_window(
    settings: CommonSettings, engine: AsyncEngine
) -> None:
    """A batch the cache answers fully takes one statement; it must still see what another
    worker merged or erased meanwhile, and dedup exactly as the full transaction does."""
    tag = uuid.uuid4().hex[:8]
    worker, other = Resolver(engine, load_rules()), Resolver(engine, load_rules())
    offsets = iter(range(1_000_000))

    async def resolve(resolver: Resolver, *events: EventEnvelope) -> Resolution:
        sightings = [Sighting(e.event_id, 0, next(offsets)) for e in events]
        return await resolver.resolve(list(events), sightings)

    def anon(name: str, **fields: Any) -> EventEnvelope:
        return make_event(user_id=None, anonymous_id=f"{tag}-{name}", **fields)

    try:
        oldest = anon("a1", received_at=T0 - timedelta(hours=1))
        p1, p2, p3 = (await resolve(worker, oldest, anon("a2"), anon("a3"))).oneids
        assert p1 is not None
        assert p2 is not None
        assert p3 is not None
        assert len({p1, p2, p3}) == 3
        # all cached now: the same persons again, and a re-send of an event in the same batch
        again = anon("a1")
        cached = await resolve(worker, again, anon("a2"), again)
        assert cached.oneids == [p1, p2, None]
        assert cached.duplicates == [False, False, True]
        # another worker merges p2 into p1 (p1 is older) and erases p3
        await resolve(other, anon("a1", traits={"email": f"{tag}@acme.io"}, type="identify"))
        merged = await resolve(other, anon("a2", traits={"email": f"{tag}@acme.io"}))
        assert merged.oneids == [p1]
        await other.erase(p3, "test")
        followed = await resolve(worker, anon("a2"), anon("a3"))
        assert followed.oneids == [p1, None]
        assert followed.suppressed == [False, True]
        # a re-send within the window is dropped, Kafka redelivering the same record is not
        resent = anon("a1")
        seen = Sighting(resent.event_id, 0, next(offsets))
        assert (await worker.resolve([resent], [seen])).oneids == [p1]
        assert (await resolve(worker, resent)).duplicates == [True]
        assert (await worker.resolve([resent], [seen])).oneids == [p1]
        # once the first sighting left the window, a re-send counts again
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "UPDATE identity.seen_events SET seen_at = seen_at - interval '25 hours' "
                    "WHERE event_id = :id"
                ),
                {"id": resent.event_id},
            )
        assert (await resolve(worker, resent)).oneids == [p1]
        assert (await resolve(worker, resent)).duplicates == [True]
    finally:
        await worker.close()
        await other.close()


async def test_an_erased_plain_number_stays_erased_behind_an_extension(engine: AsyncEngine) -> None:
    """Links stored before extensions were kept hold the plain number, and so does the digest
    that erasing them keeps: the same phone sent with its extension must not bring the erased
    person back, and is suppressed as the event's strongest identifier."""
    tag = uuid.uuid4().hex[:8]
    phone = f"+1 650-253-{random.Random(tag).randrange(10_000):04d}"
    resolver = Resolver(engine, load_rules())
    offsets = iter(range(1_000_000))

    async def resolve(event: EventEnvelope) -> Resolution:
        return await resolver.resolve([event], [Sighting(event.event_id, 0, next(offsets))])

    def identify(name: str, phone: str) -> EventEnvelope:
        return make_event(
            user_id=None, anonymous_id=f"{tag}-{name}", type="identify", traits={"phone": phone}
        )

    try:
        (erased,) = (await resolve(identify("a", phone))).oneids
        assert erased is not None
        await resolver.erase(erased, "test")
        back = await resolve(identify("b", f"{phone} ext. 123"))
        assert back.suppressed == [True]
        assert back.oneids == [None]
    finally:
        await resolver.close()


async def test_an_overlong_identifier_or_an_erased_email_spoils_nothing_else(
    engine: AsyncEngine,
) -> None:
    """An identifier longer than the graph's columns failed the whole batch (its good events
    ended in the dead letters); an erased email shown by someone else's identify call was
    stored again in plain text as their trait."""
    tag = uuid.uuid4().hex[:8]
    resolver = Resolver(engine, load_rules())
    offsets = iter(range(1_000_000))

    async def resolve(*events: EventEnvelope) -> Resolution:
        sightings = [Sighting(e.event_id, 0, next(offsets)) for e in events]
        return await resolver.resolve(list(events), sightings)

    email = f"ada-{tag}@acme.io"
    try:
        good = make_event(user_id=f"{tag}-good")
        long = make_event(user_id=f"{tag}-long", context={"device": {"id": "d" * 600}})
        assert None not in (await resolve(good, long)).oneids
        (ada,) = (
            await resolve(
                make_event(user_id=f"{tag}-ada", traits={"email": email}, type="identify")
            )
        ).oneids
        assert ada is not None
        await resolver.erase(ada, "test")
        bob_event = make_event(
            user_id=f"{tag}-bob", type="identify", traits={"email": email, "plan": "pro"}
        )
        shown = await resolve(bob_event)
        (bob,) = shown.oneids
        assert bob is not None
        assert shown.withheld == {0: frozenset({"email"})}  # forwarded without it too
        async with engine.connect() as connection:
            rows = await connection.execute(
                text("SELECT name, value FROM identity.traits WHERE oneid = :o"), {"o": bob}
            )
            traits = dict(rows.all())
        assert traits == {"plan": "pro"}
    finally:
        await resolver.close()
