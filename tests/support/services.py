"""Running a Tierflow service as a real child process in a test, and reading a topic back."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.stack.processes import Child, spawn, tail


async def start_service(
    name: str, port: int, env: Mapping[str, str], log_dir: Path, timeout: float = 60.0
) -> Child:
    """Spawn ``python -m services.<name>`` and wait until its /readyz answers 200."""
    child = spawn(
        name,
        [sys.executable, "-m", f"services.{name}"],
        log_dir=log_dir,
        env={**env, f"TIERFLOW_{name.upper()}_PORT": str(port)},
    )
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as client:
        while True:
            if not child.alive():
                raise RuntimeError(f"{name} exited:\n{tail(child.log_path)}")
            try:
                if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                    return child
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                child.stop()
                raise TimeoutError(f"{name} not ready:\n{tail(child.log_path)}")
            await asyncio.sleep(0.2)


async def collect(
    bootstrap: str,
    topic: str,
    match: Callable[[dict[str, Any]], bool],
    *,
    count: int,
    timeout: float = 30.0,
    linger: float = 1.0,
) -> list[dict[str, Any]]:
    """Every message of ``topic`` (from the start) that ``match`` accepts, as parsed JSON.

    Reads until ``count`` matched, then ``linger`` seconds more so extra copies would be seen.
    End offsets are not trusted (the embedded broker under-counts batched records).
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer.force_metadata_update()  # type: ignore[no-untyped-call]
            partitions = consumer.partitions_for_topic(topic) or set()
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        found: list[dict[str, Any]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        stop_at: float | None = None
        while loop.time() < (stop_at or deadline):
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    value = orjson.loads(record.value or b"null")
                    if isinstance(value, dict) and match(value):
                        found.append(value)
            if stop_at is None and len(found) >= count:
                stop_at = loop.time() + linger
        return found
    finally:
        await consumer.stop()
