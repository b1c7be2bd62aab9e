"""What every benchmark shares: embedded infrastructure, the raw ceilings, a lean HTTP load
generator and latency summaries. Numbers are printed, never asserted."""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from shared.kafka import send_grouped
from shared.stack.launcher import Stack, StackSettings, prepare, start_infrastructure
from tests.factories import free_port


def box_reference() -> str:
    """Two fixed CPython workloads, printed before a bench's numbers so that runs on different
    days or machines can be compared: the shared 2-core boxes have differed by more than 2x, and
    not evenly (scoring and ingest touch scattered objects, whose cost varies most).

    ``interpreter``: ns per iteration of a loop of integer arithmetic; ``scattered``: ns per
    read of a field from 1,000,000 small dicts in random order (cache and TLB misses)."""
    count = 2_000_000
    started = time.perf_counter()
    total = 0
    for n in range(count):
        total += n * n % 7
    interpreter = (time.perf_counter() - started) / count * 1e9
    people = [{"n": n} for n in range(1_000_000)]
    order = list(range(len(people)))
    random.Random(7).shuffle(order)
    started = time.perf_counter()
    total = sum(people[n]["n"] for n in order)
    scattered = (time.perf_counter() - started) / len(order) * 1e9
    return (
        f"box reference: interpreter {interpreter:.1f} ns/iteration, "
        f"scattered {scattered:.1f} ns/read"
    )


@contextlib.asynccontextmanager
async def embedded_infra(partitions: int = 6) -> AsyncIterator[Stack]:
    """Tansu + embedded Postgres on free ports, migrated, with topics; stopped on exit."""
    work_dir = Path(tempfile.mkdtemp(prefix="tierflow-bench-"))
    (work_dir / "logs").mkdir()
    settings = StackSettings(stack_broker_port=free_port(), stack_postgres_port=free_port())
    stack = Stack(work_dir=work_dir, env={}, urls={})
    try:
        start_infrastructure(settings, stack)
        await prepare(stack, partitions=partitions)
        yield stack
    finally:
        stack.stop()


async def producer_ceiling(
    bootstrap: str, topic: str, seconds: float, records: Sequence[tuple[bytes, bytes]]
) -> float:
    """Messages/s the plain aiokafka producer gets acked (acks=all): ``records`` (key, value),
    built before the clock starts, sent again and again as one batch per partition
    (``create_batch``/``send_batch``), all of them in flight at a time.

    ``send()`` per message was always below a third of this in every recorded run, so one batch
    per partition is the honest ceiling.
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=2, max_batch_size=512 * 1024
    )
    await producer.start()
    try:
        sent = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            await asyncio.gather(*await send_grouped(producer, topic, records))
            sent += len(records)
        return sent / (time.perf_counter() - started)
    finally:
        await producer.stop()


async def consumer_ceiling(bootstrap: str, topic: str, limit: int) -> tuple[float, int]:
    """Messages/s a plain aiokafka consumer reads and parses with orjson (from the start)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])
        ]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        read = 0
        started = time.perf_counter()
        idle = 0
        while read < limit and idle < 5:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            if not batches:
                idle += 1
                continue
            idle = 0
            for records in batches.values():
                for record in records:
                    orjson.loads(record.value or b"null")
                read += len(records)
        return read / (time.perf_counter() - started), read
    finally:
        await consumer.stop()


@dataclass
class LoadResult:
    """Responses by status and each 2xx latency (seconds)."""

    seconds: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    @property
    def ok(self) -> int:
        """2xx responses."""
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    def rate(self) -> float:
        """2xx responses per second."""
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        """A latency percentile in milliseconds."""
        if len(self.latencies) < 2:
            return float("nan")
        return statistics.quantiles(self.latencies, n=1000)[round(q * 1000) - 1] * 1000


async def http_load(
    port: int,
    make_request: Callable[[int], bytes],
    *,
    connections: int,
    seconds: float,
    warmup: float = 1.0,
    meter: CpuMeter | None = None,
) -> LoadResult:
    """Keep-alive connections posting requests back to back; counts only after ``warmup``.

    A raw asyncio client: httpx would spend more CPU than the server it measures on 2 cores.
    ``meter``, when given, measures CPU over the counted interval only.
    """
    result = LoadResult()
    counter = iter(range(10**12))
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from = start + warmup
    stop_at = measure_from + seconds
    if meter is not None:
        loop.call_at(measure_from, meter.start)

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while (now := loop.time()) < stop_at:
                request = make_request(next(counter))
                began = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                if now >= measure_from:
                    status = int(head[9:12])
                    result.statuses[status] += 1
                    if 200 <= status < 300:
                        result.latencies.append(time.perf_counter() - began)
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    result.seconds = loop.time() - measure_from
    if meter is not None:
        meter.stop()
    return result


def post(path: str, body: bytes, authorization: str) -> bytes:
    """An HTTP/1.1 keep-alive POST, as bytes."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: {authorization}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


class CpuMeter:
    """CPU seconds used by named processes between ``start()`` and ``stop()``."""

    def __init__(self, pids: dict[str, int], *, with_children: tuple[str, ...] = ()) -> None:
        import psutil

        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._with_children = with_children
        self._begin: dict[str, float] = {}
        self._started = time.perf_counter()
        self.used: dict[str, float] = {}
        self.wall = 0.0

    def _now(self) -> dict[str, float]:
        """User+system seconds of each process, plus its children's where asked (Postgres
        backends are children of the postmaster)."""
        times: dict[str, float] = {}
        for name, proc in self._procs.items():
            total = sum(proc.cpu_times()[:2])
            children = proc.children(recursive=True) if name in self._with_children else []
            for child in children:
                try:
                    total += sum(child.cpu_times()[:2])
                except Exception:  # a child that exited meanwhile has no times to add
                    continue
            times[name] = total
        return times

    def start(self) -> None:
        """Remember the current CPU times."""
        self._begin = self._now()
        self._started = time.perf_counter()

    def stop(self) -> str:
        """CPU seconds per process since ``start()``, as a short text."""
        end = self._now()
        self.used = {n: end[n] - self._begin[n] for n in end}
        self.wall = time.perf_counter() - self._started
        return ", ".join(f"{n} {s:.1f}s" for n, s in self.used.items())

    def shares(self) -> str:
        """The last interval's CPU per process as a share of one core, e.g. ``ingest 97%``."""
        return ", ".join(f"{n} {s / self.wall:.0%}" for n, s in self.used.items())
