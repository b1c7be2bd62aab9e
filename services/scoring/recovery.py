"""Table recovery that reads the changelog to its real end, whatever the broker reports.

Faust stops replaying a changelog partition at its end offset (ListOffsets "latest"). Tansu
reports that as the base offset of the last record batch plus one, so every record after the
first in the last batch is not replayed (measured: ``python -m bench.scoring_offsets``). The
worker then continues from a state missing those writes, and the next write to those people
overwrites the newer state in the changelog: a lost update. Here the reported end is only a
starting point: the tail is read until the broker returns nothing more.

It also tells whether the table holds the current assignment yet, which Faust's own flags do
not always say (:meth:`ProbedRecovery.current`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.tables import TableManager
from faust.tables.recovery import Recovery

log = logging.getLogger(__name__)

PROBE_WAIT_MS = 100  # how long the broker holds a fetch that finds nothing


async def true_ends(
    bootstrap: str, reported: Mapping[TopicPartition, int], *, patience_s: float = 15.0
) -> dict[TopicPartition, int]:
    """The end offset of each partition, found by reading from the reported end's last record.

    A fetch returns whole record batches, so reading from ``reported - 1`` yields the rest of
    the batch the broker's count stopped in, and any batch after it. A partition is at its end
    once the broker answered a fetch at the position after everything read with no records
    (aiokafka fetches a partition again only once its buffered records are taken, and stamps
    each answer). Time without records is not an answer: the earlier probe, which took 300 ms
    of it for the end, stopped short behind a broker 0.5 s slow to answer
    (``tests/integration/test_scoring_recovery.py``). A partition left unanswered for
    ``patience_s`` raises TimeoutError: better a failed recovery than one that ends short.
    """
    ends = dict(reported)
    probed = [tp for tp, end in reported.items() if end > 0]
    if not probed:
        return ends
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=PROBE_WAIT_MS
    )
    open_ = set(probed)  # partitions whose end is not known yet
    try:  # stopped even when a rebalance cancels the probe while it starts
        async with asyncio.timeout(patience_s):  # the start too: it waits on the broker
            await consumer.start()
            consumer.assign(probed)
            for tp in probed:
                consumer.seek(tp, reported[tp] - 1)
            moved_at = dict.fromkeys(probed, _now_ms())  # when each position last moved
            while open_:
                # stamps read before taking records: an answer stamped after the position
                # moved was a fetch at that position, and its records (if any) are taken below
                answered = {
                    tp for tp in open_ if (consumer.last_poll_timestamp(tp) or 0) > moved_at[tp]
                }
                wait_ms = 0 if answered else PROBE_WAIT_MS  # an answer's records are in already
                fetched = await consumer.getmany(*open_, timeout_ms=wait_ms, max_records=10_000)
                for tp, records in fetched.items():
                    ends[tp] = max(ends[tp], records[-1].offset + 1)
                    moved_at[tp] = _now_ms()
                open_ -= answered - fetched.keys()
        return ends
    except TimeoutError as timeout:
        unanswered = ", ".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in open_))
        raise TimeoutError(
            f"the broker answered no fetch of {unanswered} within {patience_s:.0f} s, so their "
            "end is unknown; recovery stops rather than resume from a state that may miss the "
            "latest writes (check the broker's load and reachability)"
        ) from timeout
    finally:
        await consumer.stop()


def _now_ms() -> int:
    """The clock aiokafka stamps fetch answers with."""
    return int(1000 * time.time())


class ProbedRecovery(Recovery):  # type: ignore[misc,unused-ignore]  # faust is untyped
    """Faust's recovery with highwaters corrected by :func:`true_ends`, without the cyclic
    garbage collector while it replays, and knowing which generation it recovered
    (:meth:`current`).

    Every recovered state is a tree of dicts and lists that the collector would traverse again
    at each full collection while the table grows (measured: decoding a state took 35 µs with
    the collector on, 13.5 µs with it off). After recovery one collection runs, then the
    recovered states are frozen out of later collections, so a large table does not make every
    later full collection walk a million people.
    """

    recovered_generation = -1

    def current(self) -> bool:
        """True once the recovery of the current generation's assignment has completed.

        Faust's ``completed`` stays set from the first recovery on, and its ``rebalancing``
        flag can be cleared by the previous recovery's end after the next rebalance began
        (Faust then logs "Missing sensor state for rebalance #2"). Measured: a restarted
        worker that went through two generations in quick succession (it joined while killed
        members were still in the group) answered /explain from its table while the second
        recovery replayed, 404 for every person of the partitions it took over: 3 of 10
        two-worker crash runs failed so, all three through two generations, none of the others.
        """
        return self.recovered_generation == self.app.consumer_generation_id

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        await super().on_recovery_completed(generation_id)
        self._recovered(generation_id)

    async def _resume_streams(self, generation_id: int = 0) -> None:
        await super()._resume_streams(generation_id)  # an assignment with nothing to replay
        self._recovered(generation_id)

    def _recovered(self, generation_id: int) -> None:
        if generation_id == self.app.consumer_generation_id:  # else Faust gave up on it
            self.recovered_generation = generation_id

    def _set_recovery_started(self) -> None:
        gc.disable()
        super()._set_recovery_started()

    def _set_recovery_ended(self) -> None:
        super()._set_recovery_ended()
        gc.collect()
        gc.freeze()
        gc.enable()

    async def _seek_offsets(
        self, consumer: Any, tps: Any, offsets: Counter[Any], title: str
    ) -> None:
        """Faust's seek to where recovery resumes, with an unknown offset (None) or one below
        -1 read as -1 (from the start). A rebalance during recovery hands Faust such offsets:
        one below -1 for a restarted recovery, and None for a standby partition assigned
        while the actives were still replaying (its offsets are built before that, and Faust
        seeks it after). Either crashed the worker (seen in two-worker crash runs).
        Reading more of the changelog is always safe."""
        resumed = Counter({tp: -1 if offsets[tp] is None else max(offsets[tp], -1) for tp in tps})
        await super()._seek_offsets(consumer, tps, resumed, title)

    async def _build_highwaters(
        self, consumer: Any, tps: Any, destination: Counter[Any], title: str
    ) -> None:
        await super()._build_highwaters(consumer, tps, destination, title)
        if not tps:
            return
        bootstrap = ",".join(f"{url.host}:{url.port}" for url in self.app.conf.broker)
        reported = {TopicPartition(tp.topic, tp.partition): destination[tp] + 1 for tp in tps}
        # within Faust's own bound on this step: past it Faust ends the recovery task quietly
        patience = float(self.app.conf.broker_request_timeout) / 2
        ends = await true_ends(bootstrap, reported, patience_s=patience)
        for tp in tps:
            end = ends[TopicPartition(tp.topic, tp.partition)]
            if end - 1 != destination[tp]:
                log.warning(
                    "broker under-reported the end of %s[%d]: %d, read to %d",
                    tp.topic,
                    tp.partition,
                    destination[tp] + 1,
                    end,
                )
                destination[tp] = end - 1


class ProbedTableManager(TableManager):  # type: ignore[misc,unused-ignore]  # faust is untyped
    """The table manager that recovers with :class:`ProbedRecovery`."""

    @property
    def recovery(self) -> Recovery:
        """The recovery service (created on first use, like Faust's own)."""
        if self._recovery is None:
            self._recovery = ProbedRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery
