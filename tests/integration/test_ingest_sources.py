"""`tierflow sources` as an operator runs it, against a real ingest process: a created write key
is accepted and its events carry the source's id; once the key-cache TTL has passed, a revoked
key and a never-issued key are refused with 401 and a new rate limit is enforced."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.ingest.sources import hash_key
from shared.settings import CommonSettings
from shared.stack.launcher import Stack
from shared.topics import EVENTS_RAW
from tests.support.services import collect, start_service

CACHE_TTL_S = 0.5
PAST_TTL_S = CACHE_TTL_S + 0.5
TIERFLOW = Path(sys.executable).with_name("tierflow")
WRITE_KEY = re.compile(r"wk_[\w-]+")
BURST = [f"burst-{n}" for n in range(8)]


@dataclass(frozen=True)
class Cli:
    """What one `tierflow` run printed and how it exited."""

    code: int
    out: str


@pytest.fixture(scope="module")
async def cli_env(infra: Stack, settings: CommonSettings) -> dict[str, str]:
    """The environment an operator's shell would have: pointed at the test broker and Postgres
    (``settings`` has migrated the schema)."""
    return {**os.environ, **infra.env}


@pytest.fixture(scope="module")
async def ingest(
    cli_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    """Ingest as a child process with a short write-key cache, so revocations land quickly."""
    env = {**cli_env, "TIERFLOW_DEV_WRITE_KEY": "", "TIERFLOW_SOURCE_CACHE_TTL_S": str(CACHE_TTL_S)}
    service = await start_service("ingest", env, tmp_path_factory.mktemp("ingest-sources"))
    yield service.url
    service.stop()


async def tierflow(env: dict[str, str], *args: str) -> Cli:
    """Run the real console script ``tierflow sources ARGS``."""
    process = await asyncio.create_subprocess_exec(
        str(TIERFLOW),
        "sources",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return Cli(process.returncode, out.decode())


async def create_source(env: dict[str, str], prefix: str) -> tuple[str, str]:
    """A new source's name and the write key `sources create` printed for it."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    created = await tierflow(env, "create", name)
    assert created.code == 0, created.out
    keys = WRITE_KEY.findall(created.out)
    assert len(keys) == 1, created.out  # printed once, and only the key
    return name, keys[0]


async def track(url: str, key: str, *users: str) -> list[httpx.Response]:
    """One Segment track call per user, back to back, authenticated as Segment's SDKs do: the
    write key as HTTP Basic user name."""
    async with httpx.AsyncClient(base_url=url, auth=httpx.BasicAuth(key, "")) as client:
        return [
            await client.post("/v1/track", json={"userId": user, "event": "Signed Up"})
            for user in users
        ]


def row(listing: Cli, name: str) -> list[str]:
    """The cells of ``name``'s line in `sources list` (tab-separated when piped)."""
    assert listing.code == 0, listing.out
    for line in listing.out.splitlines():
        cells = line.split("\t")
        if cells[0] == name:
            return cells
    raise AssertionError(f"{name} is not listed:\n{listing.out}")


async def test_a_created_key_is_accepted_and_tags_events_with_its_source(
    ingest: str, cli_env: dict[str, str], settings: CommonSettings, engine: AsyncEngine
) -> None:
    name, key = await create_source(cli_env, "site")
    async with engine.connect() as connection:
        stored = await connection.scalar(
            text("SELECT key_hash FROM ingest.sources WHERE source_id = :id"), {"id": name}
        )
    assert stored == hash_key(key)  # only its hash is stored
    listing = await tierflow(cli_env, "list")
    cells = row(listing, name)
    assert (cells[1], cells[-1]) == ("default", "-")  # default limit, not revoked
    assert "wk_" not in listing.out  # no write key is ever listed...
    assert hash_key(key) not in listing.out  # ...nor its hash
    assert len(cells) == 4  # whole lines: a script's output is never cut to 80 columns

    user = f"src-{uuid.uuid4().hex[:8]}"
    [response] = await track(ingest, key, user)
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 1
    raw = await collect(
        settings.kafka_bootstrap, EVENTS_RAW.name, lambda e: e.get("user_id") == user, count=1
    )
    assert [e["source_id"] for e in raw] == [name]


async def test_a_revoked_or_never_issued_key_is_refused_after_the_cache_ttl(
    ingest: str, cli_env: dict[str, str]
) -> None:
    name, key = await create_source(cli_env, "gone")
    [before] = await track(ingest, key, "before-revoke")
    assert before.status_code == 200, before.text  # the key is now cached as valid

    revoked = await tierflow(cli_env, "revoke", name)
    assert revoked.code == 0, revoked.out
    assert f"revoked {name}" in revoked.out
    assert row(await tierflow(cli_env, "list"), name)[-1] != "-"
    again = await tierflow(cli_env, "revoke", name)
    assert again.code == 1
    assert f"no active source {name}" in again.out

    await asyncio.sleep(PAST_TTL_S)
    [revoked_key] = await track(ingest, key, "after-revoke")
    [never_issued] = await track(ingest, f"wk_never-issued-{uuid.uuid4().hex}", "stranger")
    for refused, reason in ((revoked_key, "revoked"), (never_issued, "unknown")):
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"] == "unauthorized"
        assert reason in refused.json()["detail"]


async def test_a_changed_rate_limit_is_enforced_after_the_cache_ttl(
    ingest: str, cli_env: dict[str, str]
) -> None:
    name, key = await create_source(cli_env, "busy")
    [warm_up] = await track(ingest, key, "warm-up")
    assert warm_up.status_code == 200, warm_up.text  # the key is now cached with the default

    limited = await tierflow(cli_env, "limit", name, "--rate-limit", "2")
    assert limited.code == 0, limited.out
    assert f"{name}: 2 events/s" in limited.out
    assert row(await tierflow(cli_env, "list"), name)[1] == "2"
    await asyncio.sleep(PAST_TTL_S)
    burst = await track(ingest, key, *BURST)
    assert 429 in [r.status_code for r in burst]
    assert all("limit of 2 events/s" in r.json()["detail"] for r in burst if r.status_code == 429)

    reset = await tierflow(cli_env, "limit", name)
    assert reset.code == 0, reset.out
    assert f"{name}: default events/s" in reset.out
    await asyncio.sleep(PAST_TTL_S)
    assert [r.status_code for r in await track(ingest, key, *BURST)] == [200] * len(BURST)

    missing = await tierflow(
        cli_env, "limit", f"no-such-{uuid.uuid4().hex[:8]}", "--rate-limit", "5"
    )
    assert missing.code == 1
    assert "no source" in missing.out


async def test_create_never_changes_an_existing_source_and_rotate_replaces_its_key(
    ingest: str, cli_env: dict[str, str]
) -> None:
    name, key = await create_source(cli_env, "kept")
    assert (await tierflow(cli_env, "limit", name, "--rate-limit", "7")).code == 0
    again = await tierflow(cli_env, "create", name)
    assert again.code == 1
    assert "exists" in again.out
    assert not WRITE_KEY.findall(again.out)
    assert row(await tierflow(cli_env, "list"), name)[1] == "7"  # its limit untouched
    [still] = await track(ingest, key, "after-create-again")
    assert still.status_code == 200, still.text

    rotated = await tierflow(cli_env, "rotate", name)
    assert rotated.code == 0, rotated.out
    [new_key] = WRITE_KEY.findall(rotated.out)
    assert new_key != key
    await asyncio.sleep(PAST_TTL_S)
    [old_answer] = await track(ingest, key, "old-key")
    [new_answer] = await track(ingest, new_key, "new-key")
    assert (old_answer.status_code, new_answer.status_code) == (401, 200)
    assert row(await tierflow(cli_env, "list"), name)[1] == "7"  # rotation keeps the limit

    for bad in ("x" * 65, "no spaces", ".dot-first"):
        refused = await tierflow(cli_env, "create", bad)
        assert refused.code == 2, refused.out
        assert "a name is" in refused.out
    missing = await tierflow(cli_env, "rotate", f"no-such-{uuid.uuid4().hex[:8]}")
    assert missing.code == 1
    assert "no source" in missing.out
