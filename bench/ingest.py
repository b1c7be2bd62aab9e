"""Ingest throughput against the embedded broker, as ratios to the raw producer ceiling.

Run: ``make bench-ingest`` (or ``python -m bench.ingest --seconds 10``). Prints:
the plain aiokafka producer's acked msg/s (the ceiling), the batch API's Kafka-acked events/s,
and single-event requests/s with p50/p99 latency — one ingest process, all in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys

import orjson

from bench.harness import CpuMeter, embedded_infra, http_load, post, producer_ceiling
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


def batch_request(size: int) -> object:
    """POST /v1/batch with ``size`` events."""

    def build(n: int) -> bytes:
        events = [track(n * size + i) for i in range(size)]
        return post("/v1/batch", orjson.dumps({"batch": events}), AUTH)

    return build


async def run(seconds: float, batch_size: int, single_conns: int, batch_conns: int) -> None:
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
        port = ingest.port
        meter = CpuMeter(
            {
                "ingest": ingest.child.process.pid,
                "broker": stack.children[0].process.pid,
                "load": os.getpid(),
            }
        )
        try:
            build = batch_request(batch_size)
            assert callable(build)
            print(f"batch API ({batch_size}/request, {batch_conns} connections) ...", flush=True)
            meter.start()
            batched = await http_load(port, build, connections=batch_conns, seconds=seconds)
            print(f"  CPU: {meter.stop()}")
            print(f"single-event API ({single_conns} connections) ...", flush=True)
            meter.start()
            single = await http_load(
                port, single_request, connections=single_conns, seconds=seconds
            )
            print(f"  CPU: {meter.stop()}")
        finally:
            ingest.stop()

    batch_events = batched.rate() * batch_size
    rows = [
        ("raw producer ceiling", f"{ceiling:,.0f} msg/s", "1.00", ""),
        (
            "batch API, Kafka-acked",
            f"{batch_events:,.0f} events/s",
            f"{batch_events / ceiling:.2f}",
            f"p50 {batched.percentile(0.5):.1f} ms, p99 {batched.percentile(0.99):.1f} ms "
            f"per {batch_size}-event request",
        ),
        (
            "single-event API",
            f"{single.rate():,.0f} req/s",
            f"{single.rate() / ceiling:.2f}",
            f"p50 {single.percentile(0.5):.2f} ms, p99 {single.percentile(0.99):.2f} ms",
        ),
    ]
    print()
    print("| measure | throughput | ratio to ceiling | latency |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    other = {s: n for s, n in (batched.statuses + single.statuses).items() if s >= 300}
    if other:
        print(f"\nnon-2xx responses: {other}", file=sys.stderr)


def main() -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--single-connections", type=int, default=32)
    parser.add_argument("--batch-connections", type=int, default=4)
    args = parser.parse_args()
    asyncio.run(run(args.seconds, args.batch_size, args.single_connections, args.batch_connections))


if __name__ == "__main__":
    main()
