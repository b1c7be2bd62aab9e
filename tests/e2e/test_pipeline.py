"""The whole stack as real processes: a track call ends as a signed webhook with the right
OneID and tier, and stopping the stack leaves no process behind."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from shared.stack.launcher import Stack, StackSettings, start_stack
from shared.webhooks import verify
from tests.factories import free_port

SECRET = "whsec_" + base64.b64encode(b"e2e-secret-e2e-secret-24").decode()
ADMIN = "e2e-admin-token"


class Receiver:
    """A real HTTP endpoint recording every delivery and whether its signature verified."""

    def __init__(self) -> None:
        self.deliveries: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.deliveries.append(
                    {
                        "path": self.path,
                        "verified": verify(SECRET, headers, body),
                        "id": headers.get("webhook-id"),
                        "payload": orjson.loads(body),
                    }
                )
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    built = Receiver()
    yield built
    built.server.shutdown()


async def test_track_calls_become_a_signed_webhook_for_the_right_person(
    receiver: Receiver, tmp_path: Path
) -> None:
    settings = StackSettings(
        webhook_base_url=receiver.url,
        webhook_secret=SECRET,
        admin_token=ADMIN,
        stack_dir=tmp_path,
        stack_broker_port=free_port(),
        stack_postgres_port=free_port(),
        ingest_port=free_port(),
        identity_port=free_port(),
        scoring_port=free_port(),
        automation_port=free_port(),
        topic_partitions=3,
    )
    stack: Stack = await start_stack(settings, demo=False)
    pids = [child.process.pid for child in stack.children]
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            # a webinar a day until now: scoring's timer measures at the real time, and events
            # dated days back would already have decayed out of growth when the test looks
            now = datetime.now(UTC)
            for days_ago in (2, 1, 0):
                response = await client.post(
                    f"{stack.urls['ingest']}/v1/track",
                    auth=("dev-write-key", ""),
                    json={
                        "userId": "e2e-user",
                        "event": "Webinar Attended",
                        "messageId": f"e2e-{days_ago}",
                        "timestamp": (now - timedelta(days=days_ago, minutes=1)).isoformat(),
                    },
                )
                assert response.status_code == 200, response.text
            unauthorized = await client.post(
                f"{stack.urls['ingest']}/v1/track", auth=("wrong", ""), json={"userId": "x"}
            )
            assert unauthorized.status_code == 401

            deadline = time.monotonic() + 60
            growth: list[dict[str, Any]] = []
            while time.monotonic() < deadline and not growth:
                growth = [d for d in receiver.deliveries if d["payload"]["tier"] == "growth"]
                await asyncio.sleep(0.2)
            # the 360° profile: identity's graph plus scoring's read model (filled in batches)
            tier = None
            while time.monotonic() < deadline and tier != "growth":
                person = await client.get(
                    f"{stack.urls['identity']}/v1/identifiers/user_id/e2e-user",
                    headers={"authorization": f"Bearer {ADMIN}"},
                )
                assert person.status_code == 200, person.text
                tier = (person.json()["scoring"] or {}).get("tier")
                await asyncio.sleep(0.2)
        assert tier == "growth"
        assert person.json()["scoring"]["events_counted"] == 3
        oneid = person.json()["oneid"]
        assert [d["payload"]["step"] for d in growth] == ["industry_solutions"]
        assert all(d["verified"] for d in receiver.deliveries)
        assert {d["payload"]["oneid"] for d in receiver.deliveries} == {oneid}
        prospect = [d for d in receiver.deliveries if d["payload"]["tier"] == "prospect"]
        # the prospect step may have been exited already if both changes came in one batch
        assert [d["payload"]["step"] for d in prospect] in ([], ["light_education"])
        assert all(d["path"] == f"/hooks/{d['payload']['channel']}" for d in receiver.deliveries)
        ids = [d["id"] for d in receiver.deliveries]
        assert len(ids) == len(set(ids))  # each action delivered once (the rest is delayed)
    finally:
        stack.stop()
    assert all(_gone(pid) for pid in pids)


def _gone(pid: int) -> bool:
    """True when no process with ``pid`` remains (reaped or never a zombie of ours)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.split(") ")[1].startswith("Z")
