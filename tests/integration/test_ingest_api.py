"""The collection API as a real process on the real broker: Segment's own SDK, every error path,
rate limits, and dedup of re-sent messageIds downstream."""

from __future__ import annotations

import asyncio
import gzip
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from segment.analytics import Client

from services.ingest.sources import ensure_source
from shared.contracts import EventEnvelope
from shared.db import build_engine, build_sessionmaker
from shared.settings import CommonSettings
from shared.stack.launcher import Stack
from shared.topics import DEADLETTER, EVENTS_RAW, EVENTS_RESOLVED
from tests.factories import free_port
from tests.support.services import (
    Service,
    collect,
    proxied_broker,
    service_env,
    start_service,
)

WRITE_KEY = "wk_ingest_tests"
LIMITED_KEY = "wk_ingest_limited"
ADMIN = "ingest-tests-admin"


async def _ensure_site(settings: CommonSettings) -> None:
    engine = build_engine(settings, application_name="ingest-tests")
    await ensure_source(
        build_sessionmaker(engine), source_id="site", name="site", write_key=WRITE_KEY
    )
    await engine.dispose()


@pytest.fixture(scope="module")
async def ingest(
    infra: Stack, settings: CommonSettings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    """The ingest service as a child process, with a normal and a rate-limited source."""
    await _ensure_site(settings)
    engine = build_engine(settings, application_name="ingest-tests")
    sessions = build_sessionmaker(engine)
    await ensure_source(
        sessions, source_id="slow", name="slow", write_key=LIMITED_KEY, rate_limit_per_s=5
    )
    await engine.dispose()
    service = await start_service(
        "ingest", {**infra.env, "TIERFLOW_DEV_WRITE_KEY": ""}, tmp_path_factory.mktemp("in")
    )
    yield service.url
    service.stop()


@pytest.fixture(scope="module")
async def identity(
    infra: Stack, settings: CommonSettings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Service]:
    """One identity worker, to see what reaches the resolved topic."""
    env = service_env(infra.env, admin_token=ADMIN)
    service = await start_service("identity", env, tmp_path_factory.mktemp("id"))
    yield service
    service.stop()


def _auth(key: str = WRITE_KEY) -> httpx.BasicAuth:
    return httpx.BasicAuth(key, "")


def _envelopes_of(user: str) -> Any:
    return lambda value: value.get("user_id") == user or value.get("previous_id") == user


async def test_segment_python_sdk_calls_arrive_on_the_raw_topic(
    ingest: str, settings: CommonSettings
) -> None:
    user = f"sdk-{uuid.uuid4().hex[:8]}"
    errors: list[Any] = []
    client = Client(
        WRITE_KEY,
        host=ingest,
        gzip=True,
        on_error=lambda error, _batch: errors.append(error),
        max_retries=2,
        upload_interval=0.1,
    )
    client.identify(user, {"email": f"{user}@example.com", "plan": "pro"})
    client.track(
        user,
        "Webinar Attended",
        {"webinar": "tiering-101"},
        context={"externalIds": [{"id": "crm-42", "type": "crm_id", "collection": "users"}]},
    )
    client.page(user, "Docs", "Pricing", {"path": "/pricing"})
    client.screen(user, "App", "Home")
    client.group(user, "acme", {"employees": 250})
    client.alias(f"anon-{user}", user)
    await asyncio.to_thread(client.flush)
    client.shutdown()
    assert errors == []

    raw = await collect(settings.kafka_bootstrap, EVENTS_RAW.name, _envelopes_of(user), count=6)
    by_type = {e.type: e for e in map(EventEnvelope.model_validate, raw)}
    assert sorted(by_type) == ["alias", "group", "identify", "page", "screen", "track"]
    assert len(raw) == 6
    assert by_type["identify"].traits == {"email": f"{user}@example.com", "plan": "pro"}
    track = by_type["track"]
    assert (track.event, track.properties) == ("Webinar Attended", {"webinar": "tiering-101"})
    assert [(x.type, x.id) for x in track.external_ids] == [("crm_id", "crm-42")]
    assert track.context["library"]["name"] == "analytics-python"
    assert track.source_id == "site"
    assert track.sent_at is not None
    # the SDK's timestamp is the device's time, corrected by its sentAt
    assert track.original_timestamp is not None
    assert track.timestamp <= track.received_at
    assert by_type["page"].name == "Pricing"
    assert by_type["page"].properties["path"] == "/pricing"
    assert by_type["page"].properties["category"] == "Docs"
    assert by_type["screen"].name == "Home"
    assert by_type["group"].group_id == "acme"
    assert by_type["group"].traits == {"employees": 250}
    assert (by_type["alias"].previous_id, by_type["alias"].user_id) == (f"anon-{user}", user)
    assert len({e.message_id for e in by_type.values()}) == 6


@pytest.mark.parametrize(
    ("auth", "reason"),
    [
        (None, "a write key is required"),
        (_auth("wk_nobody"), "unknown or revoked write key"),
    ],
)
async def test_a_missing_or_unknown_key_is_401(
    ingest: str, auth: httpx.BasicAuth | None, reason: str
) -> None:
    async with httpx.AsyncClient(base_url=ingest, auth=auth) as client:
        response = await client.post("/v1/track", json={"userId": "u", "event": "x"})
    assert response.status_code == 401
    assert reason in response.json()["detail"]


async def test_the_served_openapi_document_has_the_tracking_routes(ingest: str) -> None:
    async with httpx.AsyncClient(base_url=ingest) as client:
        doc = (await client.get("/openapi.json")).json()
        page = await client.get("/docs")
    assert {"/v1/track", "/v1/batch", "/v1/import"} <= set(doc["paths"])
    assert doc["paths"]["/v1/identify"]["post"]["requestBody"]["content"]["application/json"][
        "example"
    ]["traits"]
    assert page.status_code == 200


async def test_analytics_js_short_paths_plain_text_and_cors(
    ingest: str, settings: CommonSettings
) -> None:
    """What the browser SDK sends: one-letter paths, ``text/plain`` bodies with the write key
    inside, from another origin whose page must be able to read the answer."""
    user = f"browser-{uuid.uuid4().hex[:8]}"
    page = {"Origin": "https://shop.example", "Content-Type": "text/plain"}
    call = {"writeKey": WRITE_KEY, "userId": user, "sentAt": datetime.now(UTC).isoformat()}
    async with httpx.AsyncClient(base_url=ingest) as client:
        preflight = await client.options(
            "/v1/b",
            headers={
                "Origin": "https://shop.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        answers = [
            await client.post("/v1/t", content=orjson.dumps({**call, "event": "x"}), headers=page),
            await client.post(
                "/v1/p", content=orjson.dumps({**call, "name": "Home"}), headers=page
            ),
            await client.post("/v1/i", content=orjson.dumps(call), headers=page),
            await client.post(
                "/v1/b",
                content=orjson.dumps(
                    {"writeKey": WRITE_KEY, "batch": [{**call, "type": "group", "groupId": "g"}]}
                ),
                headers=page,
            ),
        ]
        refused = await client.post("/v1/t", content=b"{}", headers=page)
        deflated = await client.post(
            "/v1/t", content=b"x", headers={**page, "Content-Encoding": "deflate"}
        )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "authorization" in preflight.headers["access-control-allow-headers"]
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    for answer in (*answers, refused, deflated):
        assert answer.headers["access-control-allow-origin"] == "*"
    assert refused.status_code == 401
    assert deflated.status_code == 415
    assert deflated.json()["detail"][0]["field"] == "Content-Encoding"
    raw = await collect(settings.kafka_bootstrap, EVENTS_RAW.name, _envelopes_of(user), count=4)
    assert sorted(e["type"] for e in raw) == ["group", "identify", "page", "track"]


async def test_other_methods_paths_and_a_trailing_slash_answer_as_tracking_calls_do(
    ingest: str,
) -> None:
    """In the shared error shape and readable by a page; a trailing slash is no redirect."""
    async with httpx.AsyncClient(base_url=ingest, auth=_auth()) as client:
        wrong_method = await client.get("/v1/track")
        unknown = await client.post("/v1/trackx", json={"userId": "u", "event": "x"})
        slash = await client.post(
            "/v1/track/", json={"userId": "u", "event": "x", "context": {"externalIds": None}}
        )
    assert (wrong_method.status_code, wrong_method.json()["error"]) == (405, "method_not_allowed")
    assert wrong_method.headers["allow"] == "POST, OPTIONS"
    assert (unknown.status_code, unknown.json()["error"]) == (404, "not_found")
    assert (slash.status_code, slash.json()["accepted"]) == (200, 1), slash.text
    for answer in (wrong_method, unknown, slash):
        assert answer.headers["access-control-allow-origin"] == "*"


async def test_write_key_in_the_body_is_accepted(ingest: str) -> None:
    async with httpx.AsyncClient(base_url=ingest) as client:
        body = {"writeKey": WRITE_KEY, "userId": "body-key", "event": "Signed Up"}
        response = await client.post("/v1/track", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 1


async def test_oversize_event_and_request_are_413(ingest: str) -> None:
    big = "x" * (33 * 1024)
    async with httpx.AsyncClient(base_url=ingest, auth=_auth()) as client:
        one = await client.post(
            "/v1/track", json={"userId": "u", "event": "x", "properties": {"b": big}}
        )
        many = await client.post(
            "/v1/batch",
            json={
                "batch": [
                    {
                        "type": "track",
                        "userId": "u",
                        "event": "x",
                        "properties": {"b": "y" * 20_000},
                    }
                ]
                * 30
            },
        )
        zipped = await client.post(
            "/v1/batch",
            content=gzip.compress(orjson.dumps({"batch": [{"p": "z" * 600_000}]})),
            headers={"content-encoding": "gzip", "content-type": "application/json"},
        )
    assert one.status_code == 413
    assert "limit 32768" in str(one.json()["detail"])
    assert many.status_code == 413
    assert zipped.status_code == 413  # the limit applies after gunzip too
    assert "over 512000 bytes" in zipped.json()["detail"]


async def test_malformed_json_and_missing_ids_are_400_with_the_field(ingest: str) -> None:
    async with httpx.AsyncClient(base_url=ingest, auth=_auth()) as client:
        malformed = await client.post(
            "/v1/track",
            content=b'{"userId": "u", "event": ',
            headers={"content-type": "application/json"},
        )
        no_ids = await client.post("/v1/track", json={"event": "Anonymous Nothing"})
        no_event = await client.post("/v1/track", json={"userId": "u"})
        bad_gzip = await client.post(
            "/v1/track", content=b"not gzip", headers={"content-encoding": "gzip"}
        )
        not_a_batch = await client.post("/v1/batch", json={"batch": {"type": "track"}})
        nul = await client.post("/v1/identify", json={"userId": "u\x00"})
        nul_context = await client.post(
            "/v1/batch",
            json={
                "batch": [{"type": "track", "userId": "u", "event": "e"}],
                "context": {"ip": "\x00"},
            },
        )
    assert malformed.status_code == 400
    assert "malformed JSON" in malformed.json()["detail"]
    assert no_ids.status_code == 400
    assert "userId or anonymousId" in str(no_ids.json()["detail"])
    assert no_event.status_code == 400
    assert no_event.json()["detail"][0]["field"] == "event"
    assert bad_gzip.status_code == 400
    assert not_a_batch.status_code == 400
    assert not_a_batch.json()["detail"][0]["field"] == "batch"
    assert nul.status_code == 400
    assert nul.json()["detail"][0]["field"] == "userId"
    assert "NUL" in nul.json()["detail"][0]["reason"]
    assert nul_context.status_code == 400
    assert nul_context.json()["detail"][0]["field"] == "context.ip"


async def test_a_mixed_batch_accepts_the_valid_and_dead_letters_the_invalid(
    ingest: str, settings: CommonSettings
) -> None:
    user = f"mixed-{uuid.uuid4().hex[:8]}"
    batch = [
        {"type": "track", "userId": user, "event": "Trial Started"},
        {"type": "track", "userId": user},  # no event name
        {"type": "identify", "userId": user, "traits": {"email": f"{user}@example.com"}},
        {"type": "teleport", "userId": user},
        {"type": "page", "anonymousId": None, "userId": None, "name": f"{user}-orphan"},
        f"{user}: not an object",
    ]
    async with httpx.AsyncClient(base_url=ingest, auth=_auth()) as client:
        response = await client.post("/v1/batch", json={"batch": batch})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["accepted"] == 2
    assert [(r["index"], r["field"]) for r in body["rejected"]] == [
        (1, "event"),
        (3, "type"),
        (4, "userId"),
        (5, None),
    ]
    assert all(r["reason"] for r in body["rejected"])
    async with httpx.AsyncClient(base_url=ingest) as client:
        exported = (await client.get("/metrics")).text
    for cause in ("invalid", "bad_type", "missing_id"):  # counted by cause, as single calls are
        assert f'tierflow_ingest_rejected_total{{reason="{cause}"}}' in exported, cause

    raw = await collect(settings.kafka_bootstrap, EVENTS_RAW.name, _envelopes_of(user), count=2)
    assert sorted(e["type"] for e in raw) == ["identify", "track"]
    dead = await collect(
        settings.kafka_bootstrap,
        DEADLETTER.name,
        lambda d: user in (d.get("payload") or ""),
        count=4,
    )
    # exactly one letter per refused index (the linger would see a fifth): its field, the
    # reason the response gave for that index, and the event as it was sent
    letters = sorted(dead, key=lambda d: d["field"] or "")
    assert [(d["field"], orjson.loads(d["payload"])) for d in letters] == [
        (None, batch[5]),
        ("event", batch[1]),
        ("type", batch[3]),
        ("userId", batch[4]),
    ]
    reasons = [d["reason"] for d in letters]
    assert all(reasons)
    answered = {r["index"]: r["reason"] for r in body["rejected"]}
    assert reasons == [answered[5], answered[1], answered[3], answered[4]]
    assert "unknown type 'teleport'" in reasons[2]
    assert "userId or anonymousId" in reasons[3]
    assert {(d["stage"], d["error_type"], d["source_id"]) for d in dead} == {
        ("ingest", "validation", "site")
    }


async def test_concurrent_batches_keep_each_request_in_order_and_are_measured(
    ingest: str, settings: CommonSettings
) -> None:
    """Concurrent requests share Kafka batches; each request's events for a person stay in the
    order it sent them, and every one is on the topic once acknowledged."""
    run = uuid.uuid4().hex[:8]
    users = [f"order-{run}-{n}" for n in range(3)]

    def batch(request: int) -> dict[str, Any]:
        events = [
            {
                "type": "track",
                "userId": users[seq % 3],
                "event": "Step",
                "messageId": f"{run}-{request}-{seq}",
                "properties": {"request": request, "seq": seq},
                "timestamp": "2026-11-23T12:00:00",  # naive: taken as UTC
            }
            for seq in range(30)
        ]
        return {"batch": events, "sentAt": "2026-11-23T12:00:01Z"}

    async with httpx.AsyncClient(base_url=ingest, auth=_auth()) as client:
        responses = await asyncio.gather(
            *(client.post("/v1/batch", json=batch(request)) for request in range(12)),
            client.post("/v1/import", json=batch(12)),
        )
        wrong_method = await client.get("/v1/track")
        exposition = (await client.get("/metrics")).text
    assert [r.status_code for r in responses] == [200] * 13
    assert all(r.json() == {"success": True, "accepted": 30, "rejected": []} for r in responses)
    assert wrong_method.status_code == 405
    assert 'route="/v1/batch",service="ingest",status="2xx"' in exposition

    raw = await collect(
        settings.kafka_bootstrap, EVENTS_RAW.name, lambda e: e.get("user_id") in users, count=390
    )
    assert len(raw) == 390
    envelopes = [EventEnvelope.model_validate(e) for e in raw]
    # sent a second after the call by the client's clock: a second before arrival by ours
    assert {e.received_at - e.timestamp for e in envelopes} == {timedelta(seconds=1)}
    assert {e.original_timestamp for e in envelopes} == {datetime(2026, 11, 23, 12, tzinfo=UTC)}
    for user in users:
        for request in range(13):
            seqs = [
                e.properties["seq"]
                for e in envelopes
                if e.user_id == user and e.properties["request"] == request
            ]
            assert seqs == sorted(seqs)
            assert len(seqs) == 10


async def test_a_source_over_its_rate_gets_429_with_retry_after(ingest: str) -> None:
    async with httpx.AsyncClient(base_url=ingest, auth=_auth(LIMITED_KEY)) as client:
        statuses = []
        for n in range(8):
            response = await client.post("/v1/track", json={"userId": f"rl-{n}", "event": "x"})
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert int(response.headers["retry-after"]) >= 1
                # analytics.js on the customer's page backs off only if it may read the header
                assert response.headers["access-control-expose-headers"] == "retry-after"
                assert "limit of 5 events/s" in response.json()["detail"]
        await asyncio.sleep(2.1)
        later = await client.post("/v1/track", json={"userId": "rl-later", "event": "x"})
        other = await client.post(
            "/v1/track", json={"userId": "rl-other", "event": "x"}, auth=_auth()
        )
    assert statuses[:5] == [200] * 5
    assert 429 in statuses[5:]
    async with httpx.AsyncClient(base_url=ingest) as client:
        exposition = (await client.get("/metrics")).text
    assert 'outcome="rate_limited",source="slow",type="track"' in exposition
    assert later.status_code == 200  # the window moved on
    assert other.status_code == 200  # limits are per source


async def test_re_sent_message_ids_are_counted_once_downstream(
    ingest: str, identity: Service, settings: CommonSettings
) -> None:
    user = f"dup-{uuid.uuid4().hex[:8]}"
    event = {"userId": user, "event": "Order Completed", "messageId": f"m-{user}"}
    async with httpx.AsyncClient(base_url=ingest, auth=_auth()) as client:
        for _ in range(3):
            assert (await client.post("/v1/track", json=event)).status_code == 200
        again = await client.post("/v1/batch", json={"batch": [{"type": "track", **event}]})
        assert again.status_code == 200
        sentinel = {"userId": user, "event": "Sentinel", "messageId": f"s-{user}"}
        assert (await client.post("/v1/track", json=sentinel)).status_code == 200

    raw = await collect(settings.kafka_bootstrap, EVENTS_RAW.name, _envelopes_of(user), count=5)
    assert len(raw) == 5  # ingest is stateless: every re-send is on the raw topic...
    resolved = await collect(
        settings.kafka_bootstrap,
        EVENTS_RESOLVED.name,
        lambda r: r["event"]["user_id"] == user,
        count=2,
        timeout=60,
        linger=2.0,
    )
    # ...and identity forwards the first copy only (the sentinel proves it processed them all)
    assert sorted(r["event"]["event"] for r in resolved) == ["Order Completed", "Sentinel"]


async def test_broker_outage_gives_503_then_recovers_and_loses_nothing(
    tmp_path: Path, settings: CommonSettings
) -> None:
    from shared.kafka import create_topics

    engine = build_engine(settings, application_name="ingest-outage")
    await ensure_source(
        build_sessionmaker(engine), source_id="site", name="site", write_key=WRITE_KEY
    )
    await engine.dispose()
    async with proxied_broker(tmp_path) as proxy:
        bootstrap = f"127.0.0.1:{proxy.listen_port}"
        await create_topics(
            CommonSettings(
                kafka_bootstrap=bootstrap, database_url=settings.database_url, topic_partitions=2
            )
        )
        env = {
            "TIERFLOW_KAFKA_BOOTSTRAP": bootstrap,
            "TIERFLOW_KAFKA_IDEMPOTENCE": "false",
            "TIERFLOW_DATABASE_URL": settings.database_url,
            "TIERFLOW_DEV_WRITE_KEY": "",
            "TIERFLOW_PRODUCE_TIMEOUT_S": "2",
            "TIERFLOW_RETRY_AFTER_S": "1",
        }
        ingest_service = await start_service("ingest", env, tmp_path)
        try:
            accepted: list[str] = []
            async with httpx.AsyncClient(
                base_url=ingest_service.url, auth=_auth(), timeout=10
            ) as client:

                async def send(n: int) -> httpx.Response:
                    message_id = f"outage-{n}"
                    response = await client.post(
                        "/v1/track",
                        json={"userId": "outage", "event": "x", "messageId": message_id},
                    )
                    if response.status_code == 200:
                        accepted.append(message_id)
                    return response

                assert (await send(0)).status_code == 200
                await proxy.cut()
                down = await send(1)
                assert down.status_code == 503
                assert down.headers["retry-after"] == "1"
                assert "retry" in down.json()["detail"]
                ready = await client.get("/readyz")
                assert ready.status_code == 503
                await proxy.restore()
                recovered = None
                for n in range(2, 40):
                    response = await send(n)
                    if response.status_code == 200:
                        recovered = n
                        break
                    assert response.status_code == 503
                    await asyncio.sleep(float(response.headers["retry-after"]) / 2)
                assert recovered is not None, "ingest did not recover after the broker came back"
                for n in range(100, 110):
                    assert (await send(n)).status_code == 200
                # a broker that hangs (connections open, no answer) is 503 once the bound passes
                proxy.stall()
                started = asyncio.get_running_loop().time()
                slow = await send(200)
                waited = asyncio.get_running_loop().time() - started
                assert slow.status_code == 503, slow.text
                assert slow.headers["retry-after"] == "1"
                assert 1.5 < waited < 8, f"answered after {waited:.1f} s with a 2 s bound"
                proxy.resume()
                for n in range(300, 340):
                    response = await send(n)
                    if response.status_code == 200:
                        break
                    assert response.status_code == 503
                    await asyncio.sleep(0.5)
                assert response.status_code == 200, (
                    "ingest did not recover after the broker answered"
                )

            raw = await collect(
                bootstrap,
                EVENTS_RAW.name,
                lambda e: e.get("user_id") == "outage",
                count=len(accepted),
            )
            assert set(accepted) <= {e["message_id"] for e in raw}  # every 2xx is on the topic
        finally:
            ingest_service.stop()


async def test_a_database_outage_keeps_checked_keys_working_and_answers_503_for_others(
    infra: Stack, settings: CommonSettings, tmp_path: Path
) -> None:
    from sqlalchemy.engine import make_url

    from tests.support.tcp_proxy import TcpProxy

    await _ensure_site(settings)
    url = make_url(settings.database_url)
    assert url.port is not None
    proxy = TcpProxy(free_port(), url.port)
    await proxy.start()
    proxied = url.set(port=proxy.listen_port).render_as_string(hide_password=False)
    env = {
        **infra.env,
        "TIERFLOW_DATABASE_URL": proxied,
        "TIERFLOW_DEV_WRITE_KEY": "",
        "TIERFLOW_SOURCE_CACHE_TTL_S": "0.5",
        "TIERFLOW_PRODUCE_TIMEOUT_S": "2",
        "TIERFLOW_RETRY_AFTER_S": "1",
    }
    service = await start_service("ingest", env, tmp_path)
    unknown = "wk_not_checked_yet"
    try:
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:

            async def track(key: str, n: int) -> httpx.Response:
                body = {"userId": "db-outage", "event": "x", "messageId": f"db-outage-{n}"}
                return await client.post("/v1/track", json=body, auth=_auth(key))

            assert (await track(WRITE_KEY, 0)).status_code == 200
            await proxy.cut()
            await asyncio.sleep(0.6)  # past the cache's TTL: the key must be checked again
            for n in (1, 2):  # the first waits for the database to fail, the second does not
                assert (await track(WRITE_KEY, n)).status_code == 200
            refused = await track(unknown, 3)
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"] == "1"
            assert "database" in refused.json()["detail"]
            assert (await client.get("/readyz")).status_code == 200
            exported = (await client.get("/metrics")).text
            assert "tierflow_ingest_stale_keys_total 2.0" in exported  # the two on the cached key
            await proxy.restore()
            for _ in range(40):
                answered = await track(unknown, 4)
                if answered.status_code != 503:
                    break
                await asyncio.sleep(0.25)
            assert answered.status_code == 401, answered.text
        raw = await collect(
            infra.env["TIERFLOW_KAFKA_BOOTSTRAP"],
            EVENTS_RAW.name,
            lambda e: e.get("user_id") == "db-outage",
            count=3,
        )
        assert {e["message_id"] for e in raw} == {f"db-outage-{n}" for n in range(3)}
    finally:
        service.stop()
        await proxy.cut()


async def test_shutdown_drains_in_flight_requests_and_loses_none(
    infra: Stack, settings: CommonSettings, tmp_path: Path
) -> None:
    import signal

    await _ensure_site(settings)
    env = {**infra.env, "TIERFLOW_DEV_WRITE_KEY": ""}
    service = await start_service("ingest", env, tmp_path)
    child = service.child
    user = f"drain-{uuid.uuid4().hex[:8]}"
    accepted: list[str] = []
    signalled, warmed_up = asyncio.Event(), asyncio.Event()
    answered_after_signal = 0
    async with httpx.AsyncClient(base_url=service.url, auth=_auth(), timeout=20) as client:

        async def sender(worker: int) -> None:
            nonlocal answered_after_signal
            for n in range(10_000):
                message_id = f"{user}-{worker}-{n}"
                in_flight_at_signal = not signalled.is_set()
                body = {"userId": user, "event": "x", "messageId": message_id}
                try:
                    response = await client.post("/v1/track", json=body)
                except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
                    # the listener or an idle keep-alive connection closed before this request
                    # was read: no answer means not accepted, and SDKs retry such requests
                    return
                assert response.status_code == 200, response.text
                accepted.append(message_id)
                if len(accepted) == 100:
                    warmed_up.set()
                if in_flight_at_signal and signalled.is_set():
                    answered_after_signal += 1

        senders = [asyncio.create_task(sender(w)) for w in range(20)]
        await warmed_up.wait()
        child.process.send_signal(signal.SIGTERM)
        signalled.set()
        await asyncio.gather(*senders)
    child.stop()
    # uvicorn re-raises SIGTERM after its graceful shutdown; the lifespan's end is the proof
    assert "Application shutdown complete" in child.log_path.read_text()
    assert answered_after_signal > 0  # requests in flight at SIGTERM were answered, not cut
    raw = await collect(
        settings.kafka_bootstrap,
        EVENTS_RAW.name,
        lambda e: e.get("user_id") == user,
        count=len(accepted),
    )
    assert set(accepted) <= {e["message_id"] for e in raw}
