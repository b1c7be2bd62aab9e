"""Ingest's pure rules: skew correction, envelopes, per-event validation."""

from __future__ import annotations

import gzip
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from fastapi.openapi.utils import get_openapi
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from services.ingest.api import document, parse_json, read_body
from services.ingest.envelopes import (
    EVENT_ID_NAMESPACE,
    Converted,
    Invalid,
    Request,
    convert,
    correct_timestamp,
    derive_event_id,
    nul_path,
)
from services.ingest.schemas import CALL_TYPES
from shared.contracts import EventEnvelope, ExternalId, decode, encode
from shared.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

RECEIVED = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def make_request(**overrides: Any) -> Request:
    """The shared part of a request from source ``web``, received at ``RECEIVED``."""
    return Request(
        **{"source_id": "web", "received_at": RECEIVED, "max_event_bytes": 10_000, **overrides}
    )


def envelopes(converted: Converted) -> list[EventEnvelope]:
    """The converted records decoded the way identity decodes them."""
    return [decode(EventEnvelope, value) for _, value in converted.records]


def one(kind: str, body: dict[str, Any], **request: Any) -> EventEnvelope | Invalid:
    """A single call on its own route: its envelope, or why it was refused."""
    converted = convert([body], make_request(**request), kind=kind)
    if converted.invalid:
        return converted.invalid[0]
    return envelopes(converted)[0]


def test_event_id_is_stable_per_source_and_message() -> None:
    assert derive_event_id("web", "m-1") == derive_event_id("web", "m-1")
    assert derive_event_id("web", "m-1") != derive_event_id("app", "m-1")


def test_event_ids_are_uuid5_of_source_and_message() -> None:
    for source, message in [("site", "m-1"), ("app", "ü-∑"), ("", "")]:
        expected = uuid.uuid5(EVENT_ID_NAMESPACE, f"{source}\x1f{message}")
        assert derive_event_id(source, message) == str(expected)


def test_clock_skew_is_corrected_from_sent_at() -> None:
    # the client clock is 10 minutes fast: it says sent at 12:10 what we received at 12:00
    original = RECEIVED + timedelta(minutes=5)
    sent_at = RECEIVED + timedelta(minutes=10)
    assert correct_timestamp(original, sent_at, RECEIVED) == RECEIVED - timedelta(minutes=5)
    body = {"userId": "u", "event": "e", "originalTimestamp": "2026-11-23T12:05:00Z"}
    envelope = one("track", {**body, "sentAt": "2026-11-23T12:10:00Z"})
    assert isinstance(envelope, EventEnvelope)
    assert envelope.timestamp == RECEIVED - timedelta(minutes=5)


def test_batch_sent_at_corrects_events_without_their_own() -> None:
    body = {"type": "track", "userId": "u", "event": "e", "originalTimestamp": "2026-11-23T12:05"}
    converted = convert([body], make_request(sent_at=RECEIVED + timedelta(minutes=10)))
    (envelope,) = envelopes(converted)
    assert envelope.timestamp == RECEIVED - timedelta(minutes=5)
    assert envelope.original_timestamp == datetime(2026, 11, 23, 12, 5, tzinfo=UTC)


def test_a_timestamp_with_nothing_to_correct_it_by_is_kept_as_given() -> None:
    explicit = datetime(2026, 11, 20, tzinfo=UTC)
    envelope = one("track", {"userId": "u", "event": "e", "timestamp": "2026-11-20T00:00:00Z"})
    assert isinstance(envelope, EventEnvelope)
    assert (envelope.timestamp, envelope.original_timestamp) == (explicit, None)


def test_an_sdk_timestamp_is_the_devices_time_and_is_corrected_by_sent_at() -> None:
    # what every SDK sends: timestamp set at the call, sentAt at the upload; this device's clock
    # is 10 minutes slow and the event was queued 2 s before its batch went out
    batch = [{"type": "track", "userId": "u", "event": "e", "timestamp": "2026-11-23T11:49:58Z"}]
    converted = convert(batch, make_request(sent_at=RECEIVED - timedelta(minutes=10)))
    (envelope,) = envelopes(converted)
    assert envelope.timestamp == RECEIVED - timedelta(seconds=2)
    assert envelope.original_timestamp == datetime(2026, 11, 23, 11, 49, 58, tzinfo=UTC)
    assert converted.ahead == 0
    # history imported by a server with a right clock moves by the transit time only
    old = {"userId": "u", "event": "e", "timestamp": "2025-01-01T00:00:00Z"}
    imported = one("track", {**old, "sentAt": "2026-11-23T11:59:59.5Z"})
    assert isinstance(imported, EventEnvelope)
    assert imported.timestamp == datetime(2025, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)


def test_a_timestamp_beside_an_original_timestamp_is_already_corrected() -> None:
    # Segment's own output re-imported: timestamp corrected long ago, sentAt long ago too
    body = {
        "userId": "u",
        "event": "e",
        "timestamp": "2025-03-01T10:00:00Z",
        "originalTimestamp": "2025-03-01T10:07:00Z",
        "sentAt": "2025-03-01T10:07:01Z",
    }
    envelope = one("track", body)
    assert isinstance(envelope, EventEnvelope)
    assert envelope.timestamp == datetime(2025, 3, 1, 10, tzinfo=UTC)
    assert envelope.original_timestamp == datetime(2025, 3, 1, 10, 7, tzinfo=UTC)


def test_a_time_out_of_range_once_corrected_refuses_that_event_only() -> None:
    # Go's zero time from a device whose clock is ahead of ours: the correction underflows
    batch = [
        {"type": "track", "userId": "u", "event": "e", "originalTimestamp": "0001-01-01T00:00Z"},
        {"type": "track", "userId": "u", "event": "e"},
        {"type": "track", "userId": "u", "event": "e", "timestamp": "9999-12-31T23:59:59Z"},
    ]
    converted = convert(batch, make_request(sent_at=RECEIVED + timedelta(seconds=5)))
    assert [(bad.index, bad.field) for bad in converted.invalid] == [(0, "originalTimestamp")]
    assert "out of range" in converted.invalid[0].reason
    kept, capped = envelopes(converted)
    assert kept.timestamp == RECEIVED
    # 9999 corrected by sentAt is still far ahead: moved back to arrival
    assert capped.timestamp == RECEIVED
    assert capped.original_timestamp == datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    # sent from a clock behind ours, the same time leaves the calendar once corrected
    late = convert(batch[2:], make_request(sent_at=RECEIVED - timedelta(seconds=5)))
    assert [(bad.index, bad.field) for bad in late.invalid] == [(0, "timestamp")]


def test_a_timestamp_after_arrival_is_a_clock_ahead_and_is_corrected() -> None:
    # the client's clock is an hour fast: its batch says sent at 13:00:10, we got it at 12:00
    batch = [
        {"type": "track", "userId": "u", "event": "e", "timestamp": "2026-11-23T13:00:00Z"},
        {"type": "track", "userId": "u", "event": "e", "timestamp": "2099-01-01T00:00:00Z"},
        {"type": "track", "userId": "u", "event": "e", "timestamp": "2026-11-23T12:00:59Z"},
        {"type": "track", "userId": "u", "event": "e", "originalTimestamp": "2026-11-23T13:30"},
    ]
    converted = convert(batch, make_request(sent_at=RECEIVED + timedelta(hours=1, seconds=10)))
    one_hour, far, early, original_ahead = envelopes(converted)
    # corrected by sentAt, two are still after arrival: never later than arrival
    assert converted.ahead == 2
    assert one_hour.timestamp == RECEIVED - timedelta(seconds=10)
    assert one_hour.original_timestamp == RECEIVED + timedelta(hours=1)
    assert far.timestamp == RECEIVED
    assert far.original_timestamp == datetime(2099, 1, 1, tzinfo=UTC)
    # 12:00:59 on a clock an hour fast is 11:00:49
    assert early.timestamp == RECEIVED - timedelta(minutes=59, seconds=11)
    assert early.original_timestamp == RECEIVED + timedelta(seconds=59)
    assert original_ahead.timestamp == RECEIVED
    assert original_ahead.original_timestamp == datetime(2026, 11, 23, 13, 30, tzinfo=UTC)


def test_a_null_timestamp_is_an_absent_one_even_when_the_clock_is_ahead() -> None:
    # originalTimestamp 62 min ahead, sent 60 min ahead: corrected once, to 2 min after arrival,
    # then capped at arrival (a null timestamp is not the client's own to correct again)
    body = {"userId": "u", "event": "e", "originalTimestamp": "2026-11-23T13:02:00Z"}
    for event in (body, {**body, "timestamp": None}):
        envelope = one("track", event, sent_at=RECEIVED + timedelta(hours=1))
        assert isinstance(envelope, EventEnvelope)
        assert envelope.timestamp == RECEIVED
        assert envelope.original_timestamp == datetime(2026, 11, 23, 13, 2, tzinfo=UTC)


def test_a_timestamp_ahead_without_sent_at_becomes_the_arrival_time() -> None:
    body = {"userId": "u", "event": "e", "timestamp": "2026-11-23T12:05:00Z"}
    envelope = one("track", body, max_ahead=timedelta(minutes=1))
    assert isinstance(envelope, EventEnvelope)
    assert (envelope.timestamp, envelope.original_timestamp) == (
        RECEIVED,
        datetime(2026, 11, 23, 12, 5, tzinfo=UTC),
    )
    kept = one("track", body, max_ahead=timedelta(minutes=10))
    assert isinstance(kept, EventEnvelope)
    assert (kept.timestamp, kept.original_timestamp) == (RECEIVED + timedelta(minutes=5), None)


def test_naive_timestamps_are_utc() -> None:
    envelope = one("track", {"userId": "u", "event": "e", "timestamp": "2026-11-20T08:00:00"})
    assert isinstance(envelope, EventEnvelope)
    assert envelope.timestamp == datetime(2026, 11, 20, 8, tzinfo=UTC)


def test_envelope_keeps_segment_fields_and_external_ids() -> None:
    body = {
        "anonymousId": "a-1",
        "event": "Order Completed",
        "properties": {"revenue": 12},
        "context": {"externalIds": [{"id": "ux", "type": "wechat_unionid"}]},
        "messageId": "m-9",
        "writeKey": "not published",
    }
    converted = convert([body], make_request(context={"ip": "x", "locale": "zh"}), kind="track")
    ((key, value),) = converted.records
    envelope = decode(EventEnvelope, value)
    assert key == envelope.routing_id.encode() == b"a-1"
    assert envelope.event == "Order Completed"
    assert envelope.external_ids == [ExternalId(id="ux", type="wechat_unionid")]
    assert envelope.context["ip"] == "x"
    assert envelope.event_id == derive_event_id("web", "m-9")
    assert envelope.received_at == RECEIVED
    assert b"not published" not in value
    assert converted.accepted == {"track": 1}


def test_page_category_is_kept_in_properties_and_generated_message_ids_are_unique() -> None:
    page = {"type": "page", "anonymousId": "a", "name": "Home", "category": "Docs"}
    converted = convert([page, page], make_request())
    first, second = envelopes(converted)
    assert first.properties == {"category": "Docs"}
    assert first.name == "Home"
    assert first.message_id != second.message_id
    assert first.event_id == derive_event_id("web", first.message_id)


def test_envelopes_are_byte_for_byte_what_the_contract_encodes() -> None:
    calls = [
        {"type": "track", "userId": "u", "event": "x", "properties": {"a": 1, "b": "é"}},
        {"type": "page", "anonymousId": "a", "name": "Home", "category": "Docs"},
        {"type": "screen", "userId": "u", "name": "Dash", "timestamp": "2026-11-23T11:00+08:00"},
        {"type": "group", "userId": "u", "groupId": "g", "traits": {"n": 2}},
        {"type": "alias", "userId": "u", "previousId": "p", "originalTimestamp": "2026-11-23"},
        {
            "type": "identify",
            "userId": "u",
            "sentAt": "2026-11-23T12:00:01.5Z",
            "context": {"externalIds": [{"id": "x", "type": "crm_id", "collection": "users"}]},
        },
    ]
    converted = convert(calls, make_request(sent_at=RECEIVED))
    assert converted.invalid == []
    assert len(converted.records) == len(calls)
    for _, value in converted.records:
        assert encode(decode(EventEnvelope, value)) == value


def test_missing_ids_and_oversize_events_are_invalid_with_reasons() -> None:
    missing = convert([{}, {}, {}, {"event": "x"}], make_request(), kind="track").invalid
    assert [bad.index for bad in missing] == [0, 1, 2, 3]
    assert "userId or anonymousId" in missing[3].reason
    big = one("track", {"userId": "u", "event": "x" * 2000}, max_event_bytes=1000)
    assert isinstance(big, Invalid)
    assert big.too_large
    assert "limit 1000" in big.reason
    unknown = convert([{"type": "nope", "userId": "u"}, {"type": ["track"]}], make_request())
    assert [(bad.field, bad.reason) for bad in unknown.invalid] == [
        ("type", "unknown type 'nope'"),
        ("type", "unknown type ['track']"),
    ]
    wrong_route = one("identify", {"type": "track", "userId": "u", "event": "x"})
    assert isinstance(wrong_route, Invalid)
    assert wrong_route.field == "type"


def test_a_nul_character_anywhere_refuses_the_event_with_its_field() -> None:
    batch: list[Any] = [
        {"type": "identify", "userId": "u\x00"},
        {"type": "track", "userId": "u", "event": "x", "properties": {"tags": ["a", "b\x00"]}},
        {"type": "identify", "userId": "u", "traits": {"nick\x00": "n"}},
        {"type": "track", "userId": "u", "event": "x", "properties": {"path": "C:\\u0000"}},
    ]
    converted = convert(batch, make_request())
    assert [(bad.index, bad.field) for bad in converted.invalid] == [
        (0, "userId"),
        (1, "properties.tags.1"),
        (2, "traits.nick\x00"),
    ]
    assert all("NUL" in bad.reason for bad in converted.invalid)
    assert len(converted.records) == 1  # a backslash followed by "u0000" is just text
    assert nul_path({"context": {"ip": "1.2.3.4"}}) is None


def test_a_batch_reports_each_bad_event_by_index_and_keeps_the_good_in_order() -> None:
    batch: list[Any] = [
        {"type": "track", "userId": "u1", "event": "a"},
        {"type": "track", "userId": "u"},
        "not an object",
        {"type": "group", "userId": "u", "groupId": " "},
        {"type": "identify", "userId": "u2", "properties": "not an object"},
        {"type": "identify", "userId": "u3"},
        {"type": "track", "userId": "u4", "event": "big", "properties": {"b": "x" * 2000}},
        {"type": "purchase", "userId": "u5"},
        {"type": "track", "event": "nobody"},
        {"type": "track", "userId": "u\x00", "event": "x"},
    ]
    converted = convert(batch, make_request(max_event_bytes=1000))
    assert [(bad.index, bad.field, bad.cause) for bad in converted.invalid] == [
        (1, "event", "invalid"),
        (2, None, "invalid"),
        (3, "groupId", "missing_id"),
        (4, "properties", "invalid"),
        (6, None, "too_large"),
        (7, "type", "bad_type"),
        (8, "userId", "missing_id"),
        (9, "userId", "nul_character"),
    ]
    assert converted.invalid[4].too_large
    assert orjson.loads(converted.invalid[0].payload) == batch[1]
    assert [key for key, _ in converted.records] == [b"u1", b"u3"]
    assert converted.accepted == {"track": 1, "identify": 1}


def test_numeric_ids_become_strings() -> None:
    envelope = one("identify", {"userId": 42, "anonymousId": 4.5})
    assert isinstance(envelope, EventEnvelope)
    assert (envelope.user_id, envelope.anonymous_id) == ("42", "4.5")
    refused = one("identify", {"userId": True})
    assert isinstance(refused, Invalid)
    assert refused.field == "userId"


def test_a_numeric_id_beyond_64_bits_is_refused_not_rounded_into_another() -> None:
    # orjson reads both as 1.2345678901234568e+29: kept, two customers would become one id
    body = b"""[
        {"type": "track", "userId": 123456789012345678901234567890, "event": "a"},
        {"type": "track", "userId": 123456789012345678901234567891, "event": "a"},
        {"type": "track", "anonymousId": -9223372036854775809, "event": "a"},
        {"type": "group", "userId": "u", "groupId": 18446744073709551616},
        {"type": "track", "userId": 18446744073709551615, "event": "a", "messageId": 1e15},
        {"type": "track", "userId": "u", "event": "a", "properties": {"n": 1e300}}
    ]"""
    # between 2^53 and 1e16 orjson writes no exponent: 9007199254740993.0 became ...992.0
    below = b'[{"type": "track", "userId": 9007199254740993.0, "event": "a"}]'
    assert [bad.cause for bad in convert(parse_json(below), make_request()).invalid] == ["bad_id"]
    converted = convert(parse_json(body), make_request())
    assert [(bad.index, bad.field, bad.cause) for bad in converted.invalid] == [
        (0, "userId", "bad_id"),
        (1, "userId", "bad_id"),
        (2, "anonymousId", "bad_id"),
        (3, "groupId", "bad_id"),
    ]
    assert "as a string" in converted.invalid[0].reason
    kept = [orjson.loads(value) for _, value in converted.records]
    assert [(e["user_id"], e["message_id"]) for e in kept] == [
        ("18446744073709551615", "1000000000000000.0"),  # 64 bits: read exactly
        ("u", kept[1]["message_id"]),
    ]
    assert kept[1]["properties"] == {"n": 1e300}  # only ids are held to exactness
    single = convert(parse_json(body)[:1], make_request(), kind="track")
    assert [bad.cause for bad in single.invalid] == ["bad_id"]


def test_null_ids_are_absent_ids_and_long_ids_are_refused() -> None:
    sdk_style = {"userId": " u ", "anonymousId": None, "messageId": None, "event": "x"}
    envelope = one("track", sdk_style)
    assert isinstance(envelope, EventEnvelope)
    assert (envelope.user_id, envelope.anonymous_id) == ("u", None)
    blank = one("track", {"userId": "  ", "event": "x"})
    assert isinstance(blank, Invalid)
    long_id = one("track", {"userId": "u" * 513, "event": "x"})
    assert isinstance(long_id, Invalid)
    assert long_id.field == "userId"


def test_malformed_external_ids_are_refused_with_the_field() -> None:
    for external_ids in [
        "crm-1",
        [{"id": "x"}],
        [{"id": 5, "type": "crm_id"}],
        [{"id": " ", "type": "t"}],
        [{"id": "x", "type": "t", "collection": 3}],
    ]:
        body = {"userId": "u", "event": "x", "context": {"externalIds": external_ids}}
        refused = one("track", body)
        assert isinstance(refused, Invalid)
        assert refused.field == "context"
        assert "externalIds" in refused.reason


def test_the_openapi_document_describes_every_tracking_route_with_valid_examples() -> None:
    doc = document(get_openapi(title="t", version="1", routes=[]))
    paths = doc["paths"]
    assert set(paths) == {f"/v1/{k}" for k in CALL_TYPES} | {"/v1/batch", "/v1/import"}
    schemas = doc["components"]["schemas"]
    registry = Registry().with_resource(
        "urn:doc",
        Resource.from_contents({**doc, "$schema": Draft202012Validator.META_SCHEMA["$id"]}),
    )
    refs = orjson.dumps(doc).decode().split('"$ref":"')[1:]
    for ref in refs:  # every reference points at a component that exists
        assert ref.split('"')[0].removeprefix("#/components/schemas/") in schemas
    for kind in CALL_TYPES:
        operation = paths[f"/v1/{kind}"]["post"]
        assert {"200", "400", "401", "413", "429", "503"} <= set(operation["responses"])
        body = operation["requestBody"]["content"]["application/json"]
        schema = {**body["schema"], "$id": f"urn:call:{kind}"}
        rewritten = orjson.loads(
            orjson.dumps(schema).replace(b"#/components/schemas/", b"urn:doc#/components/schemas/")
        )
        Draft202012Validator(rewritten, registry=registry).validate(body["example"])
    batch = paths["/v1/batch"]["post"]["requestBody"]["content"]["application/json"]["example"]
    assert [e["type"] for e in batch["batch"]] == list(CALL_TYPES)
    assert doc["components"]["securitySchemes"]["writeKey"]["scheme"] == "basic"


async def _read(body: bytes, limit: int = 1000, encoding: bytes = b"gzip") -> bytes:
    """``read_body`` of one request carrying ``body`` in ``encoding``."""
    scope = {"headers": [(b"content-encoding", encoding)]}
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    return await read_body(scope, receive, limit)


async def test_a_gzip_body_is_inflated_whole_or_refused() -> None:
    event = b'{"userId": "u", "event": "e"}'
    assert await _read(gzip.compress(event)) == event
    # the format allows several members; each is inflated, none dropped
    assert await _read(gzip.compress(event[:10]) + gzip.compress(event[10:])) == event
    assert await _read(gzip.compress(event) + bytes(512)) == event  # zero padding, as gzip allows
    for broken in (gzip.compress(event)[:-4], gzip.compress(event) + b"junk", b"not gzip"):
        with pytest.raises(BadRequest, match="not valid gzip"):
            await _read(broken)
    many = b"".join(gzip.compress(b" ") for _ in range(64)) + gzip.compress(event)
    with pytest.raises(BadRequest, match="more than 64 members"):
        await _read(many, limit=10_000)
    with pytest.raises(PayloadTooLarge):
        await _read(gzip.compress(b"x" * 2000))


async def test_x_gzip_is_gzip_and_an_unknown_encoding_is_refused_by_name() -> None:
    event = b'{"userId": "u", "event": "e"}'
    assert await _read(gzip.compress(event), encoding=b"x-gzip") == event
    assert await _read(event, encoding=b"identity") == event
    with pytest.raises(UnsupportedMediaType) as refused:
        await _read(event, encoding=b"deflate")
    assert refused.value.status_code == 415
    assert refused.value.detail[0]["field"] == "Content-Encoding"


def test_a_lone_surrogate_escape_becomes_a_replacement_character() -> None:
    # a page that cuts an emoji in half sends this; the rest of its batch must not be refused
    body = b'{"batch": [{"event": "caf\\ud83d", "ok": "\\ud83d\\ude00"}]}'
    parsed = parse_json(body)
    assert parsed == {"batch": [{"event": "caf\ufffd", "ok": "\U0001f600"}]}
    deep = b'{"a": "\\ud83d", "b": ' + b"[" * 1_000 + b"]" * 1_000 + b"}"
    for malformed in (b'{"a": NaN}', b'{"a": "\\ud83d"', b"[1,]", deep):
        with pytest.raises(BadRequest, match="malformed JSON"):
            parse_json(malformed)


def test_a_batchs_context_and_integrations_count_in_each_events_size() -> None:
    big = {"page": {"title": "x" * 6000}}
    batch = [{"type": "track", "userId": "u", "event": "e"} for _ in range(3)]
    fits = convert(batch, make_request(context=big))
    assert len(fits.records) == 3
    assert not fits.invalid
    refused = convert(batch, make_request(context=big, integrations={"Mixpanel": "y" * 4000}))
    assert [bad.index for bad in refused.invalid] == [0, 1, 2]
    assert {bad.cause for bad in refused.invalid} == {"too_large"}
    assert "the batch's context and integrations add" in refused.invalid[0].reason


def test_a_batchs_integrations_are_merged_into_each_event() -> None:
    batch = [
        {"type": "track", "userId": "u", "event": "e"},
        {"type": "track", "userId": "u", "event": "e", "integrations": {"Mixpanel": False}},
    ]
    converted = convert(batch, make_request(integrations={"All": False, "Mixpanel": True}))
    first, second = envelopes(converted)
    assert first.integrations == {"All": False, "Mixpanel": True}
    assert second.integrations == {"All": False, "Mixpanel": False}


@pytest.mark.parametrize("depth", [300, 1_000])
def test_an_event_nested_too_deep_to_store_is_refused_alone(depth: int) -> None:
    """orjson reads 1,024 levels and writes 254; past Python's recursion limit even the dead
    letter's copy cannot be written out whole."""
    body = b'{"batch": [{"type": "track", "userId": "u", "event": "e", "properties": '
    body += b'{"k": ' * depth + b"1" + b"}" * depth + b'}, {"type": "track", "userId": "u", '
    body += b'"event": "e"}]}'
    converted = convert(parse_json(body)["batch"], make_request(max_event_bytes=100_000))
    ((bad),) = converted.invalid
    assert (bad.index, bad.field) == (0, None)
    assert "cannot be stored as JSON" in bad.reason
    assert bad.payload
    assert len(converted.records) == 1
