"""What the scoring loop and its timer do around the pure processor: hand what a batch produced
(tier changes, profiles, commands) to the producer, keep each changed person's new state, and
every flush interval write the changed people's changelog records (latest state once) after
everything they produced is acknowledged; once those records are acknowledged, store the states
and ack their messages.

The table's store never holds a state the changelog lacks, nor one whose outputs are not
acknowledged: a RocksDB store that survives a crash is then never ahead of what any other worker
recovering from the changelog would see (redelivered events are duplicates there and would
write nothing)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Generator, Sequence
from typing import Any, cast

import faust
from faust.types import TP, Message

from services.scoring import metrics
from services.scoring.census import Census, deadline_of, tier_of
from services.scoring.clock import Clock
from services.scoring.deadlines import Deadlines
from services.scoring.feed import ScoringApp
from services.scoring.positions import (
    advanced,
    consumed_by_partition,
    position_key,
    resumes_at,
)
from services.scoring.processor import Outcome, Record, process
from services.scoring.rules import ScoringModel
from services.scoring.schemas import Reevaluate
from services.scoring.scorer import State
from services.scoring.store import KeyPartitionedRocksDBStore
from shared.kafka import SentBatch, partition_of, send_batches
from shared.topics import EVENTS_RESOLVED, SCORING_COMMANDS

TIMER_BATCH = 10_000  # re-evaluations handed to the loop per timer tick at most

Outgoing = tuple[str, bytes, bytes | None]


class Publisher:
    """Sends the loop's messages through the app's aiokafka producer as record batches
    (:func:`shared.kafka.send_batches`): Faust's ``send`` and a table's changelog
    ``send_soon`` cost a future, a buffer entry and a callback per message, and a scoring batch
    produces thousands. Partitions are the producers' default (murmur2 of the key, as Faust's
    ``key_partition``)."""

    def __init__(self, app: faust.App) -> None:
        self.app = app

    async def send(self, messages: Sequence[Outgoing]) -> list[SentBatch]:
        """Hand ``messages`` to the producer (in order per topic partition), without waiting
        for the broker."""
        return await send_batches(cast(Any, self.app.producer)._producer, messages)

    @staticmethod
    async def acked(sent: list[SentBatch]) -> dict[tuple[str, int], int]:
        """Wait until the broker acknowledged every batch of ``sent``; return each topic
        partition's last offset."""
        acks = await asyncio.gather(*(ack for *_, ack in sent))
        return {
            (topic, partition): ack.offset + count - 1
            for (topic, partition, count, _), ack in zip(sent, acks, strict=True)
        }

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Send ``messages`` and wait until every one is acknowledged."""
        await self.acked(await self.send(messages))


class ScoringLoop:
    """The table's only writer (and its changelog's), its deadline heap, tier population and
    entry count (so that a scrape never counts a RocksDB table key by key)."""

    def __init__(
        self,
        app: ScoringApp,
        people: Any,
        model: ScoringModel,
        clock: Clock,
        partitions: int,
        flush_interval: float,
        *,
        rebuild_slice: float,
    ) -> None:
        self.app = app
        self.people = people
        self.model = model
        self.clock = clock
        self.partitions = partitions
        self.deadlines = Deadlines()
        self.population: Counter[str] = Counter()
        self.entries = 0  # people, merge and erasure markers of the partitions held
        self.flush_interval = flush_interval
        self.rebuild_slice = rebuild_slice
        self.publisher = Publisher(app)
        self._built_for: set[int] = set()
        self._census: Census | None = None  # a rebuild in progress
        self._pending: dict[bytes, State] = {}  # changed since the last flush
        self._flushing_states: dict[bytes, State] = {}  # in changelog records not yet acked
        self._flushing_encoded: dict[bytes, bytes] = {}  # those records' values
        self._held: list[Message] = []
        self._sending: list[SentBatch] = []
        self._flushing: tuple[list[SentBatch], list[Message], int] | None = None
        self._generation = app.consumer_generation_id
        self._flushed = 0.0

    def assigned(self) -> set[int]:
        """Partitions of events.resolved (and so of the table) this worker holds now."""
        consumer = self.app.consumer
        if consumer is None:
            return set()
        return {tp.partition for tp in consumer.assignment() if tp.topic == EVENTS_RESOLVED.name}

    async def handle(self, messages: Sequence[Message]) -> Outcome:
        """One batch of consumed messages: process, hand what it produced to the producer, and
        store the new states; their changelog records and the batch's acks wait for
        :meth:`flush`. An empty batch (the feed was idle) only flushes."""
        started = asyncio.get_running_loop().time()
        if not messages:
            await self.flush()
            return Outcome()
        if not self._valid():
            self._rollback()
        owned = self.app.consumer.assignment()
        records = [
            Record(m.topic, m.partition, m.offset, m.key or b"", m.value)
            for m in messages
            if m.tp in owned
        ]
        # messages of partitions revoked while buffered belong to their new owner now
        metrics.EVENTS.labels("revoked").inc(len(messages) - len(records))
        looked_up: dict[bytes, State | None] = {}

        def lookup(key: bytes) -> State | None:
            # each person's stored state is read once per batch: a RocksDB read decodes it
            if key not in looked_up:
                looked_up[key] = self.state_of(key)
            return looked_up[key]

        outcome = process(records, lookup, self.model, self.clock())
        self._sending += await self.publisher.send(
            [(s.topic, s.key, s.value) for s in outcome.sends]
        )
        if not self._valid():  # a rebalance began: this batch is fetched and processed again
            self._rollback()
            return outcome
        for key, state in outcome.writes.items():
            # process() reads every person before writing one: no second read (and decode)
            before = lookup(key)
            if before is None:
                self.entries += 1
            else:
                self.population[tier_of(before)] -= 1
            self._pending[key] = state
            self.population[tier_of(state)] += 1
            self.deadlines.set(key, deadline_of(state))
        if self._census is not None:
            self._census.written.update(outcome.writes)
        self._held.extend(messages)
        _observe(outcome)
        if asyncio.get_running_loop().time() - self._flushed >= self.flush_interval:
            await self.flush()
        metrics.BATCH_SECONDS.observe(asyncio.get_running_loop().time() - started)
        return outcome

    def state_of(self, key: bytes) -> State | None:
        """A person's latest state: unflushed, being flushed, or stored."""
        state = self._pending.get(key)
        if state is None:
            state = self._flushing_states.get(key)
        if state is None:
            state = self.people.data.get(key)
        return cast(State | None, state)

    async def flush(self) -> None:
        """Once what the held batches produced is acknowledged, send the changelog record of
        each person they changed (the latest state only); their messages are acked when those
        records are acknowledged (at the next flush).

        Offsets are committed only up to acked messages, so after a crash every message whose
        state is not in the changelog yet is processed again, and a state reaches the
        changelog only after everything it produced.
        """
        self._flushed = asyncio.get_running_loop().time()
        await self._settle()
        if not self._held or not self._valid():
            self._rollback()
            return
        sending, self._sending = self._sending, []
        await self.publisher.acked(sending)
        if not self._valid():
            self._rollback()
            return
        self._advance_positions()
        changelog = self.people.changelog_topic
        name, serializer = changelog.get_topic_name(), self.people.value_serializer
        self._flushing_encoded = {
            key: changelog.prepare_value(state, serializer)[0]
            for key, state in self._pending.items()
        }
        sends = [(name, key, value) for key, value in self._flushing_encoded.items()]
        self._flushing = (await self.publisher.send(sends), self._held, self._generation)
        self._flushing_states, self._pending, self._held = self._pending, {}, []

    def _advance_positions(self) -> None:
        """Move the position marker of every held partition still assigned past its held
        messages; written after the states (a changelog partition keeps their order)."""
        held = ((message.tp, message.offset) for message in self._held)
        consumed = consumed_by_partition(held, self.app.consumer.assignment())
        for partition, offsets in consumed.items():
            key = position_key(partition, self.partitions)
            marker = advanced(self.state_of(key), offsets)
            if marker is not None:
                self._pending[key] = marker

    def resumes_at(self, tp: TP) -> int:
        """Where ``tp`` (a fed topic's partition) resumes by its position marker (0: unknown)."""
        return resumes_at(self.state_of(position_key(tp.partition, self.partitions)), tp.topic)

    async def _settle(self) -> None:
        """Wait for the last flush's changelog acks, store its states, then ack its messages
        (unless a rebalance began: then they are fetched again and find their states stored)."""
        if self._flushing is None:
            return
        sent, held, generation = self._flushing
        offsets = await self.publisher.acked(sent)
        store, name = self.people.data, self.people.changelog_topic.get_topic_name()
        if isinstance(store, KeyPartitionedRocksDBStore):  # the changelog's bytes, once encoded
            store.write_encoded(self._flushing_encoded.items())
        else:
            for key, state in self._flushing_states.items():
                store[key] = state
        self._flushing, self._flushing_states, self._flushing_encoded = None, {}, {}
        for (topic, partition), offset in offsets.items():
            if topic == name:  # what Faust's changelog callback records (RocksDB stores)
                store.set_persisted_offset(TP(topic, partition), offset)
        if generation == self.app.consumer_generation_id and self.app.flow_control.is_active():
            self.app.ack(held)

    def _valid(self) -> bool:
        """False once a rebalance began since the unflushed batches were processed."""
        app = self.app
        return bool(app.consumer_generation_id == self._generation and app.flow_control.is_active())

    def _rollback(self) -> None:
        """Forget the unflushed batches: their messages are not acked, so after the rebalance
        they are fetched again (Faust seeks to the committed offsets) by whoever owns them."""
        if self._pending:
            self._built_for = set()  # the heap and population are rebuilt on the next tick
        self._pending, self._held = {}, []
        self._generation = self.app.consumer_generation_id

    async def tick(self) -> None:
        """Hand people whose deadline passed to the loop as re-evaluation commands."""
        if not self._settled():
            return
        partitions = self.assigned()
        if partitions != self._built_for and not await self._rebuild(partitions):
            return
        sends: list[Outgoing] = [
            (
                SCORING_COMMANDS.name,
                key,
                Reevaluate(oneid=key.decode(), deadline=deadline).model_dump_json().encode(),
            )
            for key, deadline in self.deadlines.pop_due(self.clock(), TIMER_BATCH)
            if partition_of(key, self.partitions) in partitions
        ]
        await self.publisher.publish(sends)

    def _settled(self) -> bool:
        """True when no rebalance (which lasts until its recovery is done) is under way."""
        recovery = cast(Any, self.app.tables).recovery
        return not self.app.rebalancing and bool(recovery.completed.is_set())

    async def _rebuild(self, partitions: set[int]) -> bool:
        """Once per rebalance, never per tick: the heap, population and entry count of this
        worker's people. The scan yields to the event loop every ``rebuild_slice`` (batches are
        scored meanwhile; see :class:`Census`) and gives up, returning False, if another
        rebalance begins. States are decoded one at a time and not kept: holding a million
        decoded states at once would cost gigabytes."""
        started = time.perf_counter()
        generation = self.app.consumer_generation_id
        census = self._census = Census(
            key
            for key in itertools.chain(self._flushing_states, self._pending)
            if partition_of(key, self.partitions) in partitions
        )
        held = len(census.written)
        scan = self._stored(partitions)
        try:
            slice_started = started
            for count, (key, state) in enumerate(scan):
                census.scanned(key, state)
                if count % 64 or time.perf_counter() - slice_started < self.rebuild_slice:
                    continue
                await asyncio.sleep(0)
                if not (
                    self._settled()
                    and self.app.consumer_generation_id == generation
                    and self.assigned() == partitions
                ):
                    return False
                slice_started = time.perf_counter()
            self.deadlines, self.population, self.entries = census.finish(self.state_of)
            metrics.REBUILD_FROM_LOOP.labels("held").inc(held)
            metrics.REBUILD_FROM_LOOP.labels("scored").inc(len(census.written) - held)
        finally:
            scan.close()  # a RocksDB iterator holds its database open
            self._census = None
        self._built_for = set(partitions)
        metrics.REBUILD_SECONDS.observe(time.perf_counter() - started)
        return True

    def _stored(self, partitions: set[int]) -> Generator[tuple[bytes, State]]:
        """The stored people of ``partitions``."""
        store = self.people.data
        if isinstance(store, KeyPartitionedRocksDBStore):
            for partition in sorted(partitions):
                yield from store.items_of(partition)
            return
        # the memory store's dict changes while the scan yields: scan a copy
        for key, state in list(self.people.items()):
            if partition_of(key, self.partitions) in partitions:
                yield key, state


def _observe(outcome: Outcome) -> None:
    for name, count in outcome.outcomes.items():
        metrics.EVENTS.labels(name).inc(count)
    for change in outcome.changes:
        data = change.data
        if data.from_tier != data.to_tier:
            metrics.TIER_CHANGES.labels(data.from_tier or "none", data.to_tier).inc()
        if data.from_stage != data.lifecycle_stage:
            metrics.STAGE_CHANGES.labels(data.from_stage or "none", data.lifecycle_stage).inc()
    for seconds in outcome.latencies:
        metrics.EVENT_TO_CHANGE.observe(max(0.0, seconds))
    for seconds in outcome.lateness:
        metrics.TIMER_LATENESS.observe(max(0.0, seconds))
