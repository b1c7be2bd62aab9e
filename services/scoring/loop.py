"""What the scoring loop and its timer do with a batch, around the pure processor: send what
the batch produced, wait for the acks, then write each changed person once."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from typing import Any, cast

import faust
from faust.types import Message

from services.scoring import metrics
from services.scoring.clock import Clock
from services.scoring.deadlines import Deadlines, partition_of
from services.scoring.processor import Outcome, Record, is_live, process
from services.scoring.rules import ScoringModel
from services.scoring.schemas import Reevaluate
from services.scoring.scorer import State
from shared.topics import EVENTS_RESOLVED, SCORING_COMMANDS

TIMER_BATCH = 10_000  # re-evaluations handed to the loop per timer tick at most

Outgoing = tuple[str, bytes, bytes | None]


def _tier(state: State | None) -> str:
    return cast(str, state["tier"] or "none") if state is not None and is_live(state) else "none"


class ScoringLoop:
    """The table's only writer, its deadline heap and tier population."""

    def __init__(
        self, app: faust.App, people: Any, model: ScoringModel, clock: Clock, partitions: int
    ) -> None:
        self.app = app
        self.people = people
        self.model = model
        self.clock = clock
        self.partitions = partitions
        self.deadlines = Deadlines()
        self.population: Counter[str] = Counter()
        self._built_for: set[int] = set()

    def assigned(self) -> set[int]:
        """Partitions of events.resolved (and so of the table) this worker holds now."""
        consumer = self.app.consumer
        if consumer is None:
            return set()
        return {tp.partition for tp in consumer.assignment() if tp.topic == EVENTS_RESOLVED.name}

    async def send_all(self, sends: Sequence[Outgoing]) -> None:
        """Send everything, then wait until the broker acknowledged every message."""
        producer = self.app.producer
        pending = [await producer.send(t, k, v, None, None, None) for t, k, v in sends]
        await asyncio.gather(*pending)

    async def handle(self, messages: Sequence[Message]) -> Outcome:
        """One batch of consumed messages: process, send and await acks, then write the table."""
        started = asyncio.get_running_loop().time()
        owned = self.app.consumer.assignment()
        records = [
            Record(m.topic, m.partition, m.offset, m.key or b"", m.value)
            for m in messages
            if m.tp in owned
        ]
        # messages of partitions revoked while buffered belong to their new owner now
        metrics.EVENTS.labels("revoked").inc(len(messages) - len(records))
        outcome = process(records, self.people.get, self.model, self.clock())
        await self.send_all([(s.topic, s.key, s.value) for s in outcome.sends])
        for key, state in outcome.writes.items():
            before = _tier(self.people.get(key))
            self.people[key] = state
            self.population[before] -= 1
            self.population[_tier(state)] += 1
            self.deadlines.set(key, state.get("deadline") if is_live(state) else None)
        _observe(outcome)
        metrics.BATCH_SECONDS.observe(asyncio.get_running_loop().time() - started)
        return outcome

    async def tick(self) -> None:
        """Hand people whose deadline passed to the loop as re-evaluation commands."""
        recovery = cast(Any, self.app.tables).recovery
        if self.app.rebalancing or not recovery.completed.is_set():
            return
        partitions = self.assigned()
        if partitions != self._built_for:
            self._rebuild(partitions)
        sends: list[Outgoing] = [
            (
                SCORING_COMMANDS.name,
                key,
                Reevaluate(oneid=key.decode(), deadline=deadline).model_dump_json().encode(),
            )
            for key, deadline in self.deadlines.pop_due(self.clock(), TIMER_BATCH)
            if partition_of(key, self.partitions) in partitions
        ]
        await self.send_all(sends)

    def _rebuild(self, partitions: set[int]) -> None:
        """Once per rebalance, never per tick: the heap and population of this worker's people."""
        mine = [
            (key, cast(State, value))
            for key, value in self.people.items()
            if partition_of(key, self.partitions) in partitions
        ]
        self.deadlines.rebuild((k, v.get("deadline") if is_live(v) else None) for k, v in mine)
        self.population = Counter(_tier(v) for _, v in mine)
        self._built_for = set(partitions)


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
