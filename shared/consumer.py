"""An at-least-once batch consumer loop: handle a poll batch, then commit exactly its offsets."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Histogram

from shared.failures import is_poison
from shared.metrics import LATENCY_BUCKETS

log = logging.getLogger(__name__)

Records = Sequence[ConsumerRecord[bytes, bytes]]
Batches = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
BatchHandler = Callable[[Records], Awaitable[Awaitable[None] | None]]
"""Handles a batch. It may return an awaitable that completes once the batch's outputs are
acknowledged; the batch is committed only after that (see ``settle_ahead``)."""
PoisonSink = Callable[[ConsumerRecord[bytes, bytes], Exception], Awaitable[None]]
"""Takes a record that fails alone with a poison error (see :mod:`shared.failures`), e.g. to the
dead-letter topic; returns once it is stored durably."""

BATCH_SECONDS = Histogram(
    "tierflow_consumer_batch_duration_seconds",
    "Time to handle one poll batch, by consumer group.",
    ["group"],
    buckets=LATENCY_BUCKETS,
)
RECORDS = Counter(
    "tierflow_consumer_records_total", "Records handled, by consumer group.", ["group"]
)
BATCH_FAILURES = Counter(
    "tierflow_consumer_batch_failures_total",
    "Poll batches that failed and were retried, by consumer group.",
    ["group"],
)
POISON_RECORDS = Counter(
    "tierflow_consumer_poison_records_total",
    "Records that failed alone with a poison error and were handed to the dead-letter sink.",
    ["group"],
)


@dataclass(slots=True)
class _Handled:
    """A batch whose handler returned, waiting for its outputs' acknowledgement and commit."""

    batches: Batches
    acknowledged: Awaitable[None] | None
    started: float


class BatchConsumer:
    """Owns a consumer: polls, hands each batch to ``handler``, commits only after it returns.

    A handler that raises leaves the offsets uncommitted; the batch is re-read from its first
    offsets after a backoff, so handlers must be idempotent (they dedup by event id).

    With ``settle_ahead`` = n > 0, up to n further batches are polled and handled while an
    earlier batch's outputs are still being acknowledged (the handler returns an awaitable for
    that). Batches are still committed in order, each only once its outputs are acknowledged;
    any failure re-reads from the oldest uncommitted batch.

    With a ``poison`` sink, a batch that fails ``poison_after`` times in a row with an error about
    a record's content (:func:`shared.failures.is_poison`) is re-read one record at a time: each
    record that still fails that way goes to the sink and its offset is committed, so one bad
    record cannot block its partition. Any other failure (an outage) is retried as before.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        handler: BatchHandler,
        *,
        group: str,
        max_records: int = 500,
        settle_ahead: int = 0,
        poison: PoisonSink | None = None,
        poison_after: int = 3,
    ) -> None:
        self._consumer = consumer
        self._handler = handler
        self._group = group
        self._max_records = max_records
        self._settle_ahead = settle_ahead
        self._poison = poison
        self._poison_after = poison_after
        self._strikes = 0  # consecutive failures with a poison error
        self._isolating = False
        self._stopping = asyncio.Event()
        self.joined = False

    async def run(self) -> None:
        """Poll and handle until :meth:`stop` is called."""
        backoff = 0.2
        handled: deque[_Handled] = deque()
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            batches = await self._consumer.getmany(timeout_ms=250, max_records=self._max_records)
            self.joined = True
            try:
                if batches and self._isolating and self._poison is not None:
                    await self._isolate(batches, self._poison)
                    self._isolating = False
                elif batches:
                    started = loop.time()
                    records = [record for part in batches.values() for record in part]
                    handled.append(_Handled(batches, await self._handler(records), started))
                while handled and (len(handled) > self._settle_ahead or not batches):
                    await self._settle(handled[0])
                    handled.popleft()
                backoff = 0.2
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception as error:
                BATCH_FAILURES.labels(self._group).inc()
                log.exception("batch failed; re-reading it", extra={"group": self._group})
                self._strike(error)
                pending = [h.batches for h in handled]
                if batches and (not handled or handled[-1].batches is not batches):
                    pending.append(batches)
                await self._forget(handled)
                self._rewind(pending)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
        try:  # stopping: commit what is already out
            while handled:
                await self._settle(handled.popleft())
        except Exception:
            log.exception("last batches left uncommitted", extra={"group": self._group})

    def _strike(self, error: Exception) -> None:
        """Count a failure; enough poison failures in a row re-read the next batch record by
        record."""
        self._strikes = self._strikes + 1 if is_poison(error) else 0
        if self._poison is not None and self._strikes >= self._poison_after:
            self._isolating = True
            self._strikes = 0

    async def _isolate(self, batches: Batches, sink: PoisonSink) -> None:
        """Handle each record alone, committing after each; a record failing with a poison error
        goes to the sink. Any other error propagates, and the batch is re-read (isolation stays
        on until one batch got through it)."""
        for tp, part in batches.items():
            for record in part:
                try:
                    acknowledged = await self._handler([record])
                    if acknowledged is not None:
                        await acknowledged
                except Exception as error:
                    if not is_poison(error):
                        raise
                    log.error(
                        "record %s[%d]@%d fails alone with %r; dead-lettering it",
                        tp.topic,
                        tp.partition,
                        record.offset,
                        error,
                        extra={"group": self._group},
                    )
                    await sink(record, error)
                    POISON_RECORDS.labels(self._group).inc()
                await self._consumer.commit({tp: record.offset + 1})
                RECORDS.labels(self._group).inc()

    async def _settle(self, batch: _Handled) -> None:
        """Wait for a handled batch's outputs, then commit its offsets."""
        if batch.acknowledged is not None:
            await batch.acknowledged
        await self._consumer.commit({tp: part[-1].offset + 1 for tp, part in batch.batches.items()})
        self._strikes = 0
        RECORDS.labels(self._group).inc(sum(len(part) for part in batch.batches.values()))
        elapsed = asyncio.get_running_loop().time() - batch.started
        BATCH_SECONDS.labels(self._group).observe(elapsed)

    @staticmethod
    async def _forget(handled: deque[_Handled]) -> None:
        """Drop handled batches after a failure, letting their sends finish (or fail) quietly."""
        waiting = [h.acknowledged for h in handled if h.acknowledged is not None]
        handled.clear()
        await asyncio.gather(*waiting, return_exceptions=True)

    def _rewind(self, pending: list[Batches]) -> None:
        """Seek every partition back to the first offset of the oldest uncommitted batch."""
        first: dict[TopicPartition, int] = {}
        for batches in pending:
            for tp, part in batches.items():
                first.setdefault(tp, part[0].offset)
        for tp, offset in first.items():
            try:
                self._consumer.seek(tp, offset)
            except (KafkaError, AssertionError, ValueError):
                log.warning("partition %s moved away during retry", tp)

    def stop(self) -> None:
        """Ask the loop to finish after the current batch."""
        self._stopping.set()
