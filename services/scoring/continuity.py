"""Every fed partition reaches the scoring loop in offset order and without holes.

A state is right only if every record of its partition after the committed offset was scored,
in order. Faust and the feed drop fetched records in several places (a poll fetched before a
rebalance, the rest of a poll Faust stops yielding, everything fetched while the flow is
stopped) and count on a later seek back to the committed offsets to fetch them again. A drop
that no seek follows skips those records for good, and Faust's commit then passes them: without
a committed offset it commits the first run of acked offsets wherever that run starts, and with
one it lets a single missing offset at the head through. Rather than prove every such path,
the feed checks what it hands on: a record beyond its partition's next expected offset is a
hole, so it and the partition's later records are held back and the partition is fetched again
from the hole. Records before the expected offset are redeliveries (a seek back, a rolled-back
batch) and pass: the loop deduplicates them. A dropped poll at the end of a partition leaves no
later record to show the hole, so the fetcher also notes how far it read each partition, and
hands each poll on with a :class:`Mark` of that: once the loop took a poll, everything its mark
says was read has reached the loop or was dropped (polls are taken in order), even while other
partitions stay busy. An idle feed compares what was read since the last poll too. A read is
noted where aiokafka hands a fetch's records over, before Faust's getmany, which drops records
of its own (when the flow stops or the generation changes mid-poll) and counts on a later
seek: noted any later, such a drop at the end of a partition would go unseen. A restart
forgets what was read, so the feed seeks every partition again after one (``docs/scoring.md``,
"Records fetched during the seek after a rebalance were lost").

Offsets of Tierflow's topics are dense: no topic the loop reads is compacted and no producer
writes transactions (Tansu has none; the services' producers are idempotent at most), so a hole
is always a skipped record, never a gap in the log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from faust.types import TP


class Positioned(Protocol):
    """What the check reads of a message."""

    @property
    def tp(self) -> TP: ...

    @property
    def offset(self) -> int: ...


M = TypeVar("M", bound=Positioned)


@dataclass(frozen=True, slots=True)
class Mark:
    """How far the fetcher had read each partition when it handed a poll on. A seek since
    (``epoch``) makes it stale: a partition fetched again may be read less far than it says."""

    epoch: int
    read: Mapping[TP, int]


class Continuity:
    """The next offset the loop must see of each fed partition."""

    def __init__(self) -> None:
        self._next: dict[TP, int] = {}
        self._read: dict[TP, int] = {}  # the offset after the last record the fetcher read
        self._epoch = 0  # seeks so far

    def restart(self, positions: Mapping[TP, int]) -> None:
        """The consumer was sought to ``positions``, its whole assignment (a rebalance):
        partitions not in it are forgotten."""
        self._next = dict(positions)
        self._read = dict(positions)
        self._epoch += 1

    def expect(self, tp: TP, offset: int) -> None:
        """The consumer was sought to ``offset`` of ``tp``: its next record must be that one."""
        self._next[tp] = offset
        self._read[tp] = offset
        self._epoch += 1

    def read(self, tp: TP, offset: int) -> None:
        """The fetcher read the records of ``tp`` up to ``offset`` (to hand them on); a fetch
        answered after a seek back may hold records before what was read."""
        if offset >= self._read.get(tp, 0):
            self._read[tp] = offset + 1

    def mark(self) -> Mark:
        """How far every partition was read now (taken as a poll is handed on)."""
        return Mark(self._epoch, dict(self._read))

    def behind(self, mark: Mark | None = None) -> dict[TP, int]:
        """Partitions read further than what reached the loop, and where to fetch them again
        from: what was read by the time of ``mark`` (once its poll reached the loop; nothing for
        a mark from before a seek), or by now (only true of an idle feed when records were
        dropped on the way)."""
        if mark is not None and mark.epoch != self._epoch:
            return {}
        reads = self._read if mark is None else mark.read
        expected = self._next
        return {
            tp: expected[tp] for tp, read in reads.items() if tp in expected and read > expected[tp]
        }

    def admit(self, messages: Iterable[M]) -> tuple[list[M], dict[TP, int]]:
        """The messages that continue their partitions (redeliveries included), and for each
        partition with a hole the offset to fetch it again from (its later messages are left
        out: they come again)."""
        expected = self._next
        kept: list[M] = []
        holes: dict[TP, int] = {}
        for message in messages:
            tp, offset = message.tp, message.offset
            if tp in holes:
                continue
            after = expected.get(tp)
            if after is not None and offset > after:
                holes[tp] = after
                continue
            kept.append(message)
            if after is None or offset >= after:
                expected[tp] = offset + 1
        return kept, holes
