"""Ingest throughput against the embedded broker, as ratios to the raw producer ceiling.

Run: ``make bench-ingest`` (or ``python -m bench.ingest --seconds 10``). Prints:
the plain aiokafka producer's acked msg/s (the ceiling: the very records ingest publishes for
these events, built before the clock starts), the batch API's Kafka-acked events/s
at 4 connections and at 20 (the ceiling's 2,000 events in flight), and single-event requests/s
with p50/p99 latency — one ingest process, all in one run — plus each phase's CPU by process
(ingest, broker, this load generator) as a share of one core, and ingest's µs per event.

The ceiling is measured before the first phase and after every phase, and each phase is
compared with the mean of the two around it: the embedded broker keeps every record in memory
and slows as it fills (the same producer lost up to 29% of its rate over six 8-second
rounds, and kept it when each round's topic was deleted), so a ceiling measured once, first,
is one the later phases never had.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from bench.harness import (
    CpuMeter,
    LoadResult,
    box_reference,
    embedded_infra,
    http_load,
    post,
    producer_ceiling,
)
from services.ingest.envelopes import Request, convert
from services.ingest.sources import ensure_source
from shared.db import build_engine, build_sessionmaker
from shared.settings import CommonSettings
from shared.topics import EVENTS_RAW
from tests.support.services import start_service

WRITE_KEY = "wk_bench"
AUTH = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()


def track(n: int) -> dict[str, object]:
    """A typical track call (~300 bytes)."""
    return {
        "type": "track",
        "userId": f"user-{n % 5000}",
        "event": "Product Viewed",
        "messageId": f"bench-{n}",
        "properties": {"sku": f"sku-{n % 977}", "price": 49.9, "path": "/products/x"},
        "timestamp": "2026-11-23T12:00:00Z",
    }


SENT_AT = "2026-11-23T12:00:01Z"
"""Every SDK's batch says when it was sent: its events' times are corrected by it."""


def envelope_records(count: int) -> list[tuple[bytes, bytes]]:
    """The Kafka records ingest publishes for ``track(0..count-1)`` in a batch: the ceiling
    sends the same keys and bytes."""
    sent_at = datetime.fromisoformat(SENT_AT)
    request = Request("bench", datetime.now(UTC), 32 * 1024, sent_at=sent_at)
    return convert([track(n) for n in range(count)], request).records


TRACK_JSON = (
    b'{"type":"track","userId":"user-%d","event":"Product Viewed","messageId":"bench-%d",'
    b'"properties":{"sku":"sku-%d","price":49.9,"path":"/products/x"},'
    b'"timestamp":"2026-11-23T12:00:00Z"}'
)
"""``orjson.dumps(track(n))`` as a byte template: the load generator shares the box with the
server it measures, and filling a template costs a fifth of building and serialising dicts."""


def track_json(n: int) -> bytes:
    """The JSON of ``track(n)``."""
    return TRACK_JSON % (n % 5000, n, n % 977)


def check_templates() -> None:
    """Refuse to run if the template and ``track`` ever disagree."""
    for n in (0, 1, 976, 4999, 5000, 123_456_789):
        if track_json(n) != orjson.dumps(track(n)):
            raise RuntimeError(f"TRACK_JSON differs from track({n})")


def single_request(n: int) -> bytes:
    """POST /v1/track with one event."""
    return post("/v1/track", track_json(n), AUTH)


def batch_request(size: int) -> Callable[[int], bytes]:
    """POST /v1/batch with ``size`` events and ``sentAt``, as an SDK sends them."""
    tail = b'],"sentAt":"' + SENT_AT.encode() + b'"}'

    def build(n: int) -> bytes:
        events = b",".join([track_json(n * size + i) for i in range(size)])
        return post("/v1/batch", b'{"batch":[' + events + tail, AUTH)

    return build


@dataclass
class Phase:
    """One measured load: what was sent, what came back, and the CPU it took."""

    name: str
    result: LoadResult
    unit: str
    per_request: int
    cpu: dict[str, float]
    shares: str
    ceilings: tuple[float, float] = (0.0, 0.0)
    """The raw producer's msg/s just before and just after this phase."""

    @property
    def rate(self) -> float:
        """Units (events or requests) per second."""
        return self.result.rate() * self.per_request

    @property
    def ratio(self) -> float:
        """The rate as a share of the mean of the ceilings around it."""
        return self.rate / (sum(self.ceilings) / 2)

    def cpu_line(self) -> str:
        """CPU by process as a share of one core, and ingest's CPU per unit."""
        per_unit = self.cpu["ingest"] / (self.result.ok * self.per_request) * 1e6
        return f"{self.name}: CPU {self.shares}; ingest {per_unit:.1f} µs per {self.unit}"


async def run(seconds: float, batch_size: int, single_conns: int, batch_conns: list[int]) -> None:
    """Measure the batch and single-event paths of one ingest process, each between two
    measurements of the ceiling."""
    check_templates()
    print(box_reference(), flush=True)
    async with embedded_infra() as stack:
        bootstrap = stack.env["TIERFLOW_KAFKA_BOOTSTRAP"]
        settings = CommonSettings(
            kafka_bootstrap=bootstrap, database_url=stack.env["TIERFLOW_DATABASE_URL"]
        )
        engine = build_engine(settings, application_name="bench")
        await ensure_source(
            build_sessionmaker(engine),
            source_id="bench",
            name="bench",
            write_key=WRITE_KEY,
            rate_limit_per_s=10**9,  # the limiter runs, but never refuses
        )
        await engine.dispose()
        records = envelope_records(2000)
        size = sum(len(value) for _, value in records) / len(records)
        env = {**stack.env, "TIERFLOW_DEV_WRITE_KEY": "", "TIERFLOW_LOG_LEVEL": "WARNING"}
        ingest = await start_service("ingest", env, stack.work_dir / "logs")
        meter = CpuMeter(
            {
                "ingest": ingest.child.process.pid,
                "broker": stack.children[0].process.pid,
                "load": os.getpid(),
            }
        )

        async def ceiling() -> float:
            rate = await producer_ceiling(bootstrap, EVENTS_RAW.name, seconds, records)
            print(f"  raw producer ceiling: {rate:,.0f} msg/s", flush=True)
            return rate

        async def measure(
            name: str, build: Callable[[int], bytes], conns: int, unit: str, per: int
        ) -> Phase:
            print(f"{name} ...", flush=True)
            result = await http_load(
                ingest.port, build, connections=conns, seconds=seconds, meter=meter
            )
            phase = Phase(name, result, unit, per, dict(meter.used), meter.shares())
            print(f"  {phase.cpu_line()}", flush=True)
            return phase

        plan: list[tuple[str, Callable[[int], bytes], int, str, int]] = [
            (
                f"batch API ({batch_size}/request, {conns} connections)",
                batch_request(batch_size),
                conns,
                "event",
                batch_size,
            )
            for conns in batch_conns
        ]
        plan.append(
            (
                f"single-event API ({single_conns} connections)",
                single_request,
                single_conns,
                "request",
                1,
            )
        )
        print(
            f"raw aiokafka producer (acks=all, ingest's own {size:.0f}-B envelopes, prebuilt, "
            f"one batch per partition, {len(records):,} in flight) for {seconds:.0f}s, before "
            "the first phase and after each one ...",
            flush=True,
        )
        phases: list[Phase] = []
        try:
            before = await ceiling()
            for step in plan:
                phase = await measure(*step)
                after = await ceiling()
                phase.ceilings = (before, after)
                phases.append(phase)
                before = after
        finally:
            ingest.stop()
    _report(phases, batch_size)


def _report(phases: list[Phase], batch_size: int) -> None:
    rows = []
    for phase in phases:
        result = phase.result
        if phase.per_request == 1:
            latency = f"p50 {result.percentile(0.5):.2f} ms, p99 {result.percentile(0.99):.2f} ms"
        else:
            latency = (
                f"p50 {result.percentile(0.5):.1f} ms, p99 {result.percentile(0.99):.1f} ms "
                f"per {batch_size}-event request"
            )
        unit = "events/s" if phase.unit == "event" else "req/s"
        rows.append(
            (
                f"{phase.name}" + (", Kafka-acked" if phase.unit == "event" else ""),
                f"{phase.rate:,.0f} {unit}",
                " / ".join(f"{c:,.0f}" for c in phase.ceilings),
                f"{phase.ratio:.2f}",
                latency,
            )
        )
    print()
    print("| measure | throughput | raw ceiling before / after | ratio to their mean | latency |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    for phase in phases:
        print(phase.cpu_line())
    statuses: Counter[int] = Counter()
    for phase in phases:
        statuses.update(phase.result.statuses)
    other = {s: n for s, n in statuses.items() if s >= 300}
    if other:
        print(f"\nnon-2xx responses: {other}", file=sys.stderr)


def main() -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--single-connections", type=int, default=32)
    parser.add_argument(
        "--batch-connections",
        type=int,
        nargs="+",
        default=[4, 20],
        help="one batch phase per value; 20 x 100 events is the ceiling's 2,000 in flight",
    )
    args = parser.parse_args()
    asyncio.run(run(args.seconds, args.batch_size, args.single_connections, args.batch_connections))


if __name__ == "__main__":
    main()
