"""kill -9 the automation worker several times while ~5k tier changes flow on the real broker:
every expected action reaches the receiver, and no idempotency key arrives with two contents."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import signal
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import text

from services.automation.playbooks import load_playbooks, plan_actions
from shared.contracts import TierChangeEvent, encode
from shared.db import build_engine
from shared.settings import CommonSettings
from shared.topics import TIERS_CHANGES
from shared.webhooks import verify
from tests.factories import free_port, make_tier_change
from tests.support.services import Service, start_service

SECRET = "whsec_" + base64.b64encode(b"automation-crash-secret!").decode()
CHANGES = 5000
TIERS = ("vip", "growth", "prospect", "at_risk")


class QuietServer(ThreadingHTTPServer):
    """A connection reset by a killed sender is expected here, not an error to print."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class Receiver:
    """Records, per webhook id, every body digest it got; refuses bad signatures. Its first
    few replies come after the sender's timeout, as from a stalled endpoint: those actions
    arrived but must be retried, with the same id and body."""

    def __init__(self, late_replies: int = 5, late_s: float = 3.0) -> None:
        self.bodies: dict[str, set[str]] = defaultdict(set)
        self.copies: dict[str, int] = defaultdict(int)
        self.bad_signatures = 0
        self.late_replies = late_replies
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers["content-length"])
                body = self.rfile.read(length)
                if len(body) < length:  # the sender was killed mid-request: nothing arrived
                    self.close_connection = True
                    return
                headers = {k.lower(): v for k, v in self.headers.items()}
                ok = verify(SECRET, headers, body)
                late = False
                with receiver.lock:
                    if ok:
                        webhook_id = headers["webhook-id"]
                        receiver.bodies[webhook_id].add(hashlib.sha256(body).hexdigest())
                        receiver.copies[webhook_id] += 1
                        late = receiver.late_replies > 0
                        receiver.late_replies -= late
                    else:
                        receiver.bad_signatures += 1
                if late:
                    time.sleep(late_s)
                self.send_response(200 if ok else 401)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return

        self.server = QuietServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def got(self, ids: set[str]) -> int:
        """How many of ``ids`` arrived at least once."""
        with self.lock:
            return sum(1 for i in ids if i in self.bodies)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    built = Receiver()
    yield built
    built.server.shutdown()


def changes(run_id: str) -> list[TierChangeEvent]:
    """One tier change per person, cycling through the default tiers."""
    events = []
    for n in range(CHANGES):
        oneid = f"{run_id}-{n:05d}"
        events.append(
            make_tier_change(
                oneid,
                TIERS[n % len(TIERS)],
                change_id=f"tc-{oneid}",
                total=n % 200,
                model_version="crash",
                event_id=f"e-{n}",
            )
        )
    return events


async def until(check: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_killed_worker_delivers_every_action_once_per_content(
    settings: CommonSettings, receiver: Receiver, tmp_path: Path
) -> None:
    run_id = uuid.uuid4().hex[:8]
    events = changes(run_id)
    playbooks = load_playbooks()
    expected = {
        p.action_id
        for event in events
        for p in plan_actions(event, playbooks)
        if p.delay.total_seconds() == 0
    }
    env = {
        "TIERFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "TIERFLOW_DATABASE_URL": settings.database_url,
        "TIERFLOW_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "TIERFLOW_KAFKA_REBALANCE_TIMEOUT_MS": "3000",
        "TIERFLOW_WEBHOOK_SECRET": SECRET,
        "TIERFLOW_WEBHOOK_BASE_URL": receiver.url,
        "TIERFLOW_WEBHOOK_TIMEOUT_S": "2",
        "TIERFLOW_DELIVERY_LEASE_S": "4",
        # a reply slower than the timeout on a loaded box schedules a retry: keep it short
        "TIERFLOW_WEBHOOK_BACKOFF_BASE_S": "1",
        "TIERFLOW_WEBHOOK_BACKOFF_CAP_S": "2",
        "TIERFLOW_ADMIN_TOKEN": "crash-admin",
        "TIERFLOW_AUTOMATION_GROUP": f"automation-crash-{run_id}",
        "TIERFLOW_LOG_LEVEL": "WARNING",
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    engine = build_engine(settings, application_name="automation-crash-check")
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    service: Service = await start_service("automation", env, logs)
    kills = 0
    started = time.monotonic()

    async def publish(batch: list[TierChangeEvent]) -> None:
        futures = [
            await producer.send(TIERS_CHANGES.name, encode(e), key=e.data.oneid.encode())
            for e in batch
        ]
        await asyncio.gather(*futures)

    async def kill_and_restart(share: float) -> None:
        nonlocal service, kills
        await until(lambda: receiver.got(expected) >= share * len(expected), f"{share:.0%}", 120)
        os.kill(service.child.process.pid, signal.SIGKILL)
        service.child.process.wait(10)
        kills += 1
        service = await start_service("automation", env, logs)

    async def statuses() -> dict[str, int]:
        async with engine.connect() as connection:
            rows = await connection.execute(
                text(
                    "SELECT status, count(*) FROM automation.actions "
                    "WHERE action_id = ANY(:ids) GROUP BY status"
                ),
                {"ids": sorted(expected)},
            )
            return dict(rows.all())

    async def all_sent(timeout: float) -> dict[str, int]:
        """Wait until Postgres records every expected action as sent. A delivery whose reply
        came too late was retried (same id and body), so the receiver can be ahead of it."""
        deadline = time.monotonic() + timeout
        while (found := await statuses()) != {"sent": len(expected)}:
            if time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.5)
        return found

    try:
        await publish(events[: CHANGES // 2])
        await kill_and_restart(0.1)
        await publish(events[CHANGES // 2 :])
        await kill_and_restart(0.4)
        await kill_and_restart(0.7)
        await until(lambda: receiver.got(expected) == len(expected), "every action", 120)
        recorded = await all_sent(60)
        await asyncio.sleep(2)  # late duplicates would show up here
    finally:
        service.stop()
        await producer.stop()
        await engine.dispose()

    mine = {i: b for i, b in receiver.bodies.items() if i in expected}
    duplicates = sum(receiver.copies[i] - 1 for i in mine)
    print(
        f"\n{len(expected)} actions for {CHANGES} changes, {kills} kills, "
        f"{duplicates} same-content redeliveries, {time.monotonic() - started:.0f}s"
    )
    assert kills == 3
    assert receiver.bad_signatures == 0
    assert receiver.late_replies == 0
    assert duplicates >= 5  # at least the late replies were sent again
    assert set(mine) == expected
    assert all(len(bodies) == 1 for bodies in mine.values())
    assert recorded == {"sent": len(expected)}
