"""Where table recovery resumes reading a changelog partition: the unknown and impossible offsets
a rebalance during recovery leaves behind mean "from the start", never a crashed worker."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from faust.types import TP

from services.scoring.recovery import ProbedRecovery


class SeekRecorder:
    """The one consumer call Faust's seek makes, recorded."""

    def __init__(self) -> None:
        self.seeks: dict[TP, int] = {}

    async def seek_wait(self, partitions: Mapping[TP, int]) -> None:
        self.seeks.update(partitions)


async def test_unknown_or_impossible_offsets_resume_from_the_start() -> None:
    recovery = ProbedRecovery.__new__(ProbedRecovery)  # the seek reads no state of the service
    new_standby, restarted, empty, known = (TP("people-changelog", n) for n in range(4))
    offsets: Counter[TP] = Counter({restarted: -7, empty: -1, known: 41})
    offsets[new_standby] = None  # type: ignore[assignment]  # what Faust's add_standby leaves
    consumer = SeekRecorder()

    await recovery._seek_offsets(consumer, set(offsets), offsets, "standby")

    # Faust re-reads the last record it applied (41): harmless, and its own convention
    assert consumer.seeks == {new_standby: 0, restarted: 0, empty: 0, known: 41}
