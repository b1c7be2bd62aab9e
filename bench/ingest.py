"""Ingest throughput against the embedded broker, as ratios to the raw producer ceiling.

Run: ``make bench-ingest`` (or ``python -m bench.ingest --seconds 10``). Prints:
the plain aiokafka producer's acked msg/s (the ceiling), the batch API's Kafka-acked events/s
at 4 connections and at 20 (the ceiling's 2,000 events in flight), and single-event requests/s
with p50/p99 latency — one ingest process, all in one run — plus each phase's CPU by process
(ingest, broker, this load generator) as a share of one core, and ingest's µs per event.
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

import orjson

from bench.harness import (
    CpuMeter,
    LoadResult,
    embedded_infra,
    http_load,
    post,
    producer_ceiling,
)
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


def single_request(n: int) -> bytes:
    """POST /v1/track with one event."""
    return post("/v1/track", orjson.dumps(track(n)), AUTH)


def batch_request(size: int) -> Callable[[int], bytes]:
    """POST /v1/batch with ``size`` events."""

    def build(n: int) -> bytes:
        events = [track(n * size + i) for i in range(size)]
        return post("/v1/batch", orjson.dumps({"batch": events}), AUTH)

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

    @property
    def rate(self) -> float:
        """Units (events or requests) per second."""
        return self.result.rate() * self.per_request

    def cpu_line(self) -> str:
        """CPU by process as a share of one core, and ingest's CPU per unit."""
        per_unit = self.cpu["ingest"] / (self.result.ok * self.per_request) * 1e6
        return f"{self.name}: CPU {self.shares}; ingest {per_unit:.1f} µs per {self.unit}"


async def run(seconds: float, batch_size: int, single_conns: int, batch_conns: list[int]) -> None:
    """Measure the ceiling, then the batch and single-event paths of one ingest process."""
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
        print(f"raw aiokafka producer (acks=all, 300 B) for {seconds:.0f}s ...", flush=True)
        per_send = await producer_ceiling(bootstrap, EVENTS_RAW.name, seconds)
        per_batch = await producer_ceiling(bootstrap, EVENTS_RAW.name, seconds, grouped=True)
        ceiling = max(per_send, per_batch)
        print(f"  send() per message {per_send:,.0f}/s, batch per partition {per_batch:,.0f}/s")

        env = {**stack.env, "TIERFLOW_DEV_WRITE_KEY": "", "TIERFLOW_LOG_LEVEL": "WARNING"}
        ingest = await start_service("ingest", env, stack.work_dir / "logs")
        meter = CpuMeter(
            {
                "ingest": ingest.child.process.pid,
                "broker": stack.children[0].process.pid,
                "load": os.getpid(),
            }
        )

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

        try:
            batches = [
                await measure(
                    f"batch API ({batch_size}/request, {conns} connections)",
                    batch_request(batch_size),
                    conns,
                    "event",
                    batch_size,
                )
                for conns in batch_conns
            ]
            single = await measure(
                f"single-event API ({single_conns} connections)",
                single_request,
                single_conns,
                "request",
                1,
            )
        finally:
            ingest.stop()
    _report(ceiling, batches, single, batch_size)


def _report(ceiling: float, batches: list[Phase], single: Phase, batch_size: int) -> None:
    rows = [("raw producer ceiling", f"{ceiling:,.0f} msg/s", "1.00", "")]
    for phase in batches:
        result = phase.result
        rows.append(
            (
                f"{phase.name}, Kafka-acked",
                f"{phase.rate:,.0f} events/s",
                f"{phase.rate / ceiling:.2f}",
                f"p50 {result.percentile(0.5):.1f} ms, p99 {result.percentile(0.99):.1f} ms "
                f"per {batch_size}-event request",
            )
        )
    rows.append(
        (
            single.name,
            f"{single.rate:,.0f} req/s",
            f"{single.rate / ceiling:.2f}",
            f"p50 {single.result.percentile(0.5):.2f} ms, "
            f"p99 {single.result.percentile(0.99):.2f} ms",
        )
    )
    print()
    print("| measure | throughput | ratio to ceiling | latency |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    for phase in [*batches, single]:
        print(phase.cpu_line())
    statuses: Counter[int] = Counter()
    for phase in [*batches, single]:
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
