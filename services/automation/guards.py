"""The guards every send passes, as pure functions: consent, frequency caps, quiet hours,
holdouts. The database and the clock stay outside; callers pass what these need."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.automation.playbooks import CHANNELS, FrequencyCap, Guards, QuietHours

DO_NOT_CONTACT = "do_not_contact"


@dataclass(frozen=True, slots=True)
class Person:
    """What the guards need to know about a person: time zone and the channels refused."""

    timezone: str
    optouts: frozenset[str]

    def as_json(self) -> dict[str, Any]:
        """Stored with each action so delayed steps are guarded with what was known."""
        return {"timezone": self.timezone, "optouts": sorted(self.optouts)}

    @classmethod
    def from_json(cls, value: Mapping[str, Any] | None, default_timezone: str) -> Person:
        """The stored form back (missing means the documented defaults)."""
        value = value or {}
        return cls(value.get("timezone") or default_timezone, frozenset(value.get("optouts", ())))


def known_zone(name: object) -> str | None:
    """``name`` when it names a zone this host can load, else None: time zones come from
    traits and profiles, where any string passes (``"GMT+8"``)."""
    if not isinstance(name, str) or not name:
        return None
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None
    return name


def person_from_event(data: Mapping[str, Any], default_timezone: str) -> Person:
    """Read consent and time zone from a tier change's raw ``data``.

    Scoring sends ``data.contact`` (``timezone``, ``optouts``) from the person's traits. Other
    producers may send ``data.timezone`` / ``data.consent`` / ``data.suppressed``, or the same
    keys in ``data.profile`` and its ``traits``; tags count too (``do_not_contact``,
    ``unsubscribed_<channel>``). Every refusal found counts; the first time zone found wins.
    Defaults: the playbook file's ``default_timezone`` and consent granted on every channel.
    """
    profile = data.get("profile") if isinstance(data.get("profile"), Mapping) else {}
    assert isinstance(profile, Mapping)
    traits = profile.get("traits") if isinstance(profile.get("traits"), Mapping) else {}
    assert isinstance(traits, Mapping)
    contact = data.get("contact") if isinstance(data.get("contact"), Mapping) else {}
    assert isinstance(contact, Mapping)
    sources: list[Mapping[str, Any]] = [contact, data, profile, traits]
    timezone = next(
        (zone for src in sources if (zone := known_zone(src.get("timezone")))),
        default_timezone,
    )
    optouts: set[str] = set()
    refused = contact.get("optouts")
    if isinstance(refused, list):
        optouts.update(str(channel) for channel in refused)
    for src in sources:
        consent = src.get("consent")
        if isinstance(consent, Mapping):
            optouts.update(ch for ch, granted in consent.items() if granted is False)
        suppressed = src.get("suppressed")
        if isinstance(suppressed, list):
            optouts.update(str(ch) for ch in suppressed)
        if src.get(DO_NOT_CONTACT) is True:
            optouts.add(DO_NOT_CONTACT)
    tags = data.get("tags") if isinstance(data.get("tags"), list) else []
    assert isinstance(tags, list)
    for tag in tags:
        if tag == DO_NOT_CONTACT:
            optouts.add(DO_NOT_CONTACT)
        elif isinstance(tag, str) and tag.startswith("unsubscribed_"):
            optouts.add(tag.removeprefix("unsubscribed_"))
    return Person(timezone, frozenset(optouts))


def refreshed(stored: Person, latest: Person) -> Person:
    """What a pending step is guarded with once a later change of its person arrives: the
    latest time zone, and every refusal either knew. A refusal is never undone for steps
    already planned (a redelivered older change must not restore consent); playbooks started
    after a renewed consent start from it."""
    return Person(latest.timezone, stored.optouts | latest.optouts)


def has_left(
    hold_tier: str | None,
    planned: tuple[datetime, int],
    current: tuple[str, datetime, int] | None,
) -> bool:
    """True when a step held in ``hold_tier`` by the change at ``planned`` (time, sequence)
    belongs to a person whose latest change seen (``current``: tier, time, sequence) is later
    and elsewhere. The exit rule runs when the tier-change consumer reads the move; checked
    again at send time, a lagging consumer cannot let a win-back call go to someone who came
    back."""
    if hold_tier is None or current is None:
        return False
    tier, at, sequence = current
    return tier != hold_tier and planned < (at, sequence)


def consent_allows(person: Person, channel: str) -> bool:
    """False when the person refused this channel, or every contact."""
    return channel not in person.optouts and DO_NOT_CONTACT not in person.optouts


def frequency_capped(recent: Sequence[datetime], now: datetime, cap: FrequencyCap | None) -> bool:
    """True when ``cap.max`` sends on this channel already happened within ``cap.per``. A send
    stamped after ``now`` counts too: it was recorded by a worker whose clock is ahead."""
    if cap is None:
        return False
    since = now - cap.per
    return sum(1 for at in recent if since < at) >= cap.max


def usable_zone(name: object, default_timezone: str) -> str:
    """``name`` when it is a zone this host can load, else ``default_timezone``: a stored time
    zone that is not IANA (``"GMT+8"``) must not fail the dispatch batch it is guarded in."""
    return known_zone(name) or default_timezone


def _first_end_after(now: datetime, day: date, end: time, zone: ZoneInfo) -> datetime:
    """The first instant after ``now`` (UTC) at which the wall clock in ``zone`` reads ``end``,
    on ``day`` or else the day after.

    fold=0 comes first: the first pass of a repeated (fall-back) hour, and the later mapping of
    a time in a spring-forward gap. When that instant is already past, ``now`` is in the second
    pass of the repeated hour and quiet hours end on that pass (fold=1); without it the
    postponement was "until now", re-claimed and postponed again on every dispatch round.
    """
    candidates = (
        datetime.combine(day, end.replace(fold=0), tzinfo=zone),
        datetime.combine(day, end.replace(fold=1), tzinfo=zone),
    )
    for candidate in candidates:
        if candidate.astimezone(UTC) > now:
            return candidate.astimezone(UTC)
    return datetime.combine(day + timedelta(days=1), end.replace(fold=0), tzinfo=zone).astimezone(
        UTC
    )


def quiet_until(
    now: datetime,
    timezone: str,
    quiet: QuietHours | None,
    channel: str,
    default_timezone: str = "UTC",
) -> datetime | None:
    """The next allowed moment (UTC) when ``now`` is inside quiet hours, else None.

    Wall-clock arithmetic in the person's zone (``default_timezone`` when that name cannot be
    loaded), so DST days keep "08:00 local"; an end time that does not exist that day (spring
    forward) moves on by the gap, as a wall clock does (02:30 in a gap from 02:00 to 03:00 is
    03:30), and one inside a repeated hour (fall back) is the end on the pass ``now`` is in.
    """
    if quiet is None or channel not in quiet.channels or quiet.start == quiet.end:
        return None
    zone = ZoneInfo(usable_zone(timezone, default_timezone))
    local = now.astimezone(zone)
    clock = local.time().replace(tzinfo=None)
    overnight = quiet.start > quiet.end
    inside = (
        (clock >= quiet.start or clock < quiet.end)
        if overnight
        else (quiet.start <= clock < quiet.end)
    )
    if not inside:
        return None
    day = local.date() + timedelta(days=1) if overnight and clock >= quiet.start else local.date()
    return _first_end_after(now, day, quiet.end, zone)


def held_out(oneid: str, tier: str, holdout_shares: Mapping[str, float], salt: str) -> bool:
    """Deterministic: the same person in the same tier is always in or out of the holdout."""
    share = holdout_shares.get(tier, 0.0)
    if share <= 0:
        return False
    digest = hashlib.sha256(f"{salt}\x1f{tier}\x1f{oneid}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


DecisionKind = Literal["send", "suppressed", "capped", "postponed"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a due action now: send, drop (suppressed, capped), or wait until."""

    kind: DecisionKind
    detail: str | None = None
    until: datetime | None = None


def decide(
    channel: str, person: Person, recent: Sequence[datetime], now: datetime, guards: Guards
) -> Decision:
    """Consent first (a refusal is final), then the cap, then quiet hours (postpone)."""
    if channel not in CHANNELS:
        return Decision("suppressed", f"unknown channel {channel}")
    if not consent_allows(person, channel):
        return Decision("suppressed", f"no consent for {channel}")
    cap = next((c for name, c in guards.frequency_caps.items() if name == channel), None)
    if frequency_capped(recent, now, cap):
        assert cap is not None
        return Decision("capped", f"{cap.max} {channel} per {cap.per}")
    zone = usable_zone(person.timezone, guards.default_timezone)
    until = quiet_until(now, zone, guards.quiet_hours, channel)
    if until is not None:
        return Decision("postponed", f"quiet hours in {zone}", until)
    return Decision("send")
