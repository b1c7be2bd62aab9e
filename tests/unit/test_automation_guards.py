"""The pure guards: consent, frequency caps, quiet hours across time zones and DST, holdouts."""

from datetime import UTC, datetime, time, timedelta

import pytest

from services.automation.guards import (
    Decision,
    Person,
    consent_allows,
    decide,
    frequency_capped,
    has_left,
    held_out,
    person_from_event,
    quiet_until,
    refreshed,
)
from services.automation.playbooks import FrequencyCap, Guards, QuietHours

NIGHT = QuietHours(start=time(21), end=time(8), channels=["sms", "email"])
UTC_PERSON = Person("UTC", frozenset())


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_consent_defaults_to_granted_and_reads_every_source() -> None:
    assert person_from_event({}, "UTC") == Person("UTC", frozenset())
    person = person_from_event(
        {
            "consent": {"sms": False, "email": True},
            "profile": {"traits": {"timezone": "Asia/Shanghai", "suppressed": ["coupon"]}},
            "tags": ["unsubscribed_email"],
        },
        "UTC",
    )
    assert person.timezone == "Asia/Shanghai"
    assert person.optouts == {"sms", "coupon", "email"}
    assert not consent_allows(person, "sms")
    assert consent_allows(person, "crm_task")
    blocked = person_from_event({"tags": ["do_not_contact"]}, "UTC")
    assert not any(consent_allows(blocked, ch) for ch in ("email", "sms", "crm_task"))


def test_scorings_contact_is_read_first_and_a_later_refusal_is_kept() -> None:
    data = {"contact": {"timezone": "Asia/Tokyo", "optouts": ["sms"]}, "timezone": "UTC"}
    person = person_from_event(data, "UTC")
    assert person == Person("Asia/Tokyo", frozenset({"sms"}))
    later = person_from_event({"contact": {"timezone": None, "optouts": ["email"]}}, "UTC")
    assert refreshed(person, later) == Person("UTC", frozenset({"sms", "email"}))
    # a redelivered older change (consent still granted) does not undo a refusal
    assert refreshed(refreshed(person, later), person).optouts == {"sms", "email"}


def test_unknown_time_zone_falls_back_to_the_default() -> None:
    assert person_from_event({"timezone": "Mars/Olympus"}, "Europe/Paris").timezone == (
        "Europe/Paris"
    )
    stored = Person("America/New_York", frozenset({"sms"}))
    assert Person.from_json(stored.as_json(), "UTC") == stored
    assert Person.from_json({}, "UTC") == UTC_PERSON


def test_frequency_cap_counts_sends_inside_the_window_only() -> None:
    cap = FrequencyCap(max=2, per=timedelta(days=1))
    now = at("2026-11-23T12:00:00")
    assert not frequency_capped([], now, cap)
    assert not frequency_capped([now - timedelta(hours=1)], now, cap)
    assert frequency_capped([now - timedelta(hours=1), now - timedelta(hours=23)], now, cap)
    assert not frequency_capped([now - timedelta(hours=1), now - timedelta(hours=25)], now, cap)
    assert not frequency_capped([now] * 10, now, None)
    # stamped by a worker whose clock is a second ahead: still a send of this window
    assert frequency_capped([now - timedelta(hours=1), now + timedelta(seconds=1)], now, cap)


@pytest.mark.parametrize(
    ("zone", "now", "expected"),
    [
        # no DST: Shanghai is UTC+8, 22:00 local -> next 08:00 local is 00:00 UTC
        ("Asia/Shanghai", "2026-11-23T14:00:00", "2026-11-24T00:00:00"),
        ("Asia/Shanghai", "2026-11-23T03:00:00", None),  # 11:00 local
        ("Asia/Shanghai", "2026-11-22T23:30:00", "2026-11-23T00:00:00"),  # 07:30 local
        # New York, the night DST starts (2026-03-08): 08:00 EDT is 12:00 UTC, not 13:00
        ("America/New_York", "2026-03-08T03:00:00", "2026-03-08T12:00:00"),
        ("America/New_York", "2026-03-07T03:00:00", "2026-03-07T13:00:00"),
        # the night DST ends (2026-11-01): 08:00 EST is 13:00 UTC
        ("America/New_York", "2026-11-01T02:00:00", "2026-11-01T13:00:00"),
        # London, DST ends 2026-10-25: 23:00 BST -> 08:00 GMT
        ("Europe/London", "2026-10-24T22:00:00", "2026-10-25T08:00:00"),
        # Auckland (southern hemisphere, DST starts 2026-09-27): 21:30 NZST -> 08:00 NZDT
        ("Pacific/Auckland", "2026-09-26T09:30:00", "2026-09-26T19:00:00"),
        ("UTC", "2026-11-23T20:59:59", None),
        ("UTC", "2026-11-23T21:00:00", "2026-11-24T08:00:00"),
    ],
)
def test_quiet_hours_postpone_to_the_next_local_morning(
    zone: str, now: str, expected: str | None
) -> None:
    result = quiet_until(at(now), zone, NIGHT, "sms")
    assert result == (at(expected) if expected else None)


def test_quiet_hours_end_inside_a_dst_gap_maps_after_the_gap() -> None:
    gap = QuietHours(start=time(1), end=time(2, 30), channels=["sms"])
    # 01:30 EST on 2026-03-08 = 06:30 UTC; 02:30 local does not exist that day -> 03:30 EDT
    assert quiet_until(at("2026-03-08T06:30:00"), "America/New_York", gap, "sms") == at(
        "2026-03-08T07:30:00"
    )


def test_quiet_hours_ending_in_a_repeated_hour_end_on_the_pass_now_is_in() -> None:
    late = QuietHours(start=time(22), end=time(1, 30), channels=["sms"])
    # New York falls back 2026-11-01 02:00 EDT -> 01:00 EST; 06:15 UTC is 01:15 EST, the
    # second pass: the first 01:30 (EDT, 05:30 UTC) is past, quiet hours end at 01:30 EST
    second_pass = quiet_until(at("2026-11-01T06:15:00"), "America/New_York", late, "sms")
    assert second_pass == at("2026-11-01T06:30:00")
    # the first pass (01:15 EDT) still ends at the first 01:30
    first_pass = quiet_until(at("2026-11-01T05:15:00"), "America/New_York", late, "sms")
    assert first_pass == at("2026-11-01T05:30:00")


def test_quiet_hours_in_an_unusable_zone_use_the_default_zone() -> None:
    # "GMT+8" is not an IANA name: raising here failed the whole dispatch batch
    evening = at("2026-11-23T14:00:00")  # 22:00 in Shanghai, 14:00 in UTC
    guards = Guards(quiet_hours=NIGHT, default_timezone="Asia/Shanghai")
    decision = decide("sms", Person("GMT+8", frozenset()), [], evening, guards)
    assert decision == Decision(
        "postponed", "quiet hours in Asia/Shanghai", at("2026-11-24T00:00:00")
    )
    assert quiet_until(evening, "GMT+8", NIGHT, "sms", "Asia/Shanghai") == at("2026-11-24T00:00:00")
    assert quiet_until(evening, "GMT+8", NIGHT, "sms") is None  # the default default is UTC


def test_quiet_hours_only_for_their_channels_and_daytime_windows() -> None:
    assert quiet_until(at("2026-11-23T23:00:00"), "UTC", NIGHT, "crm_task") is None
    lunch = QuietHours(start=time(12), end=time(14), channels=["email"])
    assert quiet_until(at("2026-11-23T12:30:00"), "UTC", lunch, "email") == at(
        "2026-11-23T14:00:00"
    )
    assert quiet_until(at("2026-11-23T14:00:00"), "UTC", lunch, "email") is None


def test_holdout_is_deterministic_and_close_to_its_share() -> None:
    shares = {"vip": 0.1}
    people = [f"person-{i}" for i in range(20_000)]
    first = [held_out(p, "vip", shares, "salt") for p in people]
    assert first == [held_out(p, "vip", shares, "salt") for p in people]
    assert 0.09 < sum(first) / len(people) < 0.11
    assert not any(held_out(p, "growth", shares, "salt") for p in people)
    resalted = [held_out(p, "vip", shares, "other") for p in people]
    assert resalted != first
    assert all(held_out(p, "vip", {"vip": 1.0}, "s") for p in people[:100])


def test_decide_orders_consent_then_cap_then_quiet_hours() -> None:
    guards = Guards(
        frequency_caps={"sms": FrequencyCap(max=1, per=timedelta(days=1))}, quiet_hours=NIGHT
    )
    night = at("2026-11-23T23:00:00")
    refused = Person("UTC", frozenset({"sms"}))
    assert decide("sms", refused, [night], night, guards).kind == "suppressed"
    assert decide("sms", UTC_PERSON, [night - timedelta(hours=2)], night, guards).kind == "capped"
    postponed = decide("sms", UTC_PERSON, [], night, guards)
    assert postponed.kind == "postponed"
    assert postponed.until == at("2026-11-24T08:00:00")
    assert decide("sms", UTC_PERSON, [], at("2026-11-23T10:00:00"), guards).kind == "send"
    assert decide("fax", UTC_PERSON, [], night, guards).kind == "suppressed"


def test_a_step_held_in_a_tier_its_person_has_left_is_not_sent() -> None:
    planned = (datetime(2026, 11, 23, 12, tzinfo=UTC), 3)
    at = planned[0]
    assert not has_left("at_risk", planned, None)  # no change seen since: the exit rule decides
    assert not has_left("at_risk", planned, ("at_risk", at, 3))
    assert has_left("at_risk", planned, ("growth", at, 4))  # back at the drop's time
    assert not has_left("at_risk", planned, ("growth", at, 2))  # an older change
    assert not has_left(None, planned, ("growth", at, 9))  # not held in a tier
