"""A real scoring worker on the real broker and Postgres: a customer journey ends at_risk by the
timer with no event, a merge equals one person with every event, an erasure forgets both ids."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from faust.serializers import codecs
from sqlalchemy.ext.asyncio import AsyncEngine

from services.scoring.app import people_changelog
from services.scoring.repository import store_versions
from services.scoring.rules import load_model
from services.scoring.scorer import each_seen, seen_token
from services.scoring.service import explain, profile_of, score_event
from shared.contracts import (
    IdentityErasure,
    IdentityMerge,
    Profile,
    Scores,
    TierChangeEvent,
    decode,
    encode,
)
from shared.db import build_sessionmaker, unit_of_work
from shared.kafka import partition_of
from shared.settings import CommonSettings
from shared.topics import DEADLETTER, EVENTS_RESOLVED, IDENTITY_MERGES, PROFILES, TIERS_CHANGES
from tests.crash.scoring_worker import Worker, produce, read_until, set_clock, worker_env
from tests.factories import T0, make_resolved
from tests.support.services import collect

MODEL = load_model()
DAY = timedelta(days=1)
KEPT_FROM_WINNER = ("tier_since", "at_change")
"""A merged person's tier history stays the winner's: when it entered its tier, and the
contributions at its last change (the next change's are measured from them)."""


@pytest.fixture
async def worker(settings: CommonSettings, tmp_path: Path) -> AsyncIterator[tuple[Worker, Any]]:
    env = worker_env(
        settings.kafka_bootstrap,
        settings.database_url,
        app_id=f"scoring-it-{uuid.uuid4().hex[:8]}",
        work_dir=tmp_path,
        partitions=settings.topic_partitions,
        clock=T0.timestamp(),
    )
    started = Worker("scoring", env, tmp_path)
    try:
        await started.ready()
        yield started, env
    finally:
        started.stop()


async def changes_of(
    bootstrap: str, oneid: str, count: int, *, linger: float = 1.5
) -> list[TierChangeEvent]:
    """``oneid``'s tier changes from the start of the topic: read until ``count`` are there, then
    ``linger`` seconds more, so that one too many would be seen."""
    found = await collect(
        bootstrap,
        TIERS_CHANGES.name,
        lambda change: change.get("subject") == oneid,
        count=count,
        timeout=60,
        linger=linger,
    )
    return [decode(TierChangeEvent, orjson.dumps(change)) for change in found]


def oneid_where(prefix: str, partitions: int, wanted: Callable[[int], bool]) -> str:
    """A new oneid starting with ``prefix`` whose partition (of ``partitions``) is ``wanted``."""
    while True:
        oneid = f"{prefix}-{uuid.uuid4()}"
        if wanted(partition_of(oneid.encode(), partitions)):
            return oneid


async def send_events(bootstrap: str, oneid: str, events: list[dict[str, Any]]) -> list[Any]:
    resolved = [make_resolved(oneid, **fields) for fields in events]
    await produce(bootstrap, EVENTS_RESOLVED.name, [(oneid.encode(), encode(r)) for r in resolved])
    return resolved


async def eventually(url: str, expect: int, timeout: float = 30) -> httpx.Response:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as client:
        while True:
            response = await client.get(url)
            if response.status_code == expect or time.monotonic() > deadline:
                return response
            await asyncio.sleep(0.3)


async def test_journey_ends_at_risk_by_the_timer_with_no_event(
    settings: CommonSettings, worker: tuple[Worker, Any]
) -> None:
    scoring, env = worker
    oneid = f"journey-{uuid.uuid4()}"
    journey: list[dict[str, Any]] = [
        {"type": "page", "event": None, "properties": {"path": "/features"}},
        {"type": "page", "event": None, "properties": {"path": "/blog"}},
        {"type": "page", "event": None, "properties": {"path": "/features"}, "timestamp": T0},
        {"type": "page", "event": None, "properties": {"path": "/pricing"}, "timestamp": T0 + DAY},
        {"type": "page", "event": None, "properties": {"path": "/pricing"}, "timestamp": T0 + DAY},
        {"event": "Webinar Attended", "timestamp": T0 + 2 * DAY},
        {"event": "Form Submitted", "timestamp": T0 + 3 * DAY},
        {"event": "Webinar Attended", "timestamp": T0 + 4 * DAY},
        {"event": "Order Completed", "properties": {"revenue": 2000}, "timestamp": T0 + 6 * DAY},
    ]
    await send_events(settings.kafka_bootstrap, oneid, journey)
    by_events = await changes_of(settings.kafka_bootstrap, oneid, 3)
    assert [(c.data.from_tier, c.data.to_tier, c.data.from_stage) for c in by_events] == [
        (None, "prospect", None),  # three page views: 3 points; the first evaluation
        ("prospect", "growth", "new"),  # pricing pages, a webinar, a form, a webinar: ~49.2
        ("growth", "vip", "new"),  # R=5 F=1 M=4: value (15 + 3 + 16) * 2 = 68 >= 60
    ]

    # silent 29 days: still vip (value 62), but the stage moves (new -> declining at once:
    # the clock jumped past day 14, where "growing" would have started)
    set_clock(env, (T0 + 35 * DAY).timestamp())
    assert len(await changes_of(settings.kafka_bootstrap, oneid, 4)) == 4
    set_clock(env, (T0 + 36.5 * DAY).timestamp())  # silent 30.5 days
    changes = await changes_of(settings.kafka_bootstrap, oneid, 5, linger=2.0)
    assert [
        (d.from_tier, d.to_tier, d.from_stage, d.lifecycle_stage, d.cause.kind)
        for d in (c.data for c in changes)
    ] == [
        (None, "prospect", None, "new", "event"),
        ("prospect", "growth", "new", "new", "event"),
        ("growth", "vip", "new", "new", "event"),
        ("vip", "vip", "new", "declining", "timer"),
        ("vip", "at_risk", "declining", "declining", "timer"),
    ]
    # the timer evaluates at the clock's time: the deadline (T0 + 36 days, silent exactly 30
    # days after the order; silent_days >= 30 holds on the boundary) passed while the clock
    # jumped, so the drop is stamped with the clock's T0 + 36.5 days, as the stage change is
    # with its T0 + 35 days
    assert changes[3].time == T0 + 35 * DAY
    assert changes[4].time == changes[4].data.changed_at == T0 + 36.5 * DAY
    drop = changes[-1].data
    assert drop.cause.event_id is None
    assert drop.lifecycle_stage == "declining"
    assert "silent" in drop.tags
    assert len({c.id for c in changes}) == 5

    profile = await eventually(f"{scoring.url}/v1/scores/{oneid}", 200)
    assert profile.status_code == 200
    deadline = time.monotonic() + 30
    while profile.json()["tier"] != "at_risk" and time.monotonic() < deadline:
        profile = await eventually(f"{scoring.url}/v1/scores/{oneid}", 200)
    assert profile.json()["tier"] == "at_risk"
    explained = (await eventually(f"{scoring.url}/v1/scores/{oneid}/explain", 200)).json()
    assert explained["why"]["tier"] == "at_risk"
    assert explained["rfm"] == {"recency": 3, "frequency": 1, "monetary": 4}
    assert (await eventually(f"{scoring.url}/v1/scores/nobody", 404)).status_code == 404
    # no person has these ids: Postgres refused the NUL, and the page answered a bare 500
    for path in ("/v1/scores/a%00b", f"/v1/scores/{'x' * 65}"):
        refused = await eventually(f"{scoring.url}{path}", 404)
        assert refused.json()["error"] == "not_found"
    # the worker counts its table as it writes (a scrape never walks it): every entry is in
    # exactly one tier's population ("none" for people not in a tier yet and for markers)
    entries = await scoring.metric("tierflow_scoring_table_entries", table="people")
    populations = {
        tier: await scoring.metric("tierflow_scoring_tier_population", tier=tier)
        for tier in [*(t.name for t in MODEL.tiers), "none"]
    }
    assert entries >= 1
    assert populations["at_risk"] >= 1
    assert min(populations.values()) >= 0
    assert sum(populations.values()) == entries
    # the only worker holds every partition of the table, and none as a standby
    partitions = {
        role: await scoring.metric("tierflow_scoring_partitions", role=role)
        for role in ("active", "standby")
    }
    assert partitions == {"active": settings.topic_partitions, "standby": 0}


async def test_merge_equals_one_person_and_erasure_forgets_both(
    settings: CommonSettings, worker: tuple[Worker, Any]
) -> None:
    scoring, env = worker
    partitions = settings.topic_partitions
    winner = f"winner-{uuid.uuid4()}"
    home = partition_of(winner.encode(), partitions)
    # on another partition: the fold must travel through the commands topic to the winner's
    absorbed = oneid_where("absorbed", partitions, lambda p: p != home)
    split: list[tuple[str, dict[str, Any]]] = [
        (winner, {"event": "Webinar Attended"}),
        (absorbed, {"type": "page", "event": None, "properties": {"path": "/pricing"}}),
        (absorbed, {"event": "Order Completed", "properties": {"revenue": 300}}),
        (winner, {"type": "identify", "event": None, "traits": {"company_size": "51-200"}}),
    ]
    resolved = []
    for day, (oneid, fields) in enumerate(split):
        resolved += await send_events(
            settings.kafka_bootstrap, oneid, [{**fields, "timestamp": T0 + day * DAY}]
        )
    now = T0 + 3 * DAY
    set_clock(env, now.timestamp())
    await changes_of(settings.kafka_bootstrap, absorbed, 2, linger=0)  # prospect, then growth

    merge = IdentityMerge(
        merge_id=str(uuid.uuid4()),
        winner=winner,
        absorbed=absorbed,
        cause_event_id="e",
        rule="email",
        merged_at=T0 + 3 * DAY,
    )
    notice = [(absorbed.encode(), encode(merge))]
    await produce(settings.kafka_bootstrap, IDENTITY_MERGES.name, notice * 2)  # redelivered
    changes = await changes_of(settings.kafka_bootstrap, winner, 2)  # the linger: one merge
    assert [(c.data.to_tier, c.data.cause.kind) for c in changes] == [
        ("prospect", "event"),
        ("growth", "merge"),
    ]

    single = None
    for event in resolved:
        single, _, _ = score_event(single, event.model_copy(update={"oneid": winner}), MODEL)
    assert single is not None
    # /explain as for one id with every event, at the workers' clock, but for the tier
    # history: the tier was entered at the merge, so its dwell ends a day later
    expected = explain(winner, single, MODEL, now.timestamp())
    explained = (await eventually(f"{scoring.url}/v1/scores/{winner}/explain", 200)).json()
    assert explained["profile"]["events_counted"] == 4
    assert explained["profile"].pop("tier_since") == now.isoformat().replace("+00:00", "Z")
    assert explained["what_would_change_it"].pop("dwell_until") == (now + 3 * DAY).isoformat()
    del expected["profile"]["tier_since"], expected["what_would_change_it"]["dwell_until"]
    assert explained == json.loads(json.dumps(expected))
    # the table holds that state too (the winner's changelog record), with the ids of both
    # sides and the merge's fold remembered, and engagement summed in another order
    key = winner.encode()
    changelog = await read_until(
        settings.kafka_bootstrap,
        people_changelog(env["TIERFLOW_SCORING_APP_ID"]),
        lambda kept: bool(kept) and orjson.loads(kept[-1].value or b"{}").get("events") == 4,
        keep=lambda r: r.key == key,
    )
    held = orjson.loads(changelog[-1].value or b"{}")
    replayed = json.loads(codecs.dumps("json", single))
    assert held["engagement"] == pytest.approx(replayed["engagement"], rel=1e-12)
    assert set(each_seen(held["seen"])) == {
        *each_seen(replayed["seen"]),
        seen_token(f"merge:{merge.merge_id}"),
    }
    ignored = {*KEPT_FROM_WINNER, "engagement", "seen"}
    assert {k: v for k, v in held.items() if k not in ignored} == {
        k: v for k, v in replayed.items() if k not in ignored
    }
    assert held["tier"] == "growth"
    gone = await eventually(f"{scoring.url}/v1/scores/{absorbed}/explain", 404)
    assert gone.status_code == 404

    erasure = IdentityErasure(
        erasure_id=str(uuid.uuid4()),
        oneid=winner,
        oneids=(winner, absorbed),
        requested_at=T0 + 3 * DAY,
    )
    await produce(
        settings.kafka_bootstrap, IDENTITY_MERGES.name, [(winner.encode(), encode(erasure))]
    )
    assert (await eventually(f"{scoring.url}/v1/scores/{winner}/explain", 404)).status_code == 404
    assert (await eventually(f"{scoring.url}/v1/scores/{winner}", 404)).status_code == 404
    # a redelivered old event does not bring the erased person back: once a later event on the
    # same partition is scored, the worker has been past the redelivered one
    sentinel = oneid_where("sentinel", partitions, lambda p: p == home)
    await produce(
        settings.kafka_bootstrap,
        EVENTS_RESOLVED.name,
        [(winner.encode(), encode(resolved[0]))],
    )
    await send_events(settings.kafka_bootstrap, sentinel, [{"timestamp": now}])
    scored = await eventually(f"{scoring.url}/v1/scores/{sentinel}/explain", 200)
    assert scored.json()["profile"]["events_counted"] == 1
    async with httpx.AsyncClient(timeout=5) as client:
        erased = await client.get(f"{scoring.url}/v1/scores/{winner}/explain")
    assert erased.status_code == 404


async def test_changelog_and_profile_records_are_what_faust_and_the_model_would_write(
    settings: CommonSettings, worker: tuple[Worker, Any]
) -> None:
    """The loop writes the table's changelog itself: the record must be the one Faust's table
    would write (raw key, the table's JSON codec, the key's partition, no headers), so that
    recovery reads it back; the profile topic ends with the latest profile."""
    _, env = worker
    oneid = f"changelog-{uuid.uuid4()}"
    resolved = await send_events(
        settings.kafka_bootstrap,
        oneid,
        [
            {"type": "page", "event": None, "properties": {"path": "/pricing"}},
            {"event": "Webinar Attended", "timestamp": T0 + DAY},
            {"event": "Order Completed", "properties": {"revenue": 90}, "timestamp": T0 + 2 * DAY},
        ],
    )
    state = None
    for event in resolved:
        state, _, _ = score_event(state, event, MODEL)
    assert state is not None
    key, expected = oneid.encode(), codecs.dumps("json", state)
    changelog = await read_until(
        settings.kafka_bootstrap,
        people_changelog(env["TIERFLOW_SCORING_APP_ID"]),
        lambda kept: bool(kept) and kept[-1].value == expected,
        keep=lambda r: r.key == key,
    )
    assert changelog[-1].value == expected
    assert {r.partition for r in changelog} == {partition_of(key, settings.topic_partitions)}
    assert all(not r.headers for r in changelog)
    profile = encode(profile_of(oneid, state, MODEL))
    profiles = await read_until(
        settings.kafka_bootstrap,
        PROFILES.name,
        lambda kept: bool(kept) and kept[-1].value == profile,
        keep=lambda r: r.key == key,
    )
    assert profiles[-1].value == profile


async def test_a_profile_the_read_model_cannot_take_is_dead_lettered_and_the_rest_stored(
    settings: CommonSettings, worker: tuple[Worker, Any]
) -> None:
    started, _ = worker
    run = uuid.uuid4().hex[:8]
    good, bad = f"profile-{run}", f"unreadable-{run}"
    state, _, _ = score_event(None, make_resolved(good), MODEL)
    await produce(
        settings.kafka_bootstrap,
        PROFILES.name,
        [
            (bad.encode(), b"{not a profile"),
            (good.encode(), encode(profile_of(good, state, MODEL))),
        ],
    )
    stored = await eventually(f"{started.url}/v1/scores/{good}", 200, timeout=60)
    assert stored.status_code == 200
    letters = await collect(
        settings.kafka_bootstrap, DEADLETTER.name, lambda r: r.get("key") == bad, count=1
    )
    assert [(r["stage"], r["error_type"]) for r in letters] == [("scoring", "validation")]


def listed(oneid: str, tier: str, total: float, stage: str) -> Profile:
    """A read-model profile for the listing test."""
    return Profile(
        oneid=oneid,
        tier=tier,
        lifecycle_stage=stage,
        scores=Scores(value=total, engagement=0.0, fit=0.0, total=total),
        events_counted=1,
        model_version=MODEL.version,
        updated_at=T0,
    )


async def test_a_tier_lists_its_members_highest_total_first_page_by_page(
    worker: tuple[Worker, Any], engine: AsyncEngine
) -> None:
    """Keyset pages in total order (ties by oneid) with no one lost or repeated across pages,
    the stage filter, the counts per tier, and each refused parameter named."""
    scoring, _ = worker
    run = uuid.uuid4().hex[:8]
    top = 9e6  # far above any scored person: these people lead the vip listing
    totals = [top + 3, top + 2, top + 2, top + 2, top + 1, top]
    people = [
        listed(f"list-{run}-{n}", "vip", total, "declining" if n % 2 == 0 else "mature")
        for n, total in enumerate(totals)
    ]
    retired = listed(f"list-{run}-retired", f"retired-{run}", 1.0, "new")
    sessions = build_sessionmaker(engine)
    async with unit_of_work(sessions) as session:
        await store_versions(session, [(p.oneid, 1, p) for p in [*people, retired]])
    ranked = sorted(people, key=lambda p: (-p.scores.total, p.oneid))
    route = {"service": "scoring", "route": "/v1/tiers/{tier}/members"}
    answered = {
        status: await scoring.metric("tierflow_http_requests_total", **route, status=status)
        for status in ("2xx", "4xx")
    }
    try:
        async with httpx.AsyncClient(base_url=scoring.url, timeout=5) as client:
            seen: list[str] = []
            after: str | None = None
            pages = 0
            while len(seen) < len(people):
                pages += 1
                # 3 a page: the first page ends inside the three-way tie at top + 2
                params = {"limit": "3", **({"after": after} if after else {})}
                response = await client.get("/v1/tiers/vip/members", params=params)
                assert response.status_code == 200, response.text
                page = response.json()
                assert len(page["members"]) <= 3
                seen += [member["oneid"] for member in page["members"]]
                after = page["next"]
                if after is None:
                    break
            assert seen[: len(people)] == [p.oneid for p in ranked]
            first = (await client.get("/v1/tiers/vip/members", params={"limit": "1"})).json()
            assert first["members"][0] == ranked[0].model_dump(mode="json")
            # in the contract's key order, as /v1/scores/{oneid} answers (not JSONB's)
            assert list(first["members"][0]) == list(ranked[0].model_dump(mode="json"))
            assert list(first["members"][0]["scores"]) == ["value", "engagement", "fit", "total"]

            declining = await client.get(
                "/v1/tiers/vip/members", params={"stage": "declining", "limit": "3"}
            )
            assert [m["oneid"] for m in declining.json()["members"]] == [
                p.oneid for p in ranked if p.lifecycle_stage == "declining"
            ]
            assert declining.json()["stage"] == "declining"

            counts = (await client.get("/v1/tiers")).json()
            assert [t["tier"] for t in counts["tiers"]] == [t.name for t in MODEL.tiers]
            assert counts["not_in_model"][f"retired-{run}"] == 1
            assert counts["model_version"] == MODEL.version

            unknown = await client.get("/v1/tiers/vipp/members")
            assert unknown.status_code == 404
            assert "no tier 'vipp'" in unknown.json()["detail"]
            refused = await client.get(
                "/v1/tiers/vip/members", params={"limit": "0", "after": "x", "stage": "gone"}
            )
            assert refused.status_code == 400
            assert [e["field"] for e in refused.json()["detail"]] == ["limit", "after", "stage"]
        # every listing request above is counted under its route template, by status class
        for status, requests in (("2xx", pages + 2), ("4xx", 2)):
            now = await scoring.metric("tierflow_http_requests_total", **route, status=status)
            assert now - answered[status] == requests
    finally:
        async with unit_of_work(sessions) as session:
            await store_versions(session, [(p.oneid, 2, None) for p in [*people, retired]])
