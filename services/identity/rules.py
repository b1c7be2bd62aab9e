"""Identity rules as pure functions: normalising identifiers, and how a batch of events resolves.

No I/O here. The worker loads the part of the graph a batch touches, calls :func:`plan_batch`, and
writes the plan back in one transaction. The rules themselves (priority, per-type limits, blocked
values) are data, loaded from YAML by :func:`load_rules`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import phonenumbers
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.contracts import EventEnvelope

IdentifierKey = tuple[str, str]
"""(type, normalised value): the unit the graph links to persons."""

OTHER_TYPES = "*"
"""In ``priority`` and ``limits``: every identifier type not named explicitly."""

DEFAULT_RULES_PATH = Path(__file__).with_name("default_rules.yaml")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_TYPE_LENGTH = 64
MAX_VALUE_LENGTH = 512
"""The graph's columns (``identifiers.id_type`` and ``id_value``): a longer identifier could not
be stored, and failed its whole batch before it was dropped like junk."""
PHONE_EXTENSION = ";ext="
"""Between a phone's E.164 number and its extension (RFC 3966)."""


class Blocked(BaseModel):
    """Values that must never identify anyone."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    values: frozenset[str] = Field(
        default=frozenset(), description="Exact values, any type, compared case-insensitively."
    )
    patterns: dict[str, tuple[str, ...]] = Field(
        default_factory=dict,
        description="Regexes per identifier type ('*' for all), matched on the normalised value.",
    )

    @field_validator("values")
    @classmethod
    def _lowercase(cls, values: frozenset[str]) -> frozenset[str]:
        return frozenset(v.strip().lower() for v in values)

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for id_type, regexes in patterns.items():
            for regex in regexes:
                try:
                    re.compile(regex)
                except re.error as exc:
                    raise ValueError(f"blocked pattern {regex!r} for {id_type}: {exc}") from exc
        return patterns


class IdentityRules(BaseModel):
    """Which identifier wins, how many of each a person may have, and what is junk."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    priority: tuple[str, ...] = Field(
        description="Identifier types, strongest first; '*' places every unnamed type."
    )
    limits: dict[str, int] = Field(
        description="Most identifiers of a type one person may hold; '*' for unnamed types.",
    )
    blocked: Blocked = Field(default_factory=Blocked)

    @model_validator(mode="after")
    def _consistent(self) -> IdentityRules:
        if OTHER_TYPES not in self.priority:
            raise ValueError("priority must contain '*' (where unnamed identifier types rank)")
        if len(set(self.priority)) != len(self.priority):
            raise ValueError("priority names a type twice")
        if any(limit < 1 for limit in self.limits.values()):
            raise ValueError("every limit must be at least 1")
        return self

    @cached_property
    def _ranks(self) -> dict[str, int]:
        return {id_type: n for n, id_type in enumerate(self.priority)}

    @cached_property
    def _patterns(self) -> dict[str, list[re.Pattern[str]]]:
        return {t: [re.compile(p) for p in ps] for t, ps in self.blocked.patterns.items()}

    def rank(self, id_type: str) -> int:
        """Position in the priority order (lower is stronger)."""
        return self._ranks.get(id_type, self._ranks[OTHER_TYPES])

    def limit(self, id_type: str) -> int | None:
        """How many identifiers of this type one person may hold (None: no limit)."""
        return self.limits.get(id_type, self.limits.get(OTHER_TYPES))

    @cached_property
    def canonical(self) -> Callable[[str, str, str | None], str | None]:
        """``(type, raw value, phone region)`` → the normalised value, None if unusable or
        blocked; memoised, because the same cookies and ids come back event after event."""

        @lru_cache(maxsize=200_000)
        def canonical(id_type: str, raw: str, region: str | None) -> str | None:
            value = normalize(id_type, raw, region=region)
            return None if value is None or self.is_blocked(id_type, value) else value

        return canonical

    @cached_property
    def identifiers(
        self,
    ) -> Callable[[RawIdentifiers, str | None], tuple[IdentifierKey, ...]]:
        """What an event's raw identifiers resolve to (see :func:`identifiers_of`), memoised as a
        whole: the same browsers and accounts come back event after event, and working the
        list out again cost a tenth of the worker's CPU."""

        @lru_cache(maxsize=100_000)
        def identifiers(raw: RawIdentifiers, region: str | None) -> tuple[IdentifierKey, ...]:
            return _identifiers(raw, self, region)

        return identifiers

    def is_blocked(self, id_type: str, value: str) -> bool:
        """True for junk that must not link anyone (shared test accounts, 'null', ...). A phone
        is judged with and without its extension: a junk number stays junk behind one."""
        values = {value}
        if id_type == "phone":
            values.add(value.partition(PHONE_EXTENSION)[0])
        if any(v.lower() in self.blocked.values for v in values):
            return True
        patterns = [*self._patterns.get(id_type, ()), *self._patterns.get(OTHER_TYPES, ())]
        return any(p.search(v) for p in patterns for v in values)


def load_rules(path: Path = DEFAULT_RULES_PATH) -> IdentityRules:
    """Parse and validate a rules file (raises pydantic.ValidationError with the field)."""
    raw: Any = yaml.safe_load(path.read_text())
    return IdentityRules.model_validate(raw)


def normalize(id_type: str, value: str, *, region: str | None = None) -> str | None:
    """The canonical form of an identifier value, or None when it cannot identify anyone.

    Emails are trimmed and lowercased; phones become E.164 (numbers without a country code are
    read in ``region``) with any extension kept, RFC 3966 style (``+16502530000;ext=123``):
    people behind one switchboard differ only by it, and without it they merged. Everything
    else is trimmed. Junk is judged later by the rules.
    """
    cleaned = value.strip()
    if not cleaned:
        return None
    if id_type == "email":
        cleaned = cleaned.lower()
        return cleaned if EMAIL.match(cleaned) else None
    if id_type == "phone":
        try:
            number = phonenumbers.parse(cleaned, region)
        except phonenumbers.NumberParseException:
            return None
        if not phonenumbers.is_valid_number(number):
            return None
        e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        extension = phonenumbers.normalize_digits_only(number.extension or "")
        return f"{e164}{PHONE_EXTENSION}{extension}" if extension else e164
    return cleaned


RawIdentifiers = tuple[
    str | None,
    str | None,
    str | None,
    str | None,
    str | None,
    str | None,
    tuple[tuple[str, str, str | None], ...],
]
"""What an event shows that can identify it: userId, email, phone, device id, anonymousId,
previousId (each None unless a string) and its externalIds as (type, id, collection)."""


def identifiers_of(
    event: EventEnvelope, rules: IdentityRules, *, region: str | None = None
) -> list[IdentifierKey]:
    """Every usable identifier an event shows, strongest first, without duplicates or junk.

    A WeChat openid is only unique within one app, so it is scoped by the app id Segment carries
    in ``externalIds[].collection`` (an openid without one is dropped); a unionid is global.
    """
    traits, externals = event.traits, event.external_ids
    device = event.context.get("device")
    raw: RawIdentifiers = (
        event.user_id,
        _text(traits.get("email")),
        _phone_text(traits.get("phone")),
        _text(device.get("id")) if isinstance(device, dict) else None,
        event.anonymous_id,
        event.previous_id,
        tuple((e.type, e.id, e.collection) for e in externals) if externals else (),
    )
    return list(rules.identifiers(raw, region))


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _phone_text(value: object) -> str | None:
    """A phone trait as text: SDK users often send the number as a JSON number."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _text(value)


def _identifiers(
    raw: RawIdentifiers, rules: IdentityRules, region: str | None
) -> tuple[IdentifierKey, ...]:
    user_id, email, phone, device_id, anonymous_id, previous_id, externals = raw
    candidates: list[tuple[str, str | None]] = [
        ("user_id", user_id),
        ("email", email),
        ("phone", phone),
        ("device_id", device_id),
        ("anonymous_id", anonymous_id),
        ("anonymous_id", previous_id),
    ]
    for external_type, external_id, collection in externals:
        id_type = external_type.strip().lower()
        if id_type == "wechat_openid":
            # judged bare, then scoped: "wx5f3a:undefined" is not a blocked value, "undefined"
            # is, and mini-programs send it when wx.login fails
            app = collection.strip() if collection else ""
            openid = rules.canonical(id_type, external_id, region)
            if not app or app.lower() in rules.blocked.values or openid is None:
                continue  # unique only within its app: without one it identifies no one
            candidates.append((id_type, f"{app}:{openid}"))
        else:
            candidates.append((id_type, external_id))
    seen: dict[IdentifierKey, None] = {}
    for id_type, value in candidates:
        if value is None or len(id_type) > MAX_TYPE_LENGTH:
            continue
        usable = rules.canonical(id_type, value, region)
        if usable is not None and len(usable) <= MAX_VALUE_LENGTH:
            seen.setdefault((id_type, usable), None)
    return tuple(sorted(seen, key=lambda key: rules.rank(key[0])))


TRAIT_IDENTIFIERS = ("email", "phone")
"""Traits that are identifiers too (see :func:`identifiers_of`)."""


def erased_traits(
    event: EventEnvelope, erased: set[IdentifierKey], rules: IdentityRules, region: str | None
) -> frozenset[str]:
    """The identifier traits of an event whose value was erased. Someone else's identify call
    that shows an erased email (a shared inbox, a typo) is resolved without it, and must not
    store it again in plain text as that person's trait."""
    names = []
    for name in TRAIT_IDENTIFIERS:
        raw = (
            _phone_text(event.traits.get(name))
            if name == "phone"
            else _text(event.traits.get(name))
        )
        usable = rules.canonical(name, raw, region) if raw is not None else None
        if usable is not None and (name, usable) in erased:
            names.append(name)
    return frozenset(names)


def suppression_forms(key: IdentifierKey) -> tuple[IdentifierKey, ...]:
    """The forms of an identifier an erasure may have suppressed: itself, and for a phone with
    an extension the number without it. Links stored before extensions were kept hold the plain
    number, and so do the digests erasing them; the same phone sent with its extension must not
    bring the erased person back."""
    id_type, value = key
    if id_type == "phone" and PHONE_EXTENSION in value:
        return key, (id_type, value.partition(PHONE_EXTENSION)[0])
    return (key,)


def without_erased(
    keyed: list[list[IdentifierKey]], erased: set[IdentifierKey]
) -> tuple[list[list[IdentifierKey]], list[bool]]:
    """Each event's identifiers without the erased ones, and whether the event is dropped
    whole: when its strongest identifier was erased (the erased person came back), or nothing
    else is left. An event of someone else that also shows an erased identifier (a cookie or a
    device shared with the erased person) is resolved on the rest: dropping it lost every
    later event of a live person."""
    kept: list[list[IdentifierKey]] = []
    dropped: list[bool] = []
    for keys in keyed:
        rest = [key for key in keys if key not in erased]
        whole = bool(keys) and (keys[0] in erased or not rest)
        kept.append([] if whole else rest)
        dropped.append(whole)
    return kept, dropped


@dataclass(frozen=True, slots=True)
class Merge:
    """``absorbed`` joins ``winner`` because of the event at ``event_index``."""

    winner: str
    absorbed: str
    event_index: int
    rule: str = "shared_identifier"


@dataclass(frozen=True, slots=True)
class Refusal:
    """The identifier ``key`` was dropped from event ``event_index``: keeping it would break
    ``rule`` (``limit:<type>``). ``kept`` is the person the event resolved to (None if new) and
    ``other`` the person the identifier belongs to (None if it was new)."""

    event_index: int
    key: IdentifierKey
    rule: str
    other: str | None


@dataclass(slots=True)
class Graph:
    """The part of the identity graph a batch touches, as the planner sees and changes it.

    ``links`` maps identifiers to live persons; ``created`` (creation time) and ``counts`` (how
    many identifiers of each type a person holds) are needed only for persons an event could
    grow or merge: see :func:`needs_counts`.
    """

    links: dict[IdentifierKey, str] = field(default_factory=dict)
    created: dict[str, datetime] = field(default_factory=dict)
    counts: dict[str, Counter[str]] = field(default_factory=dict)


@dataclass(slots=True)
class BatchPlan:
    """What a batch does to the graph, and each event's OneID (None: nothing usable)."""

    oneids: list[str | None] = field(default_factory=list)
    new_persons: dict[str, datetime] = field(default_factory=dict)
    new_links: dict[IdentifierKey, str] = field(default_factory=dict)
    merges: list[Merge] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)

    def root_of(self, oneid: str) -> str:
        """Where a OneID of this batch ended up after the batch's own merges."""
        if not self.merges:
            return oneid
        absorbed_by = {m.absorbed: m.winner for m in self.merges}
        while oneid in absorbed_by:
            oneid = absorbed_by[oneid]
        return oneid


def needs_counts(batch: Sequence[list[IdentifierKey]], links: dict[IdentifierKey, str]) -> set[str]:
    """Persons whose per-type counts and creation time the planner may need: those an event
    could grow or merge.

    An event whose identifiers all belong to one person already changes nothing, which is the
    common, warm case; it needs no counts.
    """
    wanted: set[str] = set()
    for keys in batch:
        owners = {links.get(k) for k in keys}  # None stands for the identifiers nobody holds
        if len(owners) > 1:  # two persons, or a person and a new identifier
            wanted.update(owner for owner in owners if owner is not None)
    return wanted


def plan_batch(
    batch: Sequence[tuple[list[IdentifierKey], datetime]],
    graph: Graph,
    rules: IdentityRules,
    new_oneid: Callable[[], str],
) -> BatchPlan:
    """Resolve events in order; the graph is copied, not changed.

    Each event's identifiers are taken strongest first. One joins the event's group unless the
    group would then hold more identifiers of some type than the rules allow: that identifier is
    dropped from the event and the refusal recorded. The persons left in the group merge into the
    oldest of them; identifiers new to the graph join it too (a new person when there is none).
    """
    links = dict(graph.links)
    created = dict(graph.created)
    counts = {oneid: Counter(c) for oneid, c in graph.counts.items()}
    plan = BatchPlan()
    for index, (keys, seen_at) in enumerate(batch):
        known = _sole_owner(keys, links)
        if known is not None:
            plan.oneids.append(known)  # the common case: a known person, nothing to change
            continue
        owners, fresh = _group(index, keys, links, counts, rules, plan.refusals)
        if not owners and not fresh:
            plan.oneids.append(None)
            continue
        if owners:
            winner = min(owners, key=lambda o: (created[o], o))
        else:
            winner = new_oneid()
            created[winner] = seen_at
            counts[winner] = Counter()
            plan.new_persons[winner] = seen_at
        for absorbed in owners:
            if absorbed == winner:
                continue
            plan.merges.append(Merge(winner, absorbed, index))
            for key, owner in links.items():
                if owner == absorbed:
                    links[key] = winner
                    if key in plan.new_links:
                        plan.new_links[key] = winner
            counts[winner] += counts.pop(absorbed)
        for key in fresh:
            links[key] = winner
            plan.new_links[key] = winner
            counts[winner][key[0]] += 1
        plan.oneids.append(winner)
    return plan


def _sole_owner(keys: list[IdentifierKey], links: dict[IdentifierKey, str]) -> str | None:
    """The person holding every one of ``keys``, if they are all held and by one person."""
    owner: str | None = None
    for key in keys:
        held_by = links.get(key)
        if held_by is None or (owner is not None and held_by != owner):
            return None
        owner = held_by
    return owner


def _group(
    index: int,
    keys: list[IdentifierKey],
    links: dict[IdentifierKey, str],
    counts: dict[str, Counter[str]],
    rules: IdentityRules,
    refusals: list[Refusal],
) -> tuple[list[str], list[IdentifierKey]]:
    """The persons and new identifiers an event joins, strongest identifier first, dropping
    (and recording) each identifier that would break a limit."""
    owners: list[str] = []
    fresh: list[IdentifierKey] = []
    group: Counter[str] = Counter()
    for key in keys:
        owner = links.get(key)
        if owner is not None and owner in owners:
            continue
        adding = counts.setdefault(owner, Counter()) if owner else Counter({key[0]: 1})
        broken = _broken_limit(group, adding, rules)
        if broken is not None:
            refusals.append(Refusal(index, key, f"limit:{broken}", owner))
            continue
        group += adding
        if owner is None:
            fresh.append(key)
        else:
            owners.append(owner)
    return owners, fresh


def _broken_limit(group: Counter[str], adding: Counter[str], rules: IdentityRules) -> str | None:
    """The first identifier type whose limit ``group + adding`` would exceed, if any.

    A type the group holds none of is never broken by one person's own identifiers: a person
    who grew before the rules were tightened keeps what they hold (they were refused by their
    own identifiers, their event going to a new person or to the dead letters), and only
    what would add to it is refused."""
    for id_type, n in adding.items():
        limit = rules.limit(id_type)
        if limit is not None and group[id_type] and group[id_type] + n > limit:
            return id_type
    return None
