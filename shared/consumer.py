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

from shared.metrics import LATENCY_BUCKETS

log = logging.getLogger(__name__)

Records = Sequence[ConsumerRecord[bytes, bytes]]
Batches = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
BatchHandler = Callable[[Records], Awaitable[Awaitable[None] | None]]
"""Handles a batch. It may return an awaitable that completes once the batch's outputs are
acknowledged; the batch is committed only after that (see ``settle_ahead``)."""

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
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        handler: BatchHandler,
        *,
        group: str,
        max_records: int = 500,
        settle_ahead: int = 0,
    ) -> None:
        self._consumer = consumer
        self._handler = handler
        self._group = group
        self._max_records = max_records
        self._settle_ahead = settle_ahead
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
                if batches:
                    started = loop.time()
                    records = [record for part in batches.values() for record in part]
                    handled.append(_Handled(batches, await self._handler(records), started))
                while handled and (len(handled) > self._settle_ahead or not batches):
                    await self._settle(handled[0])
                    handled.popleft()
                backoff = 0.2
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception:
                BATCH_FAILURES.labels(self._group).inc()
                log.exception("batch failed; re-reading it", extra={"group": self._group})
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

    async def _settle(self, batch: _Handled) -> None:
        """Wait for a handled batch's outputs, then commit its offsets."""
        if batch.acknowledged is not None:
            await batch.acknowledged
        await self._consumer.commit({tp: part[-1].offset + 1 for tp, part in batch.batches.items()})
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
