"""The census rebuilt while the loop writes: whatever the scan saw of a person written meanwhile,
the result equals a census of the final states taken at rest — pure, no broker."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from services.scoring.census import Census
from services.scoring.deadlines import Deadlines
from services.scoring.processor import ERASED, MERGED
from services.scoring.scorer import State

TIERS = [None, "prospect", "growth", "vip", "at_risk"]


def person(rng: random.Random) -> State:
    roll = rng.random()
    if roll < 0.1:
        return {MERGED: "someone"}
    if roll < 0.15:
        return {ERASED: True}
    deadline = None if rng.random() < 0.2 else float(rng.randrange(1_000))
    return {"tier": rng.choice(TIERS), "deadline": deadline}


def at_rest(states: dict[bytes, State]) -> tuple[Deadlines, Counter[str], int]:
    census = Census(())
    for key, state in states.items():
        census.scanned(key, state)
    return census.finish(states.get)


def everything_due(deadlines: Deadlines) -> list[tuple[bytes, float]]:
    return sorted(deadlines.pop_due(float("inf"), 10**6))


def test_a_person_written_before_and_after_the_scan_reads_it_counts_once() -> None:
    stored: dict[bytes, State] = {
        b"a": {"tier": "prospect", "deadline": 5.0},
        b"b": {"tier": "vip", "deadline": 9.0},
        b"c": {MERGED: "b"},
    }
    latest = dict(stored)
    latest[b"n"] = {"tier": "growth", "deadline": 3.0}  # written, not stored yet
    census = Census([b"n"])
    census.scanned(b"a", stored[b"a"])
    latest[b"a"] = {"tier": "at_risk", "deadline": None}  # written after the scan read it
    latest[b"b"] = {"tier": "growth", "deadline": 1.0}  # written before the scan reads it
    census.written.update([b"a", b"b"])
    census.scanned(b"b", stored[b"b"])  # the scan's snapshot: the old state
    census.scanned(b"c", stored[b"c"])
    deadlines, population, entries = census.finish(latest.get)
    assert population == Counter({"growth": 2, "at_risk": 1, "none": 1})
    assert entries == 4
    assert everything_due(deadlines) == [(b"b", 1.0), (b"n", 3.0)]


@pytest.mark.parametrize("seed", range(200))
def test_any_interleaving_of_scan_and_writes_equals_the_census_at_rest(seed: int) -> None:
    rng = random.Random(seed)
    stored = {f"p{i}".encode(): person(rng) for i in range(rng.randrange(0, 60))}
    latest = dict(stored)
    unflushed = [f"n{i}".encode() for i in range(rng.randrange(0, 5))]
    for key in unflushed:
        latest[key] = person(rng)
    census = Census(unflushed)
    snapshot = list(stored.items())  # RocksDB's iterator; the memory store's copy
    rng.shuffle(snapshot)
    everyone = list(latest) + [f"new{i}".encode() for i in range(10)]
    for key, state in snapshot:
        census.scanned(key, state)
        for _ in range(rng.choice([0, 0, 1, 3])):  # a batch scored between two slices
            written = rng.sample(everyone, rng.randrange(1, 4))
            for other in written:
                latest[other] = person(rng)
            census.written.update(written)
    deadlines, population, entries = census.finish(latest.get)
    expected_deadlines, expected_population, expected_entries = at_rest(latest)
    assert +population == +expected_population
    assert entries == expected_entries == len(latest)
    assert everything_due(deadlines) == everything_due(expected_deadlines)
