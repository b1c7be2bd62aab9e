"""Ingest's edges, through the real app in-process: what no request may turn into a 500, how
much one request may stand for, and the answers outside the tracking calls."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from services.ingest.api import parse_json
from services.ingest.app import create_app
from services.ingest.envelopes import Request, convert
from services.ingest.ratelimit import SourceLimiter
from services.ingest.service import Collector
from services.ingest.settings import IngestSettings
from services.ingest.sources import SourceRef
from shared.contracts import DeadLetter, EventEnvelope, decode
from shared.errors import BadRequest, Unauthorized, install_error_handlers

KEY = "wk_edges"
RECEIVED = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


class Sources:
    """One source, ``web``, with key ``KEY``."""

    async def authenticate(self, key: str | None) -> SourceRef:
        if key == KEY:
            return SourceRef("web", "web", None)
        raise Unauthorized("unknown or revoked write key")


class Acceptor:
    """Keeps what would have gone to Kafka."""

    producer = None

    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes]] = []
        self.dead: list[DeadLetter] = []

    async def accept(self, records: list[tuple[bytes, bytes]], rejected: list[DeadLetter]) -> None:
        self.records += records
        self.dead += rejected


def make_app() -> tuple[FastAPI, Acceptor]:
    """The ingest app with its state set as the lifespan would, on fakes."""
    settings = IngestSettings()
    app = create_app(settings)
    acceptor = Acceptor()
    app.state.settings = settings
    app.state.sources = Sources()
    app.state.collector = Collector(
        acceptor,  # type: ignore[arg-type]
        SourceLimiter(100_000),
        max_event_bytes=settings.max_event_bytes,
        max_clock_ahead=timedelta(seconds=settings.max_clock_ahead_s),
    )
    return app, acceptor


async def call(app: FastAPI, path: str, body: Any, method: str = "POST") -> httpx.Response:
    """One request; ``body`` is sent as is when bytes, else as its JSON."""
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    auth = base64.b64encode(f"{KEY}:".encode()).decode()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
        return await client.request(
            method, path, content=content, headers={"authorization": f"Basic {auth}"}
        )


def nested(depth: int) -> dict[str, Any]:
    """An object ``depth`` levels deep (itself the first)."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def track(**fields: Any) -> dict[str, Any]:
    return {"type": "track", "userId": "u", "event": "e", **fields}


async def test_a_null_external_ids_is_an_absent_one_wherever_it_is() -> None:
    app, acceptor = make_app()
    crm = [{"id": "crm-1", "type": "crm_id"}]
    null = {"externalIds": None}
    answers = [
        await call(app, "/v1/batch", {"batch": [track(), track(context=null)]}),
        await call(app, "/v1/track", {"userId": "u", "event": "e", "context": null}),
        await call(app, "/v1/batch", {"batch": [track()], "context": null}),
        # an event's own key wins whole, so its null drops the batch's list
        await call(
            app, "/v1/batch", {"batch": [track(context=null)], "context": {"externalIds": crm}}
        ),
    ]
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert [a.json()["rejected"] for a in answers] == [[]] * 4
    sent = [decode(EventEnvelope, value) for _, value in acceptor.records]
    assert len(sent) == 5
    assert [e.external_ids for e in sent] == [[]] * 5


async def test_a_batch_context_is_checked_as_deep_as_it_is_stored() -> None:
    """It is merged one level down into every envelope, which orjson writes to 254 levels."""
    app, acceptor = make_app()
    fits = await call(app, "/v1/batch", {"batch": [track()], "context": nested(253)})
    assert (fits.status_code, fits.json()["accepted"]) == (200, 1)
    for field in ("context", "integrations"):
        body = json.dumps({"batch": [track()], field: nested(254)}).encode()  # orjson cannot
        deep = await call(app, "/v1/batch", body)
        assert deep.status_code == 400, deep.text
        assert deep.json()["detail"] == [
            {"field": field, "reason": "nested too deep to store (at most 253 levels)"}
        ]
    assert len(acceptor.records) == 1


def test_an_envelope_that_cannot_be_written_refuses_its_event_alone() -> None:
    """Whatever a request carries into an event, the event is refused, never the request."""
    request = Request("web", RECEIVED, 100_000, context=nested(254))
    converted = convert([track(), track()], request)
    assert [(bad.index, bad.field) for bad in converted.invalid] == [(0, "context"), (1, "context")]
    assert converted.invalid[0].reason == "nested too deep to store (at most 253 levels)"
    huge = convert([track()], Request("web", RECEIVED, 100_000, integrations={"n": 2**70}))
    ((bad),) = huge.invalid
    assert (bad.field, bad.reason) == (
        "integrations",
        "cannot be stored as JSON: Integer exceeds 64-bit range",
    )


async def test_a_batch_context_copied_into_each_event_is_bounded_in_total() -> None:
    app, acceptor = make_app()
    # 73 KB (275 bytes gzipped) that would be 31 MB of envelopes
    amplified = {"batch": [track()] * 1000, "context": {"pad": "x" * 31_000}}
    refused = await call(app, "/v1/batch", amplified)
    assert refused.status_code == 413, refused.text
    assert refused.json()["error"] == "payload_too_large"
    assert "copied into each of its 1000 events" in refused.json()["detail"]
    assert acceptor.records == []
    # an SDK's full batch: ~500 KB of events with ids and times, and a 2 KB context
    event = track(
        anonymousId="0b6a5c1e-3f1d-4a53-9a0e-6c2a7f1d9b21",
        messageId="ajs-next-1732363200000-3b0c6e2f-6a7d-4e0b-8b5e-2f6c9d1a7e44",
        timestamp="2026-11-23T11:59:58.123Z",
        properties={"path": "/pricing", "plan": "pro", "value": 12.5},
    )
    count = 500_000 // len(orjson.dumps(event))
    context = {"library": {"name": "analytics.js", "version": "2.11.1"}, "pad": "c" * 1950}
    sdk = await call(app, "/v1/batch", {"batch": [event] * count, "context": context})
    assert sdk.status_code == 200, sdk.text[:300]
    assert sdk.json()["accepted"] == count


async def test_a_lone_surrogate_changes_nothing_else_in_the_body() -> None:
    numbers = b"[18446744073709551615, 18446744073709551616, -9223372036854775809, 1e308, -0.0]"
    plain = orjson.loads(numbers)
    parsed = parse_json(b'{"n": ' + numbers + b', "s": "\\ud83d"}')
    assert parsed["n"] == plain
    assert [type(n) for n in parsed["n"]] == [int, float, float, float, float]
    for out_of_range in (b"1e400", b"-1" + b"0" * 400):
        with pytest.raises(BadRequest, match="malformed JSON"):
            parse_json(b'{"n": ' + out_of_range + b', "s": "\\ud83d"}')
    # through the app: an integer past 64 bits is a float with or without a surrogate elsewhere
    app, acceptor = make_app()
    big = (
        b'{"type":"track","userId":"u1","event":"e","properties":{"ref":1234567890123456789012345}}'
    )
    cut = b'{"type":"track","userId":"u2","event":"Page \\ud83d cut"}'
    batch = await call(app, "/v1/batch", b'{"batch":[' + big + b"," + cut + b"]}")
    assert batch.json() == {"success": True, "accepted": 2, "rejected": []}
    in_context = b'{"batch":[' + cut + b'],"context":{"n":123456789012345678901234567890}}'
    assert (await call(app, "/v1/batch", in_context)).json()["accepted"] == 1
    ref = decode(EventEnvelope, acceptor.records[0][1]).properties["ref"]
    assert ref == 1.2345678901234568e24


def test_a_time_outside_the_utc_calendar_refuses_its_event_with_the_field() -> None:
    """Valid as given, but converting it to UTC, as scoring does, raises."""
    batch = [
        track(timestamp="0001-01-01T00:00:00+01:00"),
        track(sentAt="9999-12-31T23:00:00-02:00"),
        track(timestamp="0001-01-01T00:00:00-01:00"),
    ]
    converted = convert(batch, Request("web", RECEIVED, 100_000))
    assert [(bad.index, bad.field) for bad in converted.invalid] == [
        (0, "timestamp"),
        (1, "sentAt"),
    ]
    assert "outside years 1-9999" in converted.invalid[0].reason
    ((_, value),) = converted.records
    assert decode(EventEnvelope, value).timestamp.astimezone(UTC).year == 1


async def test_other_methods_and_paths_answer_in_the_error_shape_a_page_can_read() -> None:
    app, _ = make_app()
    wrong_method = await call(app, "/v1/track", b"", method="GET")
    unknown = await call(app, "/v1/trackx", track())
    slash = await call(app, "/v1/track/", {"userId": "u", "event": "e"})
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"] == "method_not_allowed"
    assert wrong_method.headers["allow"] == "POST, OPTIONS"
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "not_found"
    # what the router's redirect led to, without a redirect a browser could not read
    assert (slash.status_code, slash.json()["accepted"]) == (200, 1)
    for answer in (wrong_method, unknown, slash):
        assert answer.headers["access-control-allow-origin"] == "*"
    docs = await call(app, "/nothing", b"", method="GET")
    assert docs.json() == {"error": "not_found", "detail": "Not Found"}


async def test_every_service_renders_framework_errors_in_the_shared_shape() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/things")
    async def things() -> list[str]:
        return []

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
        missing = await client.get("/nothing")
        wrong = await client.post("/things")
    assert (missing.status_code, missing.json()) == (
        404,
        {"error": "not_found", "detail": "Not Found"},
    )
    assert (wrong.status_code, wrong.json()) == (
        405,
        {"error": "method_not_allowed", "detail": "Method Not Allowed"},
    )
    assert wrong.headers["allow"] == "GET"


def test_the_shutdown_drain_outlasts_the_longest_request() -> None:
    # a write key Postgres checks, then Kafka's ack: each may take the whole produce timeout,
    # and a drain shorter than both cut such a request off unanswered
    assert IngestSettings().drain_s == 12
    assert IngestSettings(produce_timeout_s=0.4).drain_s == 3
    assert IngestSettings(produce_timeout_s=20).drain_s > 2 * 20
