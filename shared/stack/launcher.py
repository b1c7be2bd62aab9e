"""Starting and stopping the whole embedded stack, in order, from one process."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.kafka import create_topics, wait_for_broker
from shared.migrations import migrate
from shared.settings import CommonSettings
from shared.stack.broker import port_open, start_broker
from shared.stack.postgres import start_postgres
from shared.stack.processes import Child, StackFailed, spawn, tail

log = logging.getLogger(__name__)

SERVICES = ("ingest", "identity", "scoring", "automation")
TANSU_TIMEOUTS = {
    "TIERFLOW_KAFKA_SESSION_TIMEOUT_MS": "6000",
    "TIERFLOW_KAFKA_REBALANCE_TIMEOUT_MS": "3000",
}


class StackSettings(BaseSettings):
    """What the launcher starts; a set Kafka or database URL replaces the embedded one."""

    model_config = SettingsConfigDict(env_prefix="TIERFLOW_", extra="ignore")

    kafka_bootstrap: str | None = None
    database_url: str | None = None
    webhook_base_url: str | None = None
    webhook_secret: str | None = None
    admin_token: str | None = None
    dev_write_key: str = "dev-write-key"
    stack_broker_port: int = 9092
    stack_postgres_port: int = 5433
    stack_sink_port: int = 8090
    stack_dir: Path | None = Field(default=None, description="Work dir; a temp dir when unset.")
    ingest_port: int = 8080
    identity_port: int = 8081
    scoring_port: int = 8082
    automation_port: int = 8083
    topic_partitions: int = 6


@dataclass
class Stack:
    """A running stack: its children (in start order), URLs and the env the services got."""

    work_dir: Path
    env: dict[str, str]
    urls: dict[str, str]
    children: list[Child] = field(default_factory=list)
    owns_work_dir: bool = True

    def stop(self) -> None:
        """Stop children in reverse start order (services before Postgres and the broker)."""
        for child in reversed(self.children):
            child.stop()
        if self.owns_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def failed(self) -> Child | None:
        """The first child that exited on its own, if any."""
        return next((c for c in self.children if not c.alive()), None)


def _new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def check_ports(settings: StackSettings) -> None:
    """Refuse to start, naming the setting to change, when a port the stack binds is taken
    (before anything starts, rather than as a child's log tail half-way through)."""
    wanted = {
        "TIERFLOW_INGEST_PORT": settings.ingest_port,
        "TIERFLOW_IDENTITY_PORT": settings.identity_port,
        "TIERFLOW_SCORING_PORT": settings.scoring_port,
        "TIERFLOW_AUTOMATION_PORT": settings.automation_port,
    }
    if settings.kafka_bootstrap is None:
        wanted["TIERFLOW_STACK_BROKER_PORT"] = settings.stack_broker_port
    if settings.database_url is None:
        wanted["TIERFLOW_STACK_POSTGRES_PORT"] = settings.stack_postgres_port
    if settings.webhook_base_url is None:
        wanted["TIERFLOW_STACK_SINK_PORT"] = settings.stack_sink_port
    for name, port in wanted.items():
        if port_open("127.0.0.1", port):
            raise StackFailed(f"port {port} is taken; set {name} to a free port")


def start_infrastructure(settings: StackSettings, stack: Stack) -> None:
    """Start the embedded broker and Postgres unless real ones were configured."""
    logs = stack.work_dir / "logs"
    if settings.kafka_bootstrap is None:
        stack.children.append(start_broker(settings.stack_broker_port, logs))
        stack.env["TIERFLOW_KAFKA_BOOTSTRAP"] = f"127.0.0.1:{settings.stack_broker_port}"
        stack.env["TIERFLOW_KAFKA_IDEMPOTENCE"] = "false"
        # Tansu needs short group timeouts (ARCHITECTURE, "Known facts"); a real Kafka keeps
        # the services' defaults, and a value the user set wins either way
        for name, value in TANSU_TIMEOUTS.items():
            if name not in os.environ:
                stack.env[name] = value
    else:
        stack.env["TIERFLOW_KAFKA_BOOTSTRAP"] = settings.kafka_bootstrap
    if settings.database_url is None:
        port = settings.stack_postgres_port
        stack.children.append(start_postgres(stack.work_dir / "pgdata", port, logs))
        stack.env["TIERFLOW_DATABASE_URL"] = (
            f"postgresql+asyncpg://postgres@127.0.0.1:{port}/tierflow"
        )
    else:
        stack.env["TIERFLOW_DATABASE_URL"] = settings.database_url
    stack.urls["kafka"] = stack.env["TIERFLOW_KAFKA_BOOTSTRAP"]
    stack.urls["postgres"] = stack.env["TIERFLOW_DATABASE_URL"]


async def prepare(stack: Stack, partitions: int) -> None:
    """Migrations and topics, against whatever infrastructure the stack uses."""
    common = CommonSettings(
        kafka_bootstrap=stack.env["TIERFLOW_KAFKA_BOOTSTRAP"],
        database_url=stack.env["TIERFLOW_DATABASE_URL"],
        topic_partitions=partitions,
    )
    await wait_for_broker(common, timeout=30)
    await asyncio.to_thread(migrate, common)
    await create_topics(common)


def start_services(settings: StackSettings, stack: Stack) -> None:
    """Start the sink (when no webhook URL is set) and the four services as child processes."""
    logs = stack.work_dir / "logs"
    env = stack.env
    env.setdefault("TIERFLOW_WEBHOOK_SECRET", settings.webhook_secret or _new_secret())
    env.setdefault("TIERFLOW_ADMIN_TOKEN", settings.admin_token or secrets.token_urlsafe(18))
    env["TIERFLOW_DEV_WRITE_KEY"] = settings.dev_write_key
    env["TIERFLOW_TOPIC_PARTITIONS"] = str(settings.topic_partitions)
    if "TIERFLOW_SCORING_DATA_DIR" not in os.environ:
        env["TIERFLOW_SCORING_DATA_DIR"] = str(stack.work_dir / "scoring")
    if settings.webhook_base_url is None:
        sink_port = settings.stack_sink_port
        env["TIERFLOW_WEBHOOK_BASE_URL"] = f"http://127.0.0.1:{sink_port}/hooks"
        stack.children.append(
            spawn(
                "sink",
                [sys.executable, "-m", "shared.stack.sink"],
                log_dir=logs,
                env={**env, "TIERFLOW_SINK_PORT": str(sink_port)},
            )
        )
        stack.urls["sink"] = f"http://127.0.0.1:{sink_port}/deliveries"
    else:
        env["TIERFLOW_WEBHOOK_BASE_URL"] = settings.webhook_base_url
    ports = {
        "ingest": settings.ingest_port,
        "identity": settings.identity_port,
        "scoring": settings.scoring_port,
        "automation": settings.automation_port,
    }
    for name in SERVICES:
        env[f"TIERFLOW_{name.upper()}_PORT"] = str(ports[name])
        stack.urls[name] = f"http://127.0.0.1:{ports[name]}"
    env["TIERFLOW_IDENTITY_SCORING_URL"] = stack.urls["scoring"]
    for name in SERVICES:
        stack.children.append(
            spawn(name, [sys.executable, "-m", f"services.{name}"], log_dir=logs, env=env)
        )


async def wait_ready(stack: Stack, timeout: float = 90.0) -> None:
    """Poll every service's /readyz until all answer 200; fail fast if one exits."""
    deadline = time.monotonic() + timeout
    pending = set(SERVICES)
    async with httpx.AsyncClient(timeout=2) as client:
        while pending:
            dead = stack.failed()
            if dead is not None:
                raise StackFailed(f"{dead.name} exited during start:\n{tail(dead.log_path)}")
            for name in sorted(pending):
                try:
                    response = await client.get(f"{stack.urls[name]}/readyz")
                except httpx.HTTPError:
                    continue
                if response.status_code == 200:
                    pending.discard(name)
            if time.monotonic() > deadline:
                raise StackFailed(
                    f"not ready after {timeout:.0f}s: {', '.join(sorted(pending))}"
                    f" (logs in {stack.work_dir / 'logs'})"
                )
            await asyncio.sleep(0.3)


async def start_stack(settings: StackSettings, *, demo: bool) -> Stack:
    """Start everything and wait until every service is ready; the caller must ``stop()``."""
    check_ports(settings)
    owns = settings.stack_dir is None
    work_dir = Path(tempfile.mkdtemp(prefix="tierflow-")) if owns else settings.stack_dir
    assert work_dir is not None
    (work_dir / "logs").mkdir(parents=True, exist_ok=True)
    stack = Stack(work_dir=work_dir, env={}, urls={}, owns_work_dir=owns)
    try:
        start_infrastructure(settings, stack)
        await prepare(stack, settings.topic_partitions)
        start_services(settings, stack)
        await wait_ready(stack)
        if demo:
            stack.children.append(
                spawn(
                    "demo",
                    [sys.executable, "-m", "shared.stack.demo"],
                    log_dir=work_dir / "logs",
                    env={**stack.env, "TIERFLOW_DEMO_INGEST_URL": stack.urls["ingest"]},
                )
            )
    except BaseException:
        stack.stop()
        raise
    return stack
