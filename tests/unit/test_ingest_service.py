"""Ingest's pure rules: skew correction, envelopes, per-event validation."""

from datetime import UTC, datetime, timedelta

from services.ingest.schemas import TrackCall
from services.ingest.service import (
    Invalid,
    correct_timestamp,
    derive_event_id,
    parse_call,
    to_envelope,
)

RECEIVED = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def test_event_id_is_stable_per_source_and_message() -> None:
    assert derive_event_id("web", "m-1") == derive_event_id("web", "m-1")
    assert derive_event_id("web", "m-1") != derive_event_id("app", "m-1")


def test_clock_skew_is_corrected_from_sent_at() -> None:
    # the client clock is 10 minutes fast: it says sent at 12:10 what we received at 12:00
    call = TrackCall.model_validate(
        {"userId": "u", "event": "e", "originalTimestamp": "2026-11-23T12:05:00Z"}
    )
    sent_at = RECEIVED + timedelta(minutes=10)
    assert correct_timestamp(call, RECEIVED, sent_at) == RECEIVED - timedelta(minutes=5)


def test_explicit_timestamp_wins_over_correction() -> None:
    call = TrackCall.model_validate(
        {"userId": "u", "event": "e", "timestamp": "2026-11-20T00:00:00Z"}
    )
    assert correct_timestamp(call, RECEIVED, RECEIVED) == datetime(2026, 11, 20, tzinfo=UTC)


def test_envelope_keeps_segment_fields_and_external_ids() -> None:
    call = TrackCall.model_validate(
        {
            "anonymousId": "a-1",
            "event": "Order Completed",
            "properties": {"revenue": 12},
            "context": {"externalIds": [{"id": "ux", "type": "wechat_unionid"}]},
            "messageId": "m-9",
        }
    )
    envelope = to_envelope(call, source_id="web", received_at=RECEIVED, batch_context={"ip": "x"})
    assert envelope.routing_id == "a-1"
    assert envelope.event == "Order Completed"
    assert envelope.external_ids[0].type == "wechat_unionid"
    assert envelope.context["ip"] == "x"
    assert envelope.event_id == derive_event_id("web", "m-9")


def test_missing_ids_and_oversize_events_are_invalid_with_reasons() -> None:
    missing = parse_call("track", {"event": "x"}, index=3, max_event_bytes=1000)
    assert isinstance(missing, Invalid)
    assert missing.index == 3
    assert "userId or anonymousId" in missing.reason
    big = parse_call("track", {"userId": "u", "event": "x" * 2000}, index=0, max_event_bytes=1000)
    assert isinstance(big, Invalid)
    assert big.too_large
    unknown = parse_call("nope", {"userId": "u"}, index=0, max_event_bytes=1000)
    assert isinstance(unknown, Invalid)
    assert unknown.field == "type"


def test_numeric_ids_become_strings() -> None:
    parsed = parse_call("identify", {"userId": 42}, index=0, max_event_bytes=1000)
    assert not isinstance(parsed, Invalid)
    assert parsed.user_id == "42"


def test_null_ids_are_absent_ids_and_long_ids_are_refused() -> None:
    sdk_style = {"userId": "u", "anonymousId": None, "messageId": None, "event": "x"}
    parsed = parse_call("track", sdk_style, index=0, max_event_bytes=10_000)
    assert not isinstance(parsed, Invalid)
    assert parsed.anonymous_id is None
    long_id = parse_call(
        "track", {"userId": "u" * 513, "event": "x"}, index=0, max_event_bytes=10_000
    )
    assert isinstance(long_id, Invalid)
    assert long_id.field == "userId"


def test_event_ids_are_uuid5_of_source_and_message() -> None:
    import uuid

    from services.ingest.service import EVENT_ID_NAMESPACE

    for source, message in [("site", "m-1"), ("app", "ü-∑"), ("", "")]:
        expected = uuid.uuid5(EVENT_ID_NAMESPACE, f"{source}\x1f{message}")
        assert derive_event_id(source, message) == str(expected)


def test_envelopes_built_without_revalidation_still_satisfy_the_contract() -> None:
    from shared.contracts import EventEnvelope, encode

    calls = [
        ("track", {"userId": "u", "event": "x", "properties": {"a": 1}}),
        ("page", {"anonymousId": "a", "name": "Home", "category": "Docs"}),
        ("group", {"userId": "u", "groupId": "g", "traits": {"n": 2}}),
        ("alias", {"userId": "u", "previousId": "p", "originalTimestamp": "2026-11-23T11:59:00Z"}),
        ("identify", {"userId": "u", "context": {"externalIds": [{"id": "x", "type": "crm_id"}]}}),
    ]
    for kind, body in calls:
        parsed = parse_call(kind, body, index=0, max_event_bytes=10_000)
        assert not isinstance(parsed, Invalid)
        envelope = to_envelope(parsed, source_id="s", received_at=RECEIVED, batch_sent_at=RECEIVED)
        assert EventEnvelope.model_validate_json(encode(envelope)) == envelope


def test_malformed_external_ids_are_refused_with_the_field() -> None:
    for external_ids in [
        "crm-1",
        [{"id": "x"}],
        [{"id": 5, "type": "crm_id"}],
        [{"id": " ", "type": "t"}],
    ]:
        body = {"userId": "u", "event": "x", "context": {"externalIds": external_ids}}
        parsed = parse_call("track", body, index=0, max_event_bytes=10_000)
        assert isinstance(parsed, Invalid)
        assert parsed.field == "context"
        assert "externalIds" in parsed.reason
