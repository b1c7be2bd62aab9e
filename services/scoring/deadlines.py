"""Per-person next-evaluation deadlines in a heap: the timer looks only at people who are due.

Entries are hints: when a person's deadline moves (an event arrived) the old entry stays in the
heap and is dropped when it surfaces, because the agent re-checks the stored deadline. Almost
every event moves a deadline, and the old entry would surface only when its time came (up to a
day later): the heap would hold an entry per event of the last day, gigabytes at the target
rate. So it is rebuilt from the live entries whenever the stale ones outnumber them.
"""

from __future__ import annotations

import heapq

SLACK = 1024  # stale entries always tolerated: a rebuild of a small heap is not worth it


class Deadlines:
    """A min-heap of (deadline, key), one live entry per key at a time."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, bytes]] = []
        self._due: dict[bytes, float] = {}

    def __len__(self) -> int:
        return len(self._due)

    def set(self, key: bytes, deadline: float | None) -> None:
        """Schedule ``key`` at ``deadline`` (None: not at all), replacing its earlier entry."""
        if deadline is None:
            self._due.pop(key, None)
            return
        if self._due.get(key) != deadline:
            self._due[key] = deadline
            heapq.heappush(self._heap, (deadline, key))
            if len(self._heap) > 2 * len(self._due) + SLACK:
                self._heap = [(at, due) for due, at in self._due.items()]
                heapq.heapify(self._heap)

    @property
    def entries(self) -> int:
        """Heap entries, live and stale (what the heap costs in memory)."""
        return len(self._heap)

    def pop_due(self, now: float, limit: int) -> list[tuple[bytes, float]]:
        """Up to ``limit`` keys whose deadline is at or before ``now``, earliest first."""
        due: list[tuple[bytes, float]] = []
        while self._heap and self._heap[0][0] <= now and len(due) < limit:
            deadline, key = heapq.heappop(self._heap)
            if self._due.get(key) == deadline:
                del self._due[key]
                due.append((key, deadline))
        return due
