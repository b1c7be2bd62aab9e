"""Resolving batches against the identity graph, erasing persons, and relaying the outbox."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.identity import batch_repository, metrics, repository
from services.identity.batch_repository import BatchConnection, Connection
from services.identity.dedup import Sighting, find_duplicates
from services.identity.models import ErasureRecord, MergeRecord
from services.identity.rules import (
    BatchPlan,
    Graph,
    IdentifierKey,
    IdentityRules,
    erased_traits,
    identifiers_of,
    needs_counts,
    plan_batch,
    suppression_forms,
    without_erased,
)
from shared.contracts import EventEnvelope, IdentityErasure, IdentityMerge
from shared.db import unit_of_work
from shared.errors import NotFound
from shared.failures import sqlstate
from shared.kafka import Publisher
from shared.topics import IDENTITY_MERGES

log = logging.getLogger(__name__)

MERGE_NAMESPACE = uuid.UUID("0b8f6f1e-7a52-4d8e-bc8e-3c2f5d4a9e61")
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01", "23505"})  # serialization, deadlock, unique
T = TypeVar("T")
Outcome = tuple["BatchPlan", "Resolution", dict[IdentifierKey, str]]
"""A committed batch: its plan (for the metrics), its resolution and the links it learnt."""


def merge_id(winner: str, absorbed: str) -> str:
    """Deterministic: a redelivered event that re-plans the same merge gets the same id."""
    return str(uuid.uuid5(MERGE_NAMESPACE, f"{winner}\x1f{absorbed}"))


class IdentifierCache:
    """Identifier → OneID answers from earlier batches, least recently used dropped first.

    A hit is never trusted alone: the person's row is read in the same SERIALIZABLE transaction,
    so a merge or erasure by another worker is either seen (and followed) or makes the
    transaction conflict and retry. Only positive answers are cached: an identifier unknown a
    moment ago may exist now.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[IdentifierKey, str] = OrderedDict()

    def get(self, key: IdentifierKey) -> str | None:
        """The cached owner of ``key``, if cached."""
        oneid = self._entries.get(key)
        if oneid is not None:
            self._entries.move_to_end(key)
        return oneid

    def get_many(self, keys: Iterable[IdentifierKey]) -> dict[IdentifierKey, str]:
        """The cached owners of ``keys`` that are cached."""
        found: dict[IdentifierKey, str] = {}
        for key in keys:
            oneid = self._entries.get(key)
            if oneid is not None:
                self._entries.move_to_end(key)
                found[key] = oneid
        return found

    def put_many(self, links: dict[IdentifierKey, str]) -> None:
        """Remember owners learnt from a committed transaction."""
        if self._size <= 0:
            return
        self._entries.update(links)
        for key in links:
            self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def forget(self, keys: Iterable[IdentifierKey]) -> None:
        """Drop entries (after an erasure, say)."""
        for key in keys:
            self._entries.pop(key, None)


@dataclass(frozen=True, slots=True)
class Resolution:
    """Per event: its OneID (None: duplicate, suppressed or nothing usable) and why not."""

    oneids: list[str | None]
    duplicates: list[bool]
    suppressed: list[bool]
    merged: bool = False
    withheld: dict[int, frozenset[str]] = field(default_factory=dict)
    """Events (by index) shown with an erased email or phone trait, and those traits' names:
    forwarded without them, as they are stored without them."""


@dataclass(frozen=True, slots=True)
class Erasure:
    """What an erasure removed."""

    erasure_id: str
    oneid: str
    oneids: list[str]
    identifiers: int


class Resolver:
    """Resolves poll batches in one SERIALIZABLE transaction each, retried on conflicts.

    Serializable isolation lets Postgres refuse any interleaving of concurrent workers that
    could create two persons for one identifier, lose a merge or break a limit; the loser simply
    re-plans. A batch costs a handful of round trips whatever its size, on one connection the
    resolver keeps (see :class:`BatchConnection`); call :meth:`close` when done.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        rules: IdentityRules,
        *,
        phone_region: str | None = None,
        suppression_key: bytes = b"",
        dedup_window: timedelta = timedelta(hours=24),
        cache_size: int = 200_000,
        max_attempts: int = 20,
    ) -> None:
        self._sessions = async_sessionmaker(
            engine.execution_options(isolation_level="SERIALIZABLE"), expire_on_commit=False
        )
        self._connection = BatchConnection(engine)
        self._rules = rules
        self._region = phone_region
        self._suppression_key = suppression_key
        self._dedup_window = dedup_window
        self._cache = IdentifierCache(cache_size)
        self._max_attempts = max_attempts

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        """Serializable sessions on the identity graph."""
        return self._sessions

    @property
    def rules(self) -> IdentityRules:
        """The identity rules in force."""
        return self._rules

    @property
    def region(self) -> str | None:
        """Region for phone numbers without a country code."""
        return self._region

    def keys_of(self, event: EventEnvelope) -> list[IdentifierKey]:
        """An event's usable identifiers under these rules, strongest first."""
        return identifiers_of(event, self._rules, region=self._region)

    def digest(self, key: IdentifierKey) -> str:
        """What a suppressed identifier is remembered as: HMAC-SHA256 under the suppression key
        (plain SHA-256 without one), so the table cannot be read back into identifiers."""
        message = f"{key[0]}\x1f{key[1]}".encode()
        if self._suppression_key:
            return hmac.new(self._suppression_key, message, hashlib.sha256).hexdigest()
        return hashlib.sha256(message).hexdigest()

    async def close(self) -> None:
        """Give the batch connection back to the engine's pool."""
        await self._connection.close()

    async def resolve(self, events: list[EventEnvelope], sightings: list[Sighting]) -> Resolution:
        """Drop re-sent and suppressed events, then give every other one a OneID.

        A batch the identifier cache answers fully (every event's identifiers cached and held by
        one person, no traits to store) costs one statement; any other batch, or one where a
        cached person has since been merged or erased, runs the full transaction.
        """
        started = time.perf_counter()
        keys = [self.keys_of(event) for event in events]
        firsts: dict[str, Sighting] = {}
        for sighting in sightings:
            firsts.setdefault(sighting.event_id, sighting)
        for attempt in range(1, self._max_attempts + 1):
            connection = await self._connection.acquire()
            try:
                outcome = await self._resolve_cached(connection, events, sightings, firsts, keys)
                if outcome is None:
                    async with connection.transaction(isolation="serializable"):
                        outcome = await self._attempt(connection, events, sightings, firsts, keys)
            except Exception as error:
                code = sqlstate(error)
                if code is None:  # not a statement's failure: the connection may be broken
                    await self._connection.discard()
                if code not in RETRYABLE_SQLSTATES or attempt == self._max_attempts:
                    raise
                metrics.CONFLICT_RETRIES.inc()
                await asyncio.sleep(min(0.005 * 2**attempt, 0.5))
                continue
            plan, resolution, learnt = outcome
            self._cache.put_many(learnt)
            # counted once committed: an attempt rolled back and retried must not count twice
            metrics.NEW_PERSONS.inc(len(plan.new_persons))
            for merge in plan.merges:
                metrics.MERGES.labels(merge.rule).inc()
            for refusal in plan.refusals:
                metrics.REFUSALS.labels(refusal.rule).inc()
            metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
            return resolution
        raise AssertionError("unreachable")

    async def _serializable(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        for attempt in range(1, self._max_attempts + 1):
            try:
                async with unit_of_work(self._sessions) as session:
                    return await work(session)
            except DBAPIError as error:
                if sqlstate(error) not in RETRYABLE_SQLSTATES or attempt == self._max_attempts:
                    raise
                metrics.CONFLICT_RETRIES.inc()
                await asyncio.sleep(min(0.005 * 2**attempt, 0.5))
        raise AssertionError("unreachable")

    async def _resolve_cached(
        self,
        connection: Connection,
        events: list[EventEnvelope],
        sightings: list[Sighting],
        firsts: dict[str, Sighting],
        keys: list[list[IdentifierKey]],
    ) -> Outcome | None:
        """Resolve a batch from the cache alone, in one statement (its own SERIALIZABLE
        transaction), or return None having written nothing.

        Every event's identifiers must be cached and held by one person, and no event may carry
        traits. Then, once each cached person is shown live, each event resolves to its person
        with nothing to change (identifiers only ever point at live persons; a merge or erasure
        makes the person not live), duplicates aside, exactly as :func:`plan_batch` would
        resolve it; suppression concerns only identifiers nobody holds.
        """
        cache = self._cache
        owners: list[str | None] = []
        for event, event_keys in zip(events, keys, strict=True):
            if event.traits and event.type == "identify":
                return None
            owner = None
            for key in event_keys:
                held_by = cache.get(key)
                if held_by is None or (owner is not None and held_by != owner):
                    return None
                owner = held_by
            owners.append(owner)
        persons = {owner for owner in owners if owner is not None}
        now = datetime.now(UTC)
        state = await batch_repository.open_batch(
            connection,
            firsts.values(),
            now=now,
            window_start=now - self._dedup_window,
            cached_owners=persons,
            lookup=(),
            only_if_live=True,
        )
        if len(state.live) < len(persons):
            return None  # someone was merged or erased since: nothing was written
        metrics.CACHE_LOOKUPS.labels("hit").inc(sum(map(len, keys)))
        duplicates = find_duplicates(sightings, state.sightings, now=now, window=self._dedup_window)
        oneids = [None if dup else owner for owner, dup in zip(owners, duplicates, strict=True)]
        return BatchPlan(oneids), Resolution(oneids, duplicates, [False] * len(events)), {}

    async def _attempt(
        self,
        connection: Connection,
        events: list[EventEnvelope],
        sightings: list[Sighting],
        firsts: dict[str, Sighting],
        keys: list[list[IdentifierKey]],
    ) -> Outcome:
        now = datetime.now(UTC)
        every = {key for event_keys in keys for key in event_keys}
        cached = self._cache.get_many(every)
        misses = every - cached.keys()
        state = await batch_repository.open_batch(
            connection,
            firsts.values(),
            now=now,
            window_start=now - self._dedup_window,
            cached_owners=set(cached.values()),
            lookup=misses,
            only_if_live=False,
        )
        duplicates = find_duplicates(sightings, state.sightings, now=now, window=self._dedup_window)
        keyed = [[] if dup else k for k, dup in zip(keys, duplicates, strict=True)]

        links = {key: oneid for key, oneid in cached.items() if oneid in state.live}
        stale = cached.keys() - links.keys()  # their person was merged or erased meanwhile
        found = state.links
        if stale:
            found.update(await batch_repository.load_links(connection, stale))
            # held by no one now (erased): an erasure served by another process left this
            # worker's cache holding the raw identifier until evicted
            self._cache.forget(stale - found.keys())
        metrics.CACHE_LOOKUPS.labels("hit").inc(len(links))
        metrics.CACHE_LOOKUPS.labels("miss").inc(len(misses) + len(stale))
        links.update(found)
        wanted = {k for event_keys in keyed for k in event_keys}
        hidden = await self._suppressed(connection, wanted - links.keys())
        suppressed = [False] * len(keyed)
        withheld: list[frozenset[str]] = [frozenset()] * len(keyed)
        if hidden:
            keyed, suppressed = without_erased(keyed, hidden)
            withheld = [erased_traits(e, hidden, self._rules, self._region) for e in events]

        to_plan = needs_counts(keyed, links)
        created, counts = await batch_repository.persons_to_plan(connection, to_plan)
        graph = Graph(links, created, counts)
        times = [e.received_at for e in events]
        plan = plan_batch(list(zip(keyed, times, strict=True)), graph, self._rules, _new_oneid)

        await batch_repository.insert_persons(connection, plan.new_persons)
        await batch_repository.insert_links(connection, plan.new_links, now)
        for merge in plan.merges:
            await batch_repository.apply_merge(
                connection,
                merge_id=merge_id(merge.winner, merge.absorbed),
                winner=merge.winner,
                absorbed=merge.absorbed,
                cause_event_id=events[merge.event_index].event_id,
                rule=merge.rule,
                at=now,
            )
        await batch_repository.insert_refusals(
            connection,
            [
                (r, events[r.event_index].event_id, plan.oneids[r.event_index])
                for r in plan.refusals
            ],
            now,
        )
        await batch_repository.upsert_traits(
            connection, _latest_traits(events, plan.oneids, plan.root_of, withheld)
        )

        if plan.merges:  # owners may have moved: re-learn every link the batch saw
            learnt = {k: plan.root_of(o) for k, o in {**links, **plan.new_links}.items()}
        else:  # cached answers that held are already in the cache
            learnt = {**found, **plan.new_links}
        resolution = Resolution(
            plan.oneids,
            duplicates,
            suppressed,
            bool(plan.merges),
            {i: names for i, names in enumerate(withheld) if names and plan.oneids[i]},
        )
        return plan, resolution, learnt

    async def _suppressed(
        self, connection: Connection, keys: set[IdentifierKey]
    ) -> set[IdentifierKey]:
        """Which of ``keys`` were erased. Only identifiers that no live person holds need the
        check: erasure deletes an identifier's link, and suppression keeps it from coming back."""
        digests: dict[str, set[IdentifierKey]] = defaultdict(set)
        for key in keys:
            for form in suppression_forms(key):
                digests[self.digest(form)].add(key)
        found = await batch_repository.suppressed(connection, digests)
        return {key for digest in found for key in digests[digest]}

    async def erase(self, oneid: str, reason: str) -> Erasure:
        """Erase a person (and everyone merged into them): raw identifiers and traits deleted,
        identifiers kept only as digests that suppress later events, a notice queued."""

        async def work(session: AsyncSession) -> tuple[Erasure, list[IdentifierKey]]:
            root = await repository.resolve_oneid(session, oneid)
            if root is None:
                raise NotFound(f"no live person {oneid}")
            oneids = [root, *await repository.absorbed_by(session, root)]
            keys = [
                (i.id_type, i.id_value)
                for i in await repository.identifiers_of_person(session, root)
            ]
            erasure = Erasure(str(uuid.uuid4()), root, oneids, len(keys))
            await repository.erase(
                session,
                erasure_id=erasure.erasure_id,
                root=root,
                oneids=oneids,
                digests=[self.digest(k) for k in keys],
                reason=reason,
                at=datetime.now(UTC),
            )
            return erasure, keys

        erasure, keys = await self._serializable(work)
        self._cache.forget(keys)
        metrics.ERASURES.inc()
        return erasure

    async def prune_sightings(self) -> int:
        """Forget first sightings older than the dedup window."""
        async with unit_of_work(self._sessions) as session:
            return await repository.prune_sightings(session, datetime.now(UTC) - self._dedup_window)


def _new_oneid() -> str:
    return str(uuid.uuid4())


def _latest_traits(
    events: list[EventEnvelope],
    oneids: list[str | None],
    root_of: Callable[[str], str],
    withheld: list[frozenset[str]],
) -> dict[tuple[str, str], tuple[Any, datetime, str]]:
    """Identify calls' traits per (final person, name), the latest event time winning, except
    each event's ``withheld`` (erased identifiers)."""
    latest: dict[tuple[str, str], tuple[Any, datetime, str]] = {}
    for event, oneid, skipped in zip(events, oneids, withheld, strict=True):
        if oneid is None or event.type != "identify":
            continue
        root = root_of(oneid)
        for name, value in event.traits.items():
            if name in skipped:
                continue
            current = latest.get((root, name[:200]))
            if current is None or current[1] <= event.timestamp:
                latest[(root, name[:200])] = (value, event.timestamp, event.event_id)
    return latest


def merge_notice(record: MergeRecord) -> IdentityMerge:
    """A merge audit row as its notice (also what the merges API lists)."""
    return IdentityMerge(
        merge_id=record.merge_id,
        winner=record.winner,
        absorbed=record.absorbed,
        cause_event_id=record.cause_event_id,
        rule=record.rule,
        merged_at=record.merged_at,
    )


def erasure_notice(record: ErasureRecord) -> IdentityErasure:
    """An erasure row as its notice."""
    return IdentityErasure(
        erasure_id=record.erasure_id,
        oneid=record.oneid,
        oneids=tuple(record.oneids),
        requested_at=record.requested_at,
        reason=record.reason,
    )


RELAY_EVERY_S = 5.0
"""How often pending merge and erasure notices are published when nothing else publishes them."""


class NoticeRelay:
    """Publishes committed merges and erasures from the outbox tables, then marks them.

    Rows are claimed with SKIP LOCKED, so several workers (and the erasure API) can relay at once;
    a crash between publish and mark re-publishes, which consumers handle by id. The sessions
    should be READ COMMITTED: the row locks are the concurrency control, and under SERIALIZABLE
    the marking update failed with serialization errors next to busy workers (the 3-worker test
    showed it).
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession], publisher: Publisher) -> None:
        self._sessions = sessions
        self._publisher = publisher

    async def relay_forever(self, every_s: float) -> None:
        """Relay every ``every_s`` seconds whatever else happens: the workers relay after their
        polls, and a quiet system (no raw events) left an erasure whose API call could not
        publish it in the outbox until traffic came back."""
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.relay()
            except Exception:
                log.exception("relaying identity notices failed; they stay in the outbox")

    async def relay(self) -> int:
        """Publish what is pending; returns how many notices went out."""
        async with unit_of_work(self._sessions) as session:
            merges = await repository.claim_unpublished_merges(session)
            erasures = await repository.claim_unpublished_erasures(session)
            if not merges and not erasures:
                return 0
            notices: list[tuple[str, IdentityMerge | IdentityErasure]] = [
                *((m.absorbed, merge_notice(m)) for m in merges),
                *((e.oneid, erasure_notice(e)) for e in erasures),
            ]
            await self._publisher.publish_many(IDENTITY_MERGES, notices)
            await repository.mark_published(
                session,
                [m.merge_id for m in merges],
                [e.erasure_id for e in erasures],
                datetime.now(UTC),
            )
            return len(merges) + len(erasures)
