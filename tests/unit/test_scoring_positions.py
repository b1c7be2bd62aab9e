"""Position markers: where each input partition resumes when committed offsets are gone."""

from __future__ import annotations

import pytest
from faust.types import TP

from services.scoring.census import Census
from services.scoring.positions import (
    POSITION,
    advanced,
    consumed_by_partition,
    is_position,
    position_key,
    resumes_at,
)
from services.scoring.processor import is_live
from shared.kafka import partition_of


@pytest.mark.parametrize("partitions", [1, 2, 4, 12])
def test_each_marker_key_lands_in_its_own_partition(partitions: int) -> None:
    keys = [position_key(p, partitions) for p in range(partitions)]
    assert [partition_of(key, partitions) for key in keys] == list(range(partitions))
    assert len(set(keys)) == partitions


def test_a_marker_moves_past_the_last_offset_of_each_topic() -> None:
    marker = advanced(None, [("events", 4), ("events", 9), ("merges", 0), ("events", 7)])
    assert marker == {POSITION: {"events": 10, "merges": 1}}
    assert resumes_at(marker, "events") == 10
    assert resumes_at(marker, "commands") == 0
    assert resumes_at(None, "events") == 0


def test_a_marker_never_moves_back_and_redeliveries_change_nothing() -> None:
    marker = {POSITION: {"events": 10, "merges": 1}}
    assert advanced(marker, [("events", 3), ("events", 9), ("merges", 0)]) is None
    assert advanced(marker, [("events", 3), ("commands", 5)]) == {
        POSITION: {"events": 10, "merges": 1, "commands": 6}
    }


def test_a_marker_is_not_a_person_and_is_not_counted() -> None:
    marker = {POSITION: {"events": 10}}
    assert is_position(marker)
    assert not is_position({"tier": "vip"})
    assert not is_position(None)
    assert not is_live(marker)
    census = Census([])
    census.scanned(b"tierflow:position:0:0", marker)
    deadlines, population, entries = census.finish(lambda key: None)
    assert (len(deadlines), sum(population.values()), entries) == (0, 0, 0)


def test_a_flush_marks_the_last_offset_of_each_owned_partition() -> None:
    e0, e1, merges = TP("events", 0), TP("events", 1), TP("merges", 0)
    held = [(e0, 5), (e1, 2), (e0, 6), (merges, 3), (e0, 4), (e1, 3)]  # (e0, 4): a redelivery
    assert consumed_by_partition(held, {e0, merges}) == {0: [("events", 6), ("merges", 3)]}
    assert consumed_by_partition(held, set()) == {}


def test_a_marker_the_loop_holds_is_not_counted_either() -> None:
    census = Census([b"tierflow:position:0:0", b"person"])
    marker, person = {POSITION: {"events": 10}}, {"tier": "vip", "deadline": 5.0}
    deadlines, population, entries = census.finish(
        {b"tierflow:position:0:0": marker, b"person": person}.get
    )
    assert (len(deadlines), dict(population), entries) == (1, {"vip": 1}, 1)
