"""A worker's census of its people (deadlines, tier population, entry count), rebuilt from the
table after a rebalance while the scoring loop goes on writing.

At a million people the scan takes seconds; it runs in slices, and the loop scores between them.
A person the loop writes during the scan may be seen by the scan before or after (or, on RocksDB,
as of the iterator's snapshot): the census ignores what the scan saw of such a person and takes
its state from the loop when the scan is done.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import cast

from services.scoring.deadlines import Deadlines
from services.scoring.positions import is_position
from services.scoring.processor import is_live
from services.scoring.scorer import State


def tier_of(state: State | None) -> str:
    """The population a person counts in: its tier, or ``none`` (unscored, merged, erased)."""
    return cast(str, state["tier"] or "none") if state is not None and is_live(state) else "none"


def deadline_of(state: State) -> float | None:
    """When the timer should look at a person again (never for a merged or erased one)."""
    return state.get("deadline") if is_live(state) else None


class Census:
    """One rebuild: what the scan found, and which people the loop wrote meanwhile. Counted as
    the scan goes, so that its end costs only the people written meanwhile."""

    def __init__(self, written: Iterable[bytes]) -> None:
        self.written: set[bytes] = set(written)  # people whose state the loop holds
        self.deadlines = Deadlines()
        self.population: Counter[str] = Counter()
        self._tiers: dict[bytes, str] = {}  # each person's tier as counted
        self._names: dict[str, str] = {}  # one string per tier name, not one per person

    def scanned(self, key: bytes, state: State) -> None:
        """A person as the table's scan read it (a written person's is replaced at the end)."""
        self._count(key, state)

    def finish(
        self, state_of: Callable[[bytes], State | None]
    ) -> tuple[Deadlines, Counter[str], int]:
        """The deadlines, population and entry count, with the written people's latest states
        from ``state_of``."""
        for key in self.written:
            self._count(key, state_of(key))
        return self.deadlines, self.population, len(self._tiers)

    def _count(self, key: bytes, state: State | None) -> None:
        """Count ``key`` as ``state`` (None, or a position marker: not at all), in place of how
        it was counted."""
        before = self._tiers.pop(key, None)
        if before is not None:
            self.population[before] -= 1
        if state is None or is_position(state):
            self.deadlines.set(key, None)
            return
        tier = tier_of(state)
        self._tiers[key] = tier = self._names.setdefault(tier, tier)
        self.population[tier] += 1
        self.deadlines.set(key, deadline_of(state))
