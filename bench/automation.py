"""Automation delivery throughput and tier-change→delivery latency, as ratios to a raw ceiling.

Run: ``python -m bench.automation --changes 10000``. In one run, against the embedded broker and
Postgres and the stack's webhook sink (a separate process that verifies every signature):
the ceiling is plain httpx posting signed bodies to the same sink with the same concurrency;
then one automation process turns published tier changes into deliveries, and the sink's
receive times give actions/s and p50/p99 latency from publish to delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import sys
import time
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaProducer

from bench.harness import CpuMeter, embedded_infra
from services.automation.playbooks import load_playbooks, plan_actions
from shared.contracts import TierChangeEvent, encode
from shared.stack.launcher import Stack
from shared.stack.processes import spawn
from shared.topics import TIERS_CHANGES
from shared.webhooks import sign_headers
from tests.factories import free_port, make_tier_change
from tests.support.services import start_service

SECRET = "whsec_" + base64.b64encode(b"automation-bench-secret!").decode()
TIERS = ("vip", "growth", "prospect", "at_risk")
CONCURRENCY = 16  # the automation default per endpoint


def change(n: int, run_id: str) -> TierChangeEvent:
    """One tier change of one person."""
    oneid = f"{run_id}-{n:06d}"
    return make_tier_change(
        oneid,
        TIERS[n % len(TIERS)],
        change_id=f"tc-{oneid}",
        total=n % 200,
        model_version="bench",
        event_id=f"e-{n}",
    )


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def raw_ceiling(url: str, count: int, concurrency: int) -> tuple[float, list[float]]:
    """Plain httpx: signed ~400-byte bodies, ``concurrency`` at a time; (req/s, latencies)."""
    body = orjson.dumps({"action_id": "x" * 36, "oneid": "y" * 36, "content": {"t": "z" * 200}})
    latencies: list[float] = []
    queue = iter(range(count))
    async with httpx.AsyncClient(
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    ) as client:

        async def worker() -> None:
            for n in queue:
                headers = {"content-type": "application/json"}
                headers |= sign_headers([SECRET], f"raw-{n}", body)
                started = time.perf_counter()
                response = await client.post(f"{url}/email", content=body, headers=headers)
                response.raise_for_status()
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return count / (time.perf_counter() - started), latencies


async def deliveries(sink: str, client: httpx.AsyncClient, limit: int) -> tuple[int, list[Any]]:
    """How many deliveries the sink verified so far, and the last ``limit`` of them."""
    listing = (await client.get(f"{sink}/deliveries", params={"limit": limit})).json()
    return int(listing["total"]), list(listing["deliveries"])


async def start_sink(stack: Stack) -> tuple[str, int]:
    """The stack's webhook sink on a free port; returns its URL and pid."""
    port = free_port()
    child = spawn(
        "sink",
        [sys.executable, "-m", "shared.stack.sink"],
        log_dir=stack.work_dir / "logs",
        env={"TIERFLOW_SINK_PORT": str(port), "TIERFLOW_WEBHOOK_SECRET": SECRET},
    )
    stack.children.append(child)
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            try:
                if (await client.get(f"{url}/healthz")).status_code == 200:
                    break
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
    return url, child.process.pid


async def flow(
    producer: AIOKafkaProducer,
    sink: str,
    events: list[TierChangeEvent],
    expected: int,
    per_second: float | None,
) -> tuple[float, list[float]]:
    """Publish ``events`` (all at once, or paced) and wait for ``expected`` deliveries of them;
    returns (actions/s from first publish to last delivery, publish→delivery latencies)."""
    published: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=60) as client:
        before, _ = await deliveries(sink, client, 1)
    started = time.time()
    for chunk in range(0, len(events), 100):
        if per_second is not None:
            await asyncio.sleep(max(0.0, started + chunk / per_second - time.time()))
        futures = []
        for event in events[chunk : chunk + 100]:
            published[event.id] = time.time()
            futures.append(
                await producer.send(TIERS_CHANGES.name, encode(event), key=event.subject.encode())
            )
        await asyncio.gather(*futures)
    async with httpx.AsyncClient(timeout=60) as client:
        deadline = time.monotonic() + 900
        while (await deliveries(sink, client, 1))[0] - before < expected:
            if time.monotonic() > deadline:
                raise TimeoutError("deliveries missing")
            await asyncio.sleep(0.5)  # asking for the total only: the sink is being measured
        _, got = await deliveries(sink, client, expected)
    mine = [d for d in got if d["payload"].get("tier_change_id") in published]
    latencies = [d["received_at"] - published[d["payload"]["tier_change_id"]] for d in mine]
    elapsed = max(d["received_at"] for d in mine) - started
    return len(mine) / elapsed, latencies


def immediate(events: list[TierChangeEvent]) -> int:
    """How many actions the default playbooks send at once for these changes."""
    playbooks = load_playbooks()
    return sum(
        1 for e in events for p in plan_actions(e, playbooks) if p.delay.total_seconds() == 0
    )


def summary(latencies: list[float]) -> str:
    """p50/p99/mean in milliseconds."""
    return (
        f"p50 {pct(latencies, 0.5) * 1000:,.0f} ms, p99 {pct(latencies, 0.99) * 1000:,.0f} ms, "
        f"mean {statistics.mean(latencies) * 1000:,.0f} ms"
    )


async def run(count: int, paced: float) -> None:
    """The ceiling, then one automation process: a flood of ``count`` changes, then a paced
    stream at ``paced`` changes/s for latency without a backlog."""
    run_id = f"b{int(time.time())}"
    flood = [change(n, run_id) for n in range(count)]
    steady = [change(n, f"{run_id}p") for n in range(int(paced * 20))]
    async with embedded_infra(partitions=6) as stack:
        sink, sink_pid = await start_sink(stack)
        ceiling, raw, in_flight = 0.0, [0.0], 0
        for concurrency in (CONCURRENCY, CONCURRENCY * 4):  # the faster is the honest ceiling
            rate, latencies = await raw_ceiling(f"{sink}/hooks", 4000, concurrency)
            if rate > ceiling:
                ceiling, raw, in_flight = rate, latencies, concurrency
        print(f"raw ceiling: httpx -> sink, {in_flight} in flight: {ceiling:,.0f} req/s")
        print(f"  request latency {summary(raw)}")
        env = {
            **stack.env,
            "TIERFLOW_WEBHOOK_SECRET": SECRET,
            "TIERFLOW_WEBHOOK_BASE_URL": f"{sink}/hooks",
            "TIERFLOW_ADMIN_TOKEN": "bench",
            "TIERFLOW_KAFKA_SESSION_TIMEOUT_MS": "6000",
            "TIERFLOW_KAFKA_REBALANCE_TIMEOUT_MS": "3000",
            "TIERFLOW_LOG_LEVEL": "WARNING",
        }
        automation = await start_service("automation", env, stack.work_dir / "logs")
        stack.children.append(automation.child)
        meter = CpuMeter({"automation": automation.child.process.pid, "sink": sink_pid})
        producer = AIOKafkaProducer(
            bootstrap_servers=stack.env["TIERFLOW_KAFKA_BOOTSTRAP"], acks="all", linger_ms=2
        )
        await producer.start()
        try:
            meter.start()
            expected = immediate(flood)
            rate, latencies = await flow(producer, sink, flood, expected, None)
            cpu = meter.stop()
            print(
                f"flood: {count:,} tier changes -> {expected:,} deliveries: {rate:,.0f} actions/s"
                f" = {rate / ceiling:.0%} of the raw ceiling; CPU {cpu}"
            )
            print(f"  tier change -> delivery (includes the backlog) {summary(latencies)}")
            _, latencies = await flow(producer, sink, steady, immediate(steady), paced)
            print(f"paced: {paced:.0f} tier changes/s for 20 s, tier change -> delivery")
            print(f"  {summary(latencies)}")
        finally:
            await producer.stop()


def main() -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--changes", type=int, default=10_000, help="size of the flood")
    parser.add_argument("--paced", type=float, default=50, help="changes/s of the paced run")
    args = parser.parse_args()
    asyncio.run(run(args.changes, args.paced))


if __name__ == "__main__":
    main()
