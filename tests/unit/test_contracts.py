"""Wire contracts: round trips, CloudEvents conformance, checked-in schemas."""

from pathlib import Path

from cloudevents.core.bindings.kafka import KafkaMessage, from_structured
from cloudevents.core.formats.json import JSONFormat

from shared.contracts import TierChangeEvent, decode, encode
from shared.schemas import stale_schemas
from shared.topics import ALL_TOPICS, PROFILES
from tests.unit.test_automation_rules import change


def test_tier_change_is_a_valid_structured_cloudevent_on_kafka() -> None:
    """The CloudEvents SDK's own Kafka binding parses what scoring publishes."""
    message = KafkaMessage(headers={}, key=b"p-1", value=encode(change("vip", from_tier=None)))
    event = from_structured(message, JSONFormat())
    assert event.get_specversion() == "1.0"
    assert event.get_type() == "com.tierflow.tier.changed"
    assert event.get_subject() == "p-1"
    assert event.get_id() == "c-1"
    data = event.get_data()
    assert isinstance(data, dict)
    assert data["to_tier"] == "vip"
    assert data["from_tier"] is None


def test_round_trip_keeps_nulls() -> None:
    original = change("growth", from_tier=None)
    assert decode(TierChangeEvent, encode(original)) == original


def test_registry_names_are_unique_and_profiles_compacted() -> None:
    names = [t.name for t in ALL_TOPICS]
    assert len(names) == len(set(names)) == 8
    assert PROFILES.configs["cleanup.policy"] == "compact"


def test_checked_in_schemas_are_current() -> None:
    assert stale_schemas(Path(__file__).parents[2] / "docs" / "schemas") == []


def test_a_spliced_resolved_event_decodes_like_the_model() -> None:
    from datetime import timedelta

    from shared.contracts import ResolvedEvent, decode, encode
    from shared.contracts.events import resolved_json
    from tests.factories import T0, make_event

    event = make_event(traits={"email": "a@b.io"}, properties={"n": [1, 2]})
    at = T0 + timedelta(seconds=1, microseconds=5)
    spliced = decode(ResolvedEvent, resolved_json("p-1", encode(event), at))
    assert spliced == ResolvedEvent(oneid="p-1", event=event, resolved_at=at)
