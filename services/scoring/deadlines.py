"""Per-person next-evaluation deadlines in a heap: the timer looks only at people who are due.

Entries are hints: when a person's deadline moves (an event arrived) the old entry stays in the
heap and is dropped when it surfaces, because the agent re-checks the stored deadline.
"""

from __future__ import annotations

import heapq


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

    def pop_due(self, now: float, limit: int) -> list[tuple[bytes, float]]:
        """Up to ``limit`` keys whose deadline is at or before ``now``, earliest first."""
        due: list[tuple[bytes, float]] = []
        while self._heap and self._heap[0][0] <= now and len(due) < limit:
            deadline, key = heapq.heappop(self._heap)
            if self._due.get(key) == deadline:
                del self._due[key]
                due.append((key, deadline))
        return due
