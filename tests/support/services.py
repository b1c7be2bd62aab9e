"""Running a Tierflow service as a real child process in a test, and reading a topic back."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.stack.broker import start_broker
from shared.stack.processes import Child, spawn, tail
from tests.factories import free_port
from tests.support.tcp_proxy import TcpProxy


@dataclass
class Service:
    """A service child process and the port it serves on."""

    child: Child
    port: int

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop it (SIGTERM, then kill)."""
        self.child.stop()


def service_env(base: Mapping[str, str], **settings: str) -> dict[str, str]:
    """A service's environment: the stack's, short group timeouts (so joins take seconds, see
    the architecture's known facts), a fresh identity consumer group, and ``settings`` given as
    ``NAME=value`` for ``TIERFLOW_NAME``."""
    return {
        **base,
        "TIERFLOW_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "TIERFLOW_KAFKA_REBALANCE_TIMEOUT_MS": "3000",
        "TIERFLOW_IDENTITY_GROUP": f"identity-{uuid.uuid4().hex[:8]}",
        **{f"TIERFLOW_{name.upper()}": value for name, value in settings.items()},
    }


async def start_service(
    name: str, env: Mapping[str, str], log_dir: Path, timeout: float = 60.0
) -> Service:
    """Spawn ``python -m services.<name>`` on a free port; wait until /readyz answers 200.

    Another process may take the free port before the service binds it (tests run beside
    other work); that start is retried on a new port.
    """
    for _ in range(3):
        port = free_port()
        child = spawn(
            name,
            [sys.executable, "-m", f"services.{name}"],
            log_dir=log_dir,
            env={**env, f"TIERFLOW_{name.upper()}_PORT": str(port)},
        )
        if await _ready(child, port, timeout):
            return Service(child, port)
        if "address already in use" not in tail(child.log_path):
            break
    raise RuntimeError(f"{name} did not start:\n{tail(child.log_path)}")


async def _ready(child: Child, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as client:
        while child.alive() and time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):  # not listening yet
                if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                    return True
            await asyncio.sleep(0.2)
    child.stop()
    return False


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
    End offsets are not trusted (the embedded broker under-counts batched records). A message
    that is not JSON matches nothing: the session's topics also hold the poison records other
    tests send on purpose.
    """
    async with reading_from_start(bootstrap, topic) as consumer:
        found: list[dict[str, Any]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        stop_at: float | None = None
        while loop.time() < (stop_at or deadline):
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    try:
                        value = orjson.loads(record.value or b"null")
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(value, dict) and match(value):
                        found.append(value)
            if stop_at is None and len(found) >= count:
                stop_at = loop.time() + linger
        return found


@contextlib.asynccontextmanager
async def reading_from_start(
    bootstrap: str, topic: str, *, from_end: bool = False
) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer of every partition of ``topic`` from its beginning, or with ``from_end`` from
    where it ends now (no group, no commits)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        if from_end:
            await consumer.seek_to_end(*assigned)
            for partition in assigned:  # resolved now, not at the first read
                await consumer.position(partition)
        else:
            await consumer.seek_to_beginning(*assigned)
        yield consumer
    finally:
        await consumer.stop()


@contextlib.asynccontextmanager
async def proxied_broker(log_dir: Path) -> AsyncIterator[TcpProxy]:
    """A broker of its own that clients reach only through a proxy (it advertises the proxy's
    port, so they reconnect there too): cutting or stalling the proxy is a broker outage."""
    broker_port, proxy_port = free_port(), free_port()
    broker = start_broker(broker_port, log_dir, advertised_port=proxy_port)
    proxy = TcpProxy(proxy_port, broker_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.cut()
        broker.stop()
