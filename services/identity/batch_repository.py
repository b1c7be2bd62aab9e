"""Every statement a poll batch runs, on a raw asyncpg connection.

The batch path is the worker's hot loop: each statement takes whole arrays as parameters, is
prepared once per connection (asyncpg's statement cache) and returns plain records, so a batch
costs a handful of round trips and no SQL compilation or ORM work whatever its size. Everything
else (the API, erasure, the outbox relay) goes through SQLAlchemy in :mod:`repository`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.identity.dedup import FirstSighting, Sighting
from services.identity.rules import IdentifierKey, Refusal

Connection = Any
"""An ``asyncpg.Connection`` (asyncpg ships no type information)."""


class BatchConnection:
    """The connection a worker resolves its batches on, one batch after another.

    It is checked out of the engine's pool once and kept: a checkout per batch costs a
    pre-ping (three round trips with asyncpg) and the pool's bookkeeping. After a failure that
    may have broken it, :meth:`discard` drops it and the next batch checks out a fresh one.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._held: AsyncConnection | None = None

    async def acquire(self) -> Connection:
        """The asyncpg connection (checked out on first use or after a discard)."""
        if self._held is None:
            held = await self._engine.connect()
            await (await _driver(held)).execute(_SESSION)
            self._held = held
        return await _driver(self._held)

    async def discard(self) -> None:
        """Throw the connection away (the pool replaces it)."""
        held, self._held = self._held, None
        if held is not None:
            await held.invalidate()
            await held.close()

    async def close(self) -> None:
        """Return the connection to the pool, as the pool gave it."""
        held, self._held = self._held, None
        if held is not None:
            try:
                await (await _driver(held)).execute(_RESET)
            except Exception:  # broken: the pool must not hand it out again
                await held.invalidate()
            await held.close()


async def _driver(held: AsyncConnection) -> Connection:
    raw = await held.get_raw_connection()
    return raw.driver_connection


_SESSION = "SET enable_seqscan = off; SET default_transaction_isolation = 'serializable'"
"""A batch that the identifier cache answers fully runs as one statement outside any explicit
transaction; it must be SERIALIZABLE like every other batch transaction.

Every statement of a batch finds its rows by key. After five runs Postgres may switch a
prepared statement to a generic plan, costed without the array sizes and with the statistics of
that moment: the sightings lookup's then took 25 ms growing to 95 ms for 500 ids as the table
grew, instead of 1 ms (the benchmark with 250-record batches fell from 12k to 1.8k events/s, with
Postgres at 12 times the CPU). Planning every run for its arrays avoids it too, but doubled
Postgres' CPU per batch: planning ``= ANY`` over a 500-element array costs more than the
lookups."""

_RESET = "RESET enable_seqscan; RESET default_transaction_isolation"
_OPEN_BATCH = (
    "WITH live AS (SELECT oneid FROM identity.persons WHERE oneid = ANY($5::text[]) "
    "AND merged_into IS NULL AND erased_at IS NULL), "
    "known AS (SELECT event_id, raw_partition, raw_offset, seen_at FROM identity.seen_events "
    "WHERE event_id = ANY($1::text[])), "
    "found AS (SELECT i.id_type, i.id_value, i.oneid "
    "FROM unnest($7::text[], $8::text[]) AS k(id_type, id_value) "
    "JOIN identity.identifiers i ON i.id_type = k.id_type AND i.id_value = k.id_value), "
    "recorded AS (INSERT INTO identity.seen_events AS s (event_id, raw_partition, raw_offset, "
    "seen_at) SELECT e, p, o, $4 FROM unnest($1::text[], $2::int[], $3::bigint[]) AS x(e, p, o) "
    "WHERE NOT $9::bool OR (SELECT count(*) FROM live) = cardinality($5::text[]) "
    "ON CONFLICT (event_id) DO UPDATE SET raw_partition = excluded.raw_partition, "
    "raw_offset = excluded.raw_offset, seen_at = excluded.seen_at WHERE s.seen_at < $6) "
    "SELECT l.oneids, k.ids, k.partitions, k.offsets, k.seen, f.types, f.ids, f.oneids "
    "FROM (SELECT array_agg(oneid) AS oneids FROM live) l, "
    "(SELECT array_agg(event_id) AS ids, array_agg(raw_partition) AS partitions, "
    "array_agg(raw_offset) AS offsets, array_agg(seen_at) AS seen FROM known) k, "
    "(SELECT array_agg(id_type) AS types, array_agg(id_value) AS ids, "
    "array_agg(oneid) AS oneids FROM found) f"
)
"""A batch's first statement, one round trip: its event ids' stored sightings, its first
sightings recorded (new ids, and ids whose record expired: the dedup window starts at $6),
which of the cached persons ($5) are live, and the owners of the identifiers not cached ($7,
$8). All CTEs see the same snapshot, so the sightings returned are those from before this
batch's. The caller judges which are inside the window: filtering them here made Postgres scan
the ``seen_at`` index over every recent sighting. With $9 the sightings are recorded only if
every cached person is live: then the statement alone, in its own transaction, resolves a batch
that the cache fully answers."""
_LINKS = (
    "SELECT i.id_type, i.id_value, i.oneid "
    "FROM unnest($1::text[], $2::text[]) AS k(id_type, id_value) "
    "JOIN identity.identifiers i ON i.id_type = k.id_type AND i.id_value = k.id_value"
)
_SUPPRESSED = "SELECT id_hash FROM identity.suppressions WHERE id_hash = ANY($1::text[])"
_PERSONS_TO_PLAN = (
    "SELECT p.oneid, p.created_at, i.id_type, count(i.id_type) FROM identity.persons p "
    "LEFT JOIN identity.identifiers i ON i.oneid = p.oneid WHERE p.oneid = ANY($1::text[]) "
    "GROUP BY p.oneid, p.created_at, i.id_type"
)
_INSERT_PERSONS = (
    "INSERT INTO identity.persons (oneid, created_at) "
    "SELECT * FROM unnest($1::text[], $2::timestamptz[])"
)
_INSERT_LINKS = (
    "INSERT INTO identity.identifiers (id_type, id_value, oneid, first_seen_at) "
    "SELECT t, v, o, $4 FROM unnest($1::text[], $2::text[], $3::text[]) AS k(t, v, o)"
)
_MOVE_IDENTIFIERS = "UPDATE identity.identifiers SET oneid = $1 WHERE oneid = $2"
_REPOINT_ABSORBED = "UPDATE identity.persons SET merged_into = $1 WHERE merged_into = $2"
_ABSORB = "UPDATE identity.persons SET merged_into = $1, merged_at = $3 WHERE oneid = $2"
_MOVE_TRAITS = (
    "INSERT INTO identity.traits AS t (oneid, name, value, updated_at, event_id) "
    "SELECT $1, name, value, updated_at, event_id FROM identity.traits WHERE oneid = $2 "
    "ON CONFLICT (oneid, name) DO UPDATE SET value = excluded.value, "
    "updated_at = excluded.updated_at, event_id = excluded.event_id "
    "WHERE t.updated_at < excluded.updated_at"
)
_DROP_TRAITS = "DELETE FROM identity.traits WHERE oneid = $1"
_RECORD_MERGE = (
    "INSERT INTO identity.merges (merge_id, winner, absorbed, cause_event_id, rule, merged_at) "
    "VALUES ($1, $2, $3, $4, $5, $6)"
)
_INSERT_REFUSALS = (
    "INSERT INTO identity.refusals (event_id, rule, id_type, id_value, kept, other, refused_at) "
    "SELECT e, r, t, v, k, o, $7 "
    "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) "
    "AS x(e, r, t, v, k, o)"
)
_UPSERT_TRAITS = (
    "INSERT INTO identity.traits AS t (oneid, name, value, updated_at, event_id) "
    "SELECT o, n, v, u, e "
    "FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::timestamptz[], $5::text[]) "
    "AS x(o, n, v, u, e) "
    "ON CONFLICT (oneid, name) DO UPDATE SET value = excluded.value, "
    "updated_at = excluded.updated_at, event_id = excluded.event_id "
    "WHERE t.updated_at <= excluded.updated_at"
)


@dataclass(frozen=True, slots=True)
class BatchState:
    """What :func:`open_batch` found: the batch's live cached persons, the stored first
    sightings of its event ids, and the owners of the keys it looked up."""

    live: set[str]
    sightings: dict[str, FirstSighting]
    links: dict[IdentifierKey, str]


async def open_batch(
    connection: Connection,
    firsts: Collection[Sighting],
    *,
    now: datetime,
    window_start: datetime,
    cached_owners: Collection[str],
    lookup: Collection[IdentifierKey],
    only_if_live: bool,
) -> BatchState:
    """Read what dedup and the cache need and record the batch's first sightings, in one round
    trip (see :data:`_OPEN_BATCH`); ``firsts`` holds one sighting per event id."""
    row = await connection.fetchrow(
        _OPEN_BATCH,
        [s.event_id for s in firsts],
        [s.partition for s in firsts],
        [s.offset for s in firsts],
        now,
        list(cached_owners),
        window_start,
        [t for t, _ in lookup],
        [v for _, v in lookup],
        only_if_live,
    )
    live, ids, partitions, offsets, seen, types, values, owners = row
    return BatchState(
        live=set(live or ()),
        sightings={
            i: FirstSighting(p, o, at)
            for i, p, o, at in zip(
                ids or (), partitions or (), offsets or (), seen or (), strict=True
            )
        },
        links=dict(zip(zip(types or (), values or (), strict=True), owners or (), strict=True)),
    )


async def load_links(
    connection: Connection, keys: Collection[IdentifierKey]
) -> dict[IdentifierKey, str]:
    """Which person owns each identifier (identifiers only ever point at live persons: a merge
    moves them, an erasure deletes them)."""
    if not keys:
        return {}
    rows = await connection.fetch(_LINKS, [t for t, _ in keys], [v for _, v in keys])
    return {(id_type, id_value): oneid for id_type, id_value, oneid in rows}


async def suppressed(connection: Connection, digests: Collection[str]) -> set[str]:
    """Which identifier digests belong to erased persons."""
    if not digests:
        return set()
    return {row[0] for row in await connection.fetch(_SUPPRESSED, list(digests))}


async def persons_to_plan(
    connection: Connection, oneids: Collection[str]
) -> tuple[dict[str, datetime], dict[str, Counter[str]]]:
    """Creation time and identifiers per type of every given person: what the planner compares
    when an event can grow or merge them."""
    created: dict[str, datetime] = {}
    counts: dict[str, Counter[str]] = {}
    if oneids:
        for oneid, created_at, id_type, n in await connection.fetch(_PERSONS_TO_PLAN, list(oneids)):
            created[oneid] = created_at
            held = counts.setdefault(oneid, Counter())
            if id_type is not None:
                held[id_type] = n
    return created, counts


async def insert_persons(connection: Connection, persons: dict[str, datetime]) -> None:
    """Create new persons."""
    if persons:
        await connection.execute(_INSERT_PERSONS, list(persons), list(persons.values()))


async def insert_links(
    connection: Connection, links: dict[IdentifierKey, str], seen_at: datetime
) -> None:
    """Attach new identifiers; a concurrent insert of the same identifier raises (and retries)."""
    if links:
        await connection.execute(
            _INSERT_LINKS,
            [t for t, _ in links],
            [v for _, v in links],
            list(links.values()),
            seen_at,
        )


async def apply_merge(
    connection: Connection,
    *,
    merge_id: str,
    winner: str,
    absorbed: str,
    cause_event_id: str,
    rule: str,
    at: datetime,
) -> None:
    """Move the absorbed person's identifiers, traits and absorbed persons to the winner; audit.

    Traits merge by event time: the winner keeps a trait unless the absorbed person's is newer.
    """
    await connection.execute(_MOVE_IDENTIFIERS, winner, absorbed)
    await connection.execute(_REPOINT_ABSORBED, winner, absorbed)
    await connection.execute(_ABSORB, winner, absorbed, at)
    await connection.execute(_MOVE_TRAITS, winner, absorbed)
    await connection.execute(_DROP_TRAITS, absorbed)
    await connection.execute(_RECORD_MERGE, merge_id, winner, absorbed, cause_event_id, rule, at)


async def insert_refusals(
    connection: Connection, refusals: list[tuple[Refusal, str, str | None]], at: datetime
) -> None:
    """Audit refused identifiers: (refusal, cause event id, person the event resolved to)."""
    if refusals:
        await connection.execute(
            _INSERT_REFUSALS,
            [event_id for _, event_id, _ in refusals],
            [r.rule for r, _, _ in refusals],
            [r.key[0] for r, _, _ in refusals],
            [r.key[1] for r, _, _ in refusals],
            [kept for _, _, kept in refusals],
            [r.other for r, _, _ in refusals],
            at,
        )


async def upsert_traits(
    connection: Connection, traits: dict[tuple[str, str], tuple[Any, datetime, str]]
) -> None:
    """(oneid, name) → (value, event time, event id); an older event never overwrites a newer
    one, and on a tie the incoming identify replaces the stored value."""
    if traits:
        await connection.execute(
            _UPSERT_TRAITS,
            [oneid for oneid, _ in traits],
            [name for _, name in traits],
            [json.dumps(value) for value, _, _ in traits.values()],
            [at for _, at, _ in traits.values()],
            [event_id for _, _, event_id in traits.values()],
        )
