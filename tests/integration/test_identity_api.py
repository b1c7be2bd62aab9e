"""The identity service as a process: 360° profile, lookups by identifier, merge history,
and erasure that leaves no raw identifier behind and suppresses later events."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.contracts import EventEnvelope, encode
from shared.settings import CommonSettings
from shared.stack.launcher import Stack
from shared.topics import EVENTS_RAW, EVENTS_RESOLVED, IDENTITY_MERGES
from tests.factories import T0, make_event
from tests.support.services import Service, collect, service_env, start_service

ADMIN = "identity-api-admin"


@pytest.fixture(scope="module")
async def identity(
    infra: Stack, settings: CommonSettings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Service]:
    env = service_env(
        infra.env,
        admin_token=ADMIN,
        identity_phone_region="CN",
        identity_suppression_key="test-pepper",
    )
    service = await start_service("identity", env, tmp_path_factory.mktemp("identity-api"))
    yield service
    service.stop()


async def _send(settings: CommonSettings, *events: EventEnvelope) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for event in events:
            await producer.send_and_wait(
                EVENTS_RAW.name, encode(event), key=event.routing_id.encode()
            )
    finally:
        await producer.stop()


async def _resolved(settings: CommonSettings, run: str, count: int) -> list[dict[str, object]]:
    return await collect(
        settings.kafka_bootstrap,
        EVENTS_RESOLVED.name,
        lambda r: r["event"]["source_id"] == run,
        count=count,
        timeout=60,
    )


async def test_profile_lookup_merge_history_and_erasure(
    identity: Service, settings: CommonSettings, engine: AsyncEngine
) -> None:
    run = f"e{uuid.uuid4().hex[:6]}"
    user, email, anon, crm = f"{run}-ada", f"{run}-ada@acme.io", f"{run}-cookie", f"{run}-crm"
    browsing = make_event(
        message_id=f"{run}-1", source_id=run, user_id=None, anonymous_id=anon, timestamp=T0
    )
    signup = make_event(
        message_id=f"{run}-2",
        source_id=run,
        type="identify",
        user_id=user,
        traits={"email": email, "phone": "138 0013 8000", "plan": "trial", "name": f"Ada {run}"},
        timestamp=T0 + timedelta(minutes=1),
    )
    login = make_event(
        message_id=f"{run}-3",
        source_id=run,
        user_id=user,
        anonymous_id=anon,
        external_ids=[{"id": crm, "type": "crm_id"}],
        timestamp=T0 + timedelta(minutes=2),
    )
    upgrade = make_event(
        message_id=f"{run}-4",
        source_id=run,
        type="identify",
        user_id=user,
        traits={"plan": "pro"},
        timestamp=T0 + timedelta(minutes=3),
    )
    stale = make_event(  # arrives last but happened first: must not overwrite 'pro'
        message_id=f"{run}-5",
        source_id=run,
        type="identify",
        user_id=user,
        traits={"plan": "free"},
        timestamp=T0 - timedelta(days=1),
    )
    await _send(settings, browsing)  # other partition than the rest: resolve it first
    await _resolved(settings, run, 1)
    await _send(settings, signup, login, upgrade, stale)
    await _resolved(settings, run, 5)

    async with httpx.AsyncClient(
        base_url=identity.url, headers={"authorization": f"Bearer {ADMIN}"}
    ) as client:
        assert (
            await client.get(f"/v1/identifiers/user_id/{user}", headers={"authorization": ""})
        ).status_code == 401
        by_phone = await client.get("/v1/identifiers/phone/+86 138-0013-8000")
        assert by_phone.status_code == 200, by_phone.text
        profile = by_phone.json()
        assert {(i["type"], i["value"]) for i in profile["identifiers"]} == {
            ("anonymous_id", anon),
            ("user_id", user),
            ("email", email),
            ("phone", "+8613800138000"),
            ("crm_id", crm),
        }
        assert profile["traits"]["plan"]["value"] == "pro"  # last write wins by event time
        assert profile["traits"]["name"]["value"] == f"Ada {run}"
        assert len(profile["absorbed"]) == 1  # the anonymous browser joined at login
        [merge] = profile["merges"]
        assert merge["absorbed"] == profile["absorbed"][0]
        assert merge["cause_event_id"] == login.event_id
        assert profile["scoring"] is None  # no scoring service in this test
        by_absorbed = await client.get(f"/v1/profiles/{profile['absorbed'][0]}")
        assert by_absorbed.json()["oneid"] == profile["oneid"]
        recent = await client.get("/v1/merges", params={"limit": 50})
        assert merge["merge_id"] in {m["merge_id"] for m in recent.json()}
        assert (await client.get("/v1/identifiers/user_id/null")).status_code == 404

        erased = await client.post(
            f"/v1/profiles/{profile['oneid']}/erasure", json={"reason": "GDPR art. 17"}
        )
        assert erased.status_code == 202, erased.text
        body = erased.json()
        assert set(body["oneids"]) == {profile["oneid"], *profile["absorbed"]}
        assert body["identifiers_removed"] == 5
        assert body["notice_published"] is True
        assert (await client.get(f"/v1/profiles/{profile['oneid']}")).status_code == 404

    notices = await collect(
        settings.kafka_bootstrap,
        IDENTITY_MERGES.name,
        lambda n: n.get("kind") == "erasure" and n.get("erasure_id") == body["erasure_id"],
        count=1,
    )
    assert set(notices[0]["oneids"]) == set(body["oneids"])

    again = make_event(
        message_id=f"{run}-6",
        source_id=run,
        type="identify",
        user_id=None,
        anonymous_id=f"{run}-new-cookie",
        traits={"email": email.upper()},
    )
    sentinel = make_event(
        message_id=f"{run}-7", source_id=run, user_id=None, anonymous_id=f"{run}-new-cookie"
    )
    # someone else on the erased person's browser: resolved on their own id, the cookie left out
    bob = make_event(message_id=f"{run}-8", source_id=run, user_id=f"{run}-bob", anonymous_id=anon)
    await _send(settings, again, sentinel, bob)
    resolved = await _resolved(settings, run, 7)
    assert {r["event"]["message_id"] for r in resolved} == {
        f"{run}-{n}" for n in (1, 2, 3, 4, 5, 7, 8)
    }

    raw_values = [user, email, anon, crm, "8613800138000", f"Ada {run}"]
    async with engine.connect() as connection:
        tables = (
            (
                await connection.execute(
                    text(
                        "SELECT table_name FROM information_schema.tables "
                        "WHERE table_schema = 'identity' AND table_type = 'BASE TABLE'"
                    )
                )
            )
            .scalars()
            .all()
        )
        for table in tables:
            rows = (
                (await connection.execute(text(f'SELECT t::text FROM identity."{table}" t')))
                .scalars()
                .all()
            )
            leaked = [v for v in raw_values for row in rows if v.lower() in row.lower()]
            assert leaked == [], (table, leaked)


async def test_an_event_postgres_refuses_is_dead_lettered_and_the_partition_moves_on(
    identity: Service, settings: CommonSettings
) -> None:
    """A NUL character in a user id (another producer than ingest, which refuses it) passes the
    envelope but no Postgres text column takes it: after three failed batches the event is
    dead-lettered alone, and the events around it are resolved."""
    run = f"nul-{uuid.uuid4().hex[:8]}"
    before = make_event(source_id=run, user_id=f"{run}-before", anonymous_id=None)
    refused = make_event(source_id=run, user_id=f"{run}-\x00", anonymous_id=None)
    after = make_event(source_id=run, user_id=f"{run}-after", anonymous_id=None)
    await _send(settings, before, refused, after)
    resolved = await _resolved(settings, run, 2)
    assert {r["event"]["user_id"] for r in resolved} == {f"{run}-before", f"{run}-after"}
    letters = await collect(
        settings.kafka_bootstrap,
        "tierflow.deadletter",
        lambda r: r.get("stage") == "identity" and run in (r.get("payload") or ""),
        count=1,
        timeout=30,
    )
    assert len(letters) == 1
    assert "0x00" in letters[0]["reason"]


def _admin(identity: Service) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=identity.url, headers={"authorization": f"Bearer {ADMIN}"})


async def test_an_identifier_value_holding_a_slash_is_reachable(
    identity: Service, settings: CommonSettings
) -> None:
    """External ids such as ``crm/123`` hold "/": the lookup takes the rest of the path as the
    value, whether the slash is sent as is or encoded."""
    run = f"slash-{uuid.uuid4().hex[:8]}"
    crm = f"{run}/crm/123"
    event = make_event(
        source_id=run, user_id=f"{run}-u", external_ids=[{"id": crm, "type": "crm_id"}]
    )
    await _send(settings, event)
    [resolved] = await _resolved(settings, run, 1)
    oneid = str(resolved["oneid"])

    async with _admin(identity) as client:
        for path in (f"/v1/identifiers/crm_id/{crm}", f"/v1/identifiers/crm_id/{run}%2Fcrm%2F123"):
            found = await client.get(path)
            assert found.status_code == 200, (path, found.text)
            assert found.json()["oneid"] == oneid
            assert ("crm_id", crm) in {(i["type"], i["value"]) for i in found.json()["identifiers"]}
        missing = await client.get(f"/v1/identifiers/crm_id/{run}/crm/124")
        assert missing.status_code == 404
        assert missing.json()["error"] == "not_found"


async def test_ids_that_cannot_exist_are_404_and_a_nul_reason_is_400(
    identity: Service, settings: CommonSettings
) -> None:
    """Postgres refuses NUL: an id, type or value holding one (or too long for its column) names
    no one and answers 404 without a query, and a NUL in the erasure reason is the caller's
    error, named, with the person left alone."""
    run = f"nulapi-{uuid.uuid4().hex[:8]}"
    await _send(settings, make_event(source_id=run, user_id=f"{run}-u", anonymous_id=None))
    [resolved] = await _resolved(settings, run, 1)
    oneid = str(resolved["oneid"])

    async with _admin(identity) as client:
        for path in (
            "/v1/profiles/%00",
            f"/v1/profiles/{oneid}%00",
            "/v1/identifiers/user_id/%00",
            f"/v1/identifiers/user_id/{run}-u%00",
            "/v1/identifiers/%00/x",
            "/v1/identifiers/email/%00@x.io",
            "/v1/identifiers/" + "t" * 65 + f"/{run}-u",
            "/v1/identifiers/user_id/" + "v" * 513,
        ):
            answer = await client.get(path)
            assert (answer.status_code, answer.json()["error"]) == (404, "not_found"), path[:60]
        erase_nul = await client.post("/v1/profiles/%00/erasure", json={"reason": "x"})
        assert erase_nul.status_code == 404, erase_nul.text

        bad_reason = await client.post(
            f"/v1/profiles/{oneid}/erasure", json={"reason": "GDPR\x00art. 17"}
        )
        assert bad_reason.status_code == 400, bad_reason.text
        assert [d["field"] for d in bad_reason.json()["detail"]] == ["body.reason"]
        assert (await client.get(f"/v1/profiles/{oneid}")).status_code == 200  # not erased
