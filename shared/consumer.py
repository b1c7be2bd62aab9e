"""An at-least-once batch consumer loop: handle a poll batch, then commit exactly its offsets."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Histogram

from shared.metrics import LATENCY_BUCKETS

log = logging.getLogger(__name__)

Records = Sequence[ConsumerRecord[bytes, bytes]]
BatchHandler = Callable[[Records], Awaitable[None]]

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


class BatchConsumer:
    """Owns a consumer: polls, hands each batch to ``handler``, commits only after it returns.

    A handler that raises leaves the offsets uncommitted; the batch is re-read from its first
    offsets after a backoff, so handlers must be idempotent (they dedup by event id).
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        handler: BatchHandler,
        *,
        group: str,
        max_records: int = 500,
    ) -> None:
        self._consumer = consumer
        self._handler = handler
        self._group = group
        self._max_records = max_records
        self._stopping = asyncio.Event()
        self.joined = False

    async def run(self) -> None:
        """Poll and handle until :meth:`stop` is called."""
        backoff = 0.2
        while not self._stopping.is_set():
            batches = await self._consumer.getmany(timeout_ms=250, max_records=self._max_records)
            self.joined = True
            if not batches:
                continue
            records = [record for part in batches.values() for record in part]
            started = asyncio.get_running_loop().time()
            try:
                await self._handler(records)
                await self._consumer.commit(
                    {tp: part[-1].offset + 1 for tp, part in batches.items()}
                )
                backoff = 0.2
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception:
                BATCH_FAILURES.labels(self._group).inc()
                log.exception("batch failed; re-reading it", extra={"group": self._group})
                self._rewind(batches)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            RECORDS.labels(self._group).inc(len(records))
            BATCH_SECONDS.labels(self._group).observe(asyncio.get_running_loop().time() - started)

    def _rewind(self, batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        for tp, part in batches.items():
            try:
                self._consumer.seek(tp, part[0].offset)
            except (KafkaError, AssertionError, ValueError):
                log.warning("partition %s moved away during retry", tp)

    def stop(self) -> None:
        """Ask the loop to finish after the current batch."""
        self._stopping.set()
