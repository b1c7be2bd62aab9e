"""Where each input partition resumes, kept in the table beside the states it covers.

A consumer group resumes from its committed offsets, and a worker that finds none starts from
the beginning. The scoring loop then meets every event again, and a person remembers only the
last 256 event ids (the dedup): every older event counted again, and counting it pushed newer
ids out, so a person ended with every event counted twice
(``tests/crash/test_scoring_positions.py`` on the code before this module). Committed offsets
do go missing: a Kafka cluster expires a group's offsets once the group stays away longer than
``offsets.retention.minutes``. On Tansu one session's logs counted seeks after a rebalance that
found none for partitions committed before; a later probe that logged every commit and seek
found each seek at the last acknowledged commit, but once saw workers commit nothing for 40 s
(``docs/benchmarks.md``).

So every flush also writes one position marker per input partition it scored: for each fed
topic, the offset after the last message whose effect the flushed states hold. The marker of a
partition goes to the same changelog partition as that partition's people (the table is keyed
like every input, and every write of a batch is to its record's own key) and after their states,
so a recovered marker is never ahead of a recovered state. A worker taking a partition over
resumes from the later of the committed offset and the marker.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from functools import cache

from faust.types import TP

from services.scoring.scorer import State
from shared.kafka import partition_of

POSITION = "resumes_at"
"""Marker field: the offset each fed topic of this partition resumes from."""
_KEY_PREFIX = "tierflow:position"  # no OneID has a colon


@cache
def position_key(partition: int, partitions: int) -> bytes:
    """The table key of ``partition``'s marker: the first of a fixed series that the default
    partitioner puts in that partition (so it lands in the right changelog partition)."""
    for n in range(100_000):
        key = f"{_KEY_PREFIX}:{partition}:{n}".encode()
        if partition_of(key, partitions) == partition:
            return key
    raise ValueError(f"no position key hashes to partition {partition} of {partitions}")


def is_position(state: State | None) -> bool:
    """True for a position marker (never a person)."""
    return state is not None and POSITION in state


def resumes_at(marker: State | None, topic: str) -> int:
    """Where ``topic`` resumes according to ``marker`` (0: nothing known)."""
    if marker is None:
        return 0
    return int(marker.get(POSITION, {}).get(topic, 0))


def advanced(marker: State | None, consumed: Iterable[tuple[str, int]]) -> State | None:
    """``marker`` moved past ``consumed`` (offsets of scored messages, as ``(topic, offset)``),
    or None when nothing moves it forward."""
    known: Mapping[str, int] = marker.get(POSITION, {}) if marker is not None else {}
    moved = dict(known)
    for topic, offset in consumed:
        if offset + 1 > moved.get(topic, 0):
            moved[topic] = offset + 1
    return {POSITION: moved} if moved != known else None


def consumed_by_partition(
    messages: Iterable[tuple[TP, int]], owned: Container[TP]
) -> dict[int, list[tuple[str, int]]]:
    """The last offset of each fed topic among ``messages`` (``(tp, offset)``, redeliveries
    included), by partition, for the partitions in ``owned`` only: another worker writes the
    marker of a partition this one no longer holds."""
    last: dict[TP, int] = {}
    for tp, offset in messages:
        if offset > last.get(tp, -1):
            last[tp] = offset
    consumed: dict[int, list[tuple[str, int]]] = {}
    for tp, offset in last.items():
        if tp in owned:
            consumed.setdefault(tp.partition, []).append((tp.topic, offset))
    return consumed
