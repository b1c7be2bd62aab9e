"""Scoring workers as real processes, and the Kafka reads and writes their tests need."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from prometheus_client.parser import text_string_to_metric_families

from shared.stack.processes import Child, spawn, tail
from tests.factories import free_port


def worker_env(
    bootstrap: str,
    database_url: str,
    *,
    app_id: str,
    work_dir: Path,
    partitions: int,
    clock: float | None = None,
    **extra: str,
) -> dict[str, str]:
    """The environment of a scoring worker of app ``app_id`` (its group and changelog)."""
    env = {
        "TIERFLOW_KAFKA_BOOTSTRAP": bootstrap,
        "TIERFLOW_DATABASE_URL": database_url,
        "TIERFLOW_SCORING_APP_ID": app_id,
        "TIERFLOW_SCORING_PROFILES_GROUP": f"{app_id}-profiles",
        "TIERFLOW_TOPIC_PARTITIONS": str(partitions),
        "TIERFLOW_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "TIERFLOW_KAFKA_REBALANCE_TIMEOUT_MS": "3000",
        "TIERFLOW_LOG_LEVEL": "WARNING",
        "TIERFLOW_SCORING_TIMER_INTERVAL": "0.2",
        **extra,
    }
    if clock is not None:
        clock_file = work_dir / f"{app_id}.clock"
        env["TIERFLOW_SCORING_CLOCK_FILE"] = str(clock_file)
        set_clock(env, clock)
    return env


def set_clock(env: dict[str, str], now: float) -> None:
    """Move the workers' clock (they re-read the file on every look at the time). The file is
    replaced, never rewritten in place: a worker that read it between the truncation and the
    write crashed on an empty file (a CI run of the journey test)."""
    clock_file = Path(env["TIERFLOW_SCORING_CLOCK_FILE"])
    written = clock_file.with_name(f"{clock_file.name}.new")
    written.write_text(str(now))
    written.replace(clock_file)


class Worker:
    """One scoring worker process on its own port, and its own data directory unless ``env``
    names one (then every worker reopens it, as a restarted pod does its volume)."""

    def __init__(
        self, name: str, env: dict[str, str], work_dir: Path, module: str = "services.scoring"
    ) -> None:
        self.port = free_port()
        data_dir = Path(env.get("TIERFLOW_SCORING_DATA_DIR") or work_dir / name)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.url = f"http://127.0.0.1:{self.port}"
        self.child: Child = spawn(
            name,
            [sys.executable, "-m", module],
            log_dir=work_dir,
            env={
                **env,
                "TIERFLOW_SCORING_PORT": str(self.port),
                "TIERFLOW_SCORING_DATA_DIR": str(data_dir),
            },
        )

    async def ready(self, timeout: float = 60.0) -> None:
        """Wait until /readyz answers 200 (assigned partitions, tables recovered)."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2) as client:
            while time.monotonic() < deadline:
                if not self.child.alive():
                    raise RuntimeError(f"worker exited:\n{tail(self.child.log_path)}")
                try:
                    if (await client.get(f"{self.url}/readyz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        raise TimeoutError(f"worker not ready:\n{tail(self.child.log_path)}")

    async def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples named ``name`` on /metrics that carry ``labels`` (a counter's
        name with its ``_total``, or a gauge's)."""
        async with httpx.AsyncClient(timeout=5) as client:
            exposition = (await client.get(f"{self.url}/metrics")).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(exposition)
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )

    def kill(self) -> None:
        """kill -9: no shutdown, no commit, no leaving the group."""
        self.child.process.kill()
        self.child.process.wait(10)
        self.child.stop()

    def stop(self) -> None:
        """A graceful stop (SIGTERM)."""
        self.child.stop()


async def produce(
    bootstrap: str,
    topic: str,
    items: Sequence[tuple[bytes, bytes]],
    *,
    pace_s: float = 0.0,
    hurry: asyncio.Event | None = None,
) -> None:
    """Send (key, value) pairs in order and wait for every acknowledgement; ``pace_s`` apart
    (the rest at once when ``hurry`` is set)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1)
    await producer.start()
    try:
        futures = []
        for key, value in items:
            futures.append(await producer.send(topic, value, key=key))
            if pace_s and not (hurry is not None and hurry.is_set()):
                await asyncio.sleep(pace_s)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_until(
    bootstrap: str,
    topic: str,
    done: Callable[[list[ConsumerRecord[bytes, bytes]]], bool],
    *,
    keep: Callable[[ConsumerRecord[bytes, bytes]], bool] = lambda _: True,
    timeout: float = 60.0,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read ``topic`` from the beginning until ``done(kept records)`` or the timeout."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    kept: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + timeout
        while not done(kept) and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=300, max_records=5000)
            kept += [r for part in batches.values() for r in part if keep(r)]
    finally:
        await consumer.stop()
    return kept
