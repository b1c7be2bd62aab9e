"""Whole poll batches from Faust's consumer to the scoring loop, without Faust's per-message path.

Faust hands every fetched message to its streams one at a time (two tasks per message in the
fetcher, then conductor, channel queue, stream, event, ack): at scoring's batch sizes that
costs more than scoring itself. Here the fetcher puts each poll's messages, as one list, on a
queue the scoring loop takes from. Everything else stays Faust's: the consumer group and its
assignor, table recovery, offsets committed only up to acked messages, the producer flush
before each commit. A rebalance clears the queue (Faust clears flow-controlled queues and
seeks every partition back to its committed offset before resuming), and the loop drops a
batch fetched before the rebalance: its messages are fetched again. What reaches the loop is
checked for holes (:mod:`services.scoring.continuity`): a partition whose records were skipped
on the way is fetched again from the first one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import faust
from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError
from faust.transport.drivers import aiokafka as kafka_driver
from faust.types import TP, Message
from mode.utils.queues import FlowControlQueue

from services.scoring import metrics
from services.scoring.continuity import Continuity, Mark

log = logging.getLogger(__name__)

QUEUED_POLLS = 8  # polls waiting for the scoring loop at most (backpressure on the fetcher)


@dataclass(frozen=True, slots=True)
class Poll:
    """The messages of one fetch, the consumer generation when the fetch returned, and how far
    every fed partition was read by then."""

    generation: int
    messages: list[Message]
    mark: Mark


class FeedConsumer(kafka_driver.Consumer):  # type: ignore[misc,unused-ignore]  # faust is untyped
    """Faust's aiokafka consumer whose fetcher queues whole polls instead of single messages."""

    async def _drain_messages(self, fetcher: Any) -> None:
        """Faust's fetch loop (read offsets, gaps, commit_every), one queue put per poll of
        the fed topics; other topics (table changelogs) still go through Faust's callback.

        Faust marks skipped offsets as gaps that its commit counts as done (meant for compacted
        topics). On a fed topic a skipped offset is a record not scored: a gap would let a
        commit pass it, so none is marked there, and the hole is fetched again
        (:mod:`services.scoring.continuity`)."""
        app = cast(ScoringApp, self.app)
        read_offset = self._read_offset
        acks_enabled_for = app.topics.acks_enabled_for
        commit_every = self._commit_every
        fed_topics = app.fed_topics
        continuity = app.continuity
        try:
            while not (self._stopped.is_set() or fetcher._stopped.is_set()):
                generation = app.consumer_generation_id
                fed: list[Message] = []
                other: list[Message] = []
                async for tp, message in self.getmany(timeout=1.0):
                    if not (fed or other):
                        # read once the fetch returned, as Faust's getmany does: a fetch can
                        # wait through a whole rebalance and return records from after its seek
                        generation = app.consumer_generation_id
                    offset, last = message.offset, read_offset[tp]
                    if last is not None and offset < last:
                        continue  # already read (Faust drops these too)
                    if message.topic in fed_topics:
                        # no gap marked as done here: a skipped offset is a hole, fetched again
                        fed.append(message)
                    else:
                        if last and offset - last > 1 and acks_enabled_for(message.topic):
                            await self._add_gap(tp, last + 1, offset)
                        other.append(message)
                    read_offset[tp] = offset
                if commit_every is not None and self._n_acked >= commit_every:
                    self._n_acked = 0
                    await self.commit()
                await self._hand_on(Poll(generation, fed, continuity.mark()), other)
        except self.consumer_stopped_errors:
            if not self.transport.app.should_stop:
                raise
        except asyncio.CancelledError:
            if not self.transport.app.should_stop:
                raise

    async def _getmany(self, active_partitions: Any, timeout: float) -> Any:
        """aiokafka's records of one fetch, each fed partition noted as read up to its last
        record before Faust's getmany can drop any (:mod:`services.scoring.continuity`)."""
        records = await super()._getmany(active_partitions, timeout)
        app = cast(ScoringApp, self.app)
        fed_topics, continuity = app.fed_topics, app.continuity
        for tp, batch in records.items():
            if batch and tp.topic in fed_topics:
                continuity.read(tp, batch[-1].offset)
        return records

    async def _hand_on(self, poll: Poll, other: list[Message]) -> None:
        """Changelog records to Faust, the poll to the scoring loop; dropped at a rebalance."""
        if other:
            await self.wait_first(self._deliver(other), self.suspend_flow.wait())
        if poll.messages:
            feed = cast(ScoringApp, self.app).feed
            await self.wait_first(feed.put(poll), self.suspend_flow.wait())
        if not (poll.messages or other):
            await asyncio.sleep(0)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Faust's seek back to the committed offsets, and to the beginning for a fed
        partition with none yet.

        Faust drops what it fetched but did not hand on (records fetched while its flow is
        stopped: a rebalance resumes the partitions before the flow; cleared queues; the
        loop's rolled-back batches) and trusts this seek to fetch it again. aiokafka seeks
        only partitions whose committed offset is above 0 and leaves the others where the
        fetch stopped, so on a partition nobody had committed yet those records were skipped
        for good. Measured: a worker joining a group before its first commit left both
        members without the unflushed events (``tests/crash/test_scoring_rebalance.py``), and
        the restart-at-once crash test lost updates the same way. ``earliest`` is where such
        a partition starts on a fresh assignment too.

        A partition whose position marker (:mod:`services.scoring.positions`) is past its
        committed offset resumes from the marker: committed offsets can be missing or behind
        (expired on Kafka, lagging the flushes after a crash), and read from the beginning
        every event older than a person's last 256 ids counted again.
        The returned offsets include it, so Faust's read and committed offsets start there too.

        aiokafka resets such a partition's position in the background;
        :meth:`verify_event_path` keeps Faust's livelock check away from it meanwhile.
        (Seeking to the beginning offsets directly instead stalled workers for good in 1 of 4
        runs: their positions read 0 and nothing was fetched again.)

        Every fed partition is sought once more after the continuity check restarts from
        these positions. The fetch goes on during this seek (Faust resumes the partitions
        first), so records fetched from Faust's seek above were noted as read before the
        restart forgot it, and the poll holding them did not reach the loop: at the end of a
        partition nothing showed the loss (2 of 7 one-worker notices crash runs left records
        unscored for good, ``docs/scoring.md``).
        """
        committed: Mapping[TP, int] = await super().seek_to_committed()  # None: no commit
        app = cast(ScoringApp, self.app)
        # the beginning is 0 unless retention removed records: then a first hole refetches
        positions = {
            tp: offset if offset is not None and offset > 0 else 0
            for tp, offset in committed.items()
            if tp.topic in app.fed_topics
        }
        marked = {tp: app.resumes_at(tp) for tp in positions}
        ahead = {tp: marked[tp] for tp, offset in positions.items() if marked[tp] > offset}
        if ahead:
            log.info("resuming past the committed offsets by position markers: %s", ahead)
            for tp in ahead:
                committed_at = "missing" if positions[tp] == 0 else "behind"
                metrics.RESUMED_BY_MARKER.labels(tp.topic, committed_at).inc()
        positions.update(ahead)
        app.continuity.restart(positions)
        consumer = self._thread._ensure_consumer()
        for tp, offset in positions.items():
            if offset > 0:
                tp_ = TopicPartition(tp.topic, tp.partition)
                try:
                    await self._thread.call_thread(consumer.seek, tp_, offset)
                except IllegalStateError:  # revoked meanwhile: its next owner seeks it
                    log.info("%s[%d] was revoked before its seek", tp.topic, tp.partition)
        uncommitted = [tp for tp, offset in positions.items() if offset == 0]
        if uncommitted:
            await self._thread.seek_to_beginning(*uncommitted)
        return {**committed, **ahead}

    async def seek_back(self, tp: TP, offset: int) -> None:
        """Fetch ``tp`` again from ``offset``.

        The read offset is set first, so records fetched from ``offset`` are not dropped as
        already read; the seek runs in the consumer's thread, which owns aiokafka's state. A
        partition no longer assigned is left alone: its next owner seeks it to the committed
        offset.
        """
        self._read_offset[tp] = offset if offset else None
        cast(ScoringApp, self.app).continuity.expect(tp, offset)
        thread = self._thread
        seek = thread._ensure_consumer().seek
        try:
            await thread.call_thread(seek, TopicPartition(tp.topic, tp.partition), offset)
        except IllegalStateError:
            log.info("%s[%d] was revoked before it could be fetched again", tp.topic, tp.partition)

    def verify_event_path(self, now: float, tp: TP) -> None:
        """Faust's livelock check of a partition, skipped while aiokafka has no position for
        it (an offset reset under way: :meth:`seek_to_committed`'s, or one after records were
        deleted by retention). Faust reads the position unguarded, and aiokafka's assertion
        crashed a worker (1 of 8 crash runs at 50k events)."""
        consumer = self._thread._ensure_consumer()
        subscription = consumer._subscription.subscription
        assignment = subscription.assignment if subscription is not None else None
        state = (
            assignment.state_value(TopicPartition(tp.topic, tp.partition))
            if assignment is not None
            else None
        )
        if state is not None and state.has_valid_position:
            super().verify_event_path(now, tp)

    def _new_consumer_thread(self) -> FeedConsumerThread:
        return FeedConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _deliver(self, messages: list[Message]) -> None:
        """Faust's own per-message path (changelogs during recovery, standbys)."""
        callback = self.callback
        for message in messages:
            await callback(message)


class FeedConsumerThread(kafka_driver.AIOKafkaConsumerThread):  # type: ignore[misc,unused-ignore]
    """Faust's consumer thread, with the app's fetch wait instead of Faust's fixed 1.5 s.

    On Tansu, records arriving while a fetch waits come back only when the wait ends: with
    1.5 s the event→tier change latency was p50 423 ms, p99 836 ms at 2,000 events/s; with
    100 ms, 172 to 199 ms and 356 to 357 ms (``bench.scoring_throughput``).
    """

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # read by aiokafka when the consumer starts, which is after this
        consumer._fetch_max_wait_ms = cast(ScoringApp, self.app).fetch_max_wait_ms
        return consumer


class FeedTransport(kafka_driver.Transport):  # type: ignore[misc,unused-ignore]  # faust is untyped
    """The aiokafka transport with :class:`FeedConsumer`."""

    Consumer = FeedConsumer


class ScoringApp(faust.App):  # type: ignore[misc,unused-ignore]  # faust is untyped
    """A Faust app whose consumer feeds poll batches to :meth:`batches`."""

    _feed: FlowControlQueue[Poll] | None = None
    _continuity: Continuity | None = None
    fed_topics: frozenset[str] = frozenset()
    """Topics whose polls go to :attr:`feed` (the rest take Faust's per-message path)."""
    fetch_max_wait_ms: int = 1500
    """How long the consumer's fetches wait for records (Faust's own value by default)."""
    resumes_at: Callable[[TP], int] = staticmethod(lambda tp: 0)
    """Where a fed partition resumes by the table's position marker (0: unknown); set by the
    scoring loop, which owns the table."""

    @property
    def feed(self) -> FlowControlQueue[Poll]:
        """Polls waiting for the scoring loop; cleared by Faust's flow control on rebalance."""
        if self._feed is None:
            self._feed = FlowControlQueue(
                maxsize=QUEUED_POLLS, flow_control=self.flow_control, clear_on_resume=True
            )
        return self._feed

    @property
    def continuity(self) -> Continuity:
        """Where each fed partition must continue (set at every seek to the committed offsets)."""
        if self._continuity is None:
            self._continuity = Continuity()
        return self._continuity

    def _new_transport(self) -> Any:
        return FeedTransport(self.conf.broker_consumer, self)

    def current(self, poll: Poll) -> bool:
        """False for a poll fetched before a rebalance, or while one is under way."""
        return poll.generation == self.consumer_generation_id and self.flow_control.is_active()

    async def batches(self, limit: int, idle: float) -> AsyncIterator[Sequence[Message]]:
        """Every queued poll still current, at least one, together up to ``limit`` messages;
        an empty batch when no poll came for ``idle`` seconds."""
        feed = self.feed
        while True:
            if feed.empty():
                try:
                    polls = [await asyncio.wait_for(feed.get(), idle)]
                except TimeoutError:
                    generation = self.consumer_generation_id
                    if self.flow_control.is_active():
                        for tp, offset in self.continuity.behind().items():
                            await self._refetch(tp, offset, generation)
                    yield []
                    continue
            else:
                polls = [feed.get_nowait()]
            size = len(polls[0].messages)
            while size < limit and not feed.empty():
                polls.append(feed.get_nowait())
                size += len(polls[-1].messages)
            generation = self.consumer_generation_id
            current = [poll for poll in polls if self.current(poll)]
            messages, holes = self.continuity.admit([m for poll in current for m in poll.messages])
            # what the fetcher had read by the last poll taken and did not reach the loop with
            # it or before it was dropped on the way: found even while other partitions are busy
            lost = self.continuity.behind(current[-1].mark) if current else {}
            for tp, offset in {**lost, **holes}.items():
                await self._refetch(tp, offset, generation)
            if messages:
                yield messages

    async def _refetch(self, tp: TP, offset: int, generation: int) -> None:
        """Fetch ``tp`` again from the hole at ``offset``, or from its first record when
        retention removed the records from there on.

        Not once a rebalance began since the hole was seen (``generation``): its seek back to
        the committed offsets fetches the records again, and a seek to the hole after it
        would skip what the loop rolled back in between.
        """

        def overtaken() -> bool:
            return generation != self.consumer_generation_id or not self.flow_control.is_active()

        if overtaken():
            return
        consumer = cast(FeedConsumer, self.consumer)
        try:
            start = max(offset, (await consumer.earliest_offsets(tp)).get(tp) or 0)
        except KafkaError:  # the seek alone: aiokafka resets a removed offset to the earliest
            start = offset
        if overtaken():  # the request's round trip may have spanned a rebalance
            return
        if start > offset:
            log.warning(
                "%s[%d]: records %d to %d were removed by retention before they were scored",
                tp.topic,
                tp.partition,
                offset,
                start - 1,
            )
        else:
            log.warning(
                "%s[%d]: records from %d were skipped on the way to the scoring loop; "
                "fetching them again",
                tp.topic,
                tp.partition,
                offset,
            )
        metrics.REFETCHES.labels(tp.topic).inc()
        await consumer.seek_back(tp, start)

    def ack(self, messages: Sequence[Message]) -> None:
        """Mark ``messages`` done: offsets are committed up to the first one not acked."""
        ack = self.consumer.ack
        for message in messages:
            ack(message)
