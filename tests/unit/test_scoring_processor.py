"""The batch processor: batch boundaries never change results, merges, erasures, late events,
timer commands and dead letters — pure, no broker."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from services.scoring.deadlines import SLACK, Deadlines
from services.scoring.processor import ERASED, MERGED, Outcome, Record, Send, process
from services.scoring.rules import load_model
from services.scoring.schemas import (
    COMMAND,
    Fold,
    Forward,
    Reevaluate,
    ScoredEnvelope,
    ScoredEvent,
)
from services.scoring.scorer import DAY, State
from services.scoring.service import profile_of
from shared.contracts import IdentityErasure, IdentityMerge, ResolvedEvent, decode, encode
from shared.topics import (
    DEADLETTER,
    EVENTS_RESOLVED,
    IDENTITY_MERGES,
    PROFILES,
    SCORING_COMMANDS,
    TIERS_CHANGES,
)
from tests.factories import T0, make_resolved

MODEL = load_model()
BASE = T0.timestamp()


class Table:
    """A dict standing in for the Faust table, applying outcomes like the agent does."""

    def __init__(self) -> None:
        self.states: dict[bytes, State] = {}
        self.sent: list[tuple[str, bytes, bytes | None]] = []

    def run(self, records: list[Record], now: float = BASE) -> Outcome:
        outcome = process(records, self.states.get, MODEL, now)
        self.sent += [(s.topic, s.key, s.value) for s in outcome.sends]
        self.states.update(outcome.writes)
        return outcome

    def commands(self) -> list[Record]:
        """The commands sent so far, as records to feed back (and forget them)."""
        mine = [s for s in self.sent if s[0] == SCORING_COMMANDS.name]
        self.sent = [s for s in self.sent if s[0] != SCORING_COMMANDS.name]
        return [Record(t, 0, n, k, v) for n, (t, k, v) in enumerate(mine)]


def event(oneid: str, day: float = 0, **fields: Any) -> Record:
    resolved = make_resolved(oneid, timestamp=T0 + timedelta(days=day), **fields)
    return Record(EVENTS_RESOLVED.name, 0, 0, oneid.encode(), encode(resolved))


def notice(key: str, message: IdentityMerge | IdentityErasure) -> Record:
    return Record(IDENTITY_MERGES.name, 0, 0, key.encode(), encode(message))


def merge(winner: str, absorbed: str) -> IdentityMerge:
    return IdentityMerge(
        merge_id=str(uuid.uuid4()),
        winner=winner,
        absorbed=absorbed,
        cause_event_id="e",
        rule="email",
        merged_at=T0,
    )


def test_batch_boundaries_do_not_change_the_result() -> None:
    records = [event("a", day / 4, message_id=f"m{day}") for day in range(12)]
    records.insert(5, records[2])  # a redelivery
    whole, split = Table(), Table()
    whole.run(records)
    for start in range(0, len(records), 5):
        split.run(records[start : start + 5])
    assert whole.states == split.states
    changes = [s for s in whole.sent if s[0] == TIERS_CHANGES.name]
    assert changes == [s for s in split.sent if s[0] == TIERS_CHANGES.name]


def test_each_changed_person_gets_one_profile_per_batch() -> None:
    table = Table()
    outcome = table.run([event("a", message_id="1"), event("a", message_id="2"), event("b")])
    profiles = [s.key for s in outcome.sends if s.topic == PROFILES.name]
    assert profiles == [b"a", b"b"]
    assert outcome.sends[-1].topic == PROFILES.name  # profiles go last
    assert outcome.outcomes["scored"] == 3


def test_profiles_sent_are_the_contract_encoding_of_the_model_profile() -> None:
    records = [event("a", message_id="1"), event("a", message_id="2"), event("b")]
    outcome = process(records, {}.get, MODEL, BASE)
    built = [
        Send(PROFILES.name, key, encode(profile_of(key.decode(), state, MODEL)))
        for key, state in outcome.writes.items()
    ]
    assert built == [s for s in outcome.sends if s.topic == PROFILES.name]


def test_merge_folds_through_a_command_and_late_events_follow() -> None:
    table = Table()
    table.run([event("w", message_id="w1"), event("x", 1, message_id="x1")])
    table.run([notice("x", merge("w", "x"))])
    assert table.states[b"x"] == {MERGED: "w"}
    assert (PROFILES.name, b"x", None) in table.sent
    table.run(table.commands())
    assert table.states[b"w"]["events"] == 2
    late = event("x", 2, message_id="x2")
    table.run([late, late])  # a late event of the absorbed id, redelivered
    forwarded = table.run(table.commands())
    assert table.states[b"w"]["events"] == 3
    assert (forwarded.outcomes["scored"], forwarded.outcomes["duplicate"]) == (1, 1)
    assert table.states[b"x"] == {MERGED: "w"}


def test_late_events_of_an_absorbed_id_meet_the_winners_daily_cap() -> None:
    """Page views earn 1 point, at most 5 a day. Scored alone and folded in, the eight late
    views of x each earned their point past the cap w had reached that day."""

    def views(oneid: str, day: float, ids: range) -> list[Record]:
        return [event(oneid, day, message_id=f"v{n}", type="page", event=None) for n in ids]

    merged = Table()
    merged.run(views("w", 0, range(1)) + views("x", 0.5, range(1, 2)))
    merged.run([notice("x", merge("w", "x"))])
    merged.run(merged.commands())
    merged.run(views("x", 1, range(2, 10)))
    merged.run(merged.commands())
    alone = Table()
    alone.run(views("w", 0, range(1)) + views("w", 0.5, range(1, 2)) + views("w", 1, range(2, 10)))
    got, want = merged.states[b"w"], alone.states[b"w"]
    assert got["earned"] == want["earned"] == {"page_view": 6.0}
    assert got["engagement"] == pytest.approx(want["engagement"])
    assert got["days"] == want["days"]
    assert got["events"] == want["events"] == 10


def test_a_fold_for_a_winner_merged_since_is_passed_on() -> None:
    table = Table()
    table.run([event("a", message_id="a1"), event("b", message_id="b1"), event("c")])
    table.run([notice("b", merge("a", "b")), notice("a", merge("c", "a"))])
    for _ in range(3):
        table.run(table.commands())
    assert table.states[b"c"]["events"] == 3
    assert table.states[b"a"] == {MERGED: "c"}


def test_erasure_reaches_every_id_and_nothing_comes_back() -> None:
    table = Table()
    first = event("w", message_id="w1")
    table.run([first, event("x", message_id="x1")])
    table.run([notice("x", merge("w", "x"))])
    folds = table.commands()
    erasure = IdentityErasure(erasure_id="er", oneid="w", oneids=("w", "x"), requested_at=T0)
    table.run([notice("w", erasure)])
    table.run(table.commands())
    table.run(folds)  # a fold arriving after the erasure
    table.run([first])  # a redelivered old event
    assert table.states[b"w"] == {ERASED: "er"}
    assert table.states[b"x"] == {ERASED: "er"}
    profiles = [v for topic, key, v in table.sent if (topic, key) == (PROFILES.name, b"w")]
    assert profiles[-1] is None  # the last word on w's profile is a tombstone


def test_timer_command_reevaluates_only_when_still_due() -> None:
    table = Table()
    table.run([event("a", message_id="o", event="Order Completed", properties={"revenue": 10})])
    deadline = table.states[b"a"]["deadline"]
    command = Reevaluate(oneid="a", deadline=deadline).model_dump_json().encode()
    record = Record(SCORING_COMMANDS.name, 0, 0, b"a", command)
    early = table.run([record], now=deadline - 1)
    assert early.outcomes["reevaluated"] == 0
    late = table.run([record], now=BASE + 31 * DAY)
    assert late.outcomes["reevaluated"] == 1
    assert late.lateness == [BASE + 31 * DAY - deadline]
    assert [c.data.to_tier for c in late.changes] == ["at_risk"]


def test_records_the_model_cannot_apply_are_dead_lettered() -> None:
    table = Table()
    bad = Record(EVENTS_RESOLVED.name, 2, 7, b"a", b'{"oneid": 1}')
    outcome = table.run([bad, event("b")])
    assert outcome.outcomes["invalid"] == 1
    assert outcome.outcomes["scored"] == 1
    assert [s.topic for s in outcome.sends].count(DEADLETTER.name) == 1
    fold = Fold(fold_id="f", winner="w", absorbed="x", state={})
    assert COMMAND.validate_json(fold.model_dump_json()) == fold
    forward = Forward(winner="w", absorbed="x", event=decode(ScoredEvent, event("x").value or b""))
    assert COMMAND.validate_json(forward.model_dump_json()) == forward


def test_a_record_keyed_other_than_its_person_is_dead_lettered_not_fatal() -> None:
    """The state is stored and the profile published under the key: an empty, over-long or
    non-UTF-8 key failed the batch's profiles after every record was handled, and the worker
    crashed on the same record at every restart."""
    table = Table()
    good = event("p-1")
    value = good.value or b""
    keyed = [b"", b"k" * 65, b"\xff\xfe", b"p-2", None]
    records = [Record(EVENTS_RESOLVED.name, 0, n, key, value) for n, key in enumerate(keyed)]
    reevaluate = Reevaluate(oneid="p-1", deadline=BASE).model_dump_json().encode()
    records.append(Record(SCORING_COMMANDS.name, 0, 9, b"p-2", reevaluate))
    long_winner = Fold(fold_id="f", winner="w" * 65, absorbed="x", state={})
    records.append(
        Record(SCORING_COMMANDS.name, 0, 10, b"w" * 65, long_winner.model_dump_json().encode())
    )
    outcome = table.run([*records, good])
    assert outcome.outcomes["failed"] == len(records)
    assert outcome.outcomes["scored"] == 1
    assert [s.topic for s in outcome.sends].count(DEADLETTER.name) == len(records)
    assert list(table.states) == [b"p-1"]


def test_deadline_heap_pops_only_current_entries_in_order() -> None:
    heap = Deadlines()
    heap.set(b"a", 30.0)
    heap.set(b"b", 10.0)
    heap.set(b"a", 20.0)  # moved: the entry at 30 is stale
    heap.set(b"c", None)
    assert heap.pop_due(25.0, 10) == [(b"b", 10.0), (b"a", 20.0)]
    assert heap.pop_due(100.0, 10) == []


def test_deadline_heap_stays_within_twice_the_people_however_often_deadlines_move() -> None:
    """Each event moves its person's deadline; the superseded entries used to stay until their
    own time came (a day later), one per event: 157 bytes each, gigabytes a day at load."""
    heap = Deadlines()
    people = [f"p-{n}".encode() for n in range(200)]
    for step in range(100_000):
        heap.set(people[step % 200], 1_000_000.0 + step)
        assert heap.entries <= 2 * len(heap) + SLACK + 1
    assert len(heap) == 200
    due = heap.pop_due(10_000_000.0, 1000)
    assert [key for key, _ in due] == people  # each person once, at their latest deadline
    assert [at for _, at in due] == [1_000_000.0 + 99_800 + n for n in range(200)]


def test_the_timer_alone_emits_stage_changes_at_their_exact_moment() -> None:
    table = Table()
    table.run([event("a", message_id="w", event="Webinar Attended")])
    heap = Deadlines()
    changes = []
    for _ in range(40):  # the timer's loop: pop who is due, hand the agent a command
        heap.set(b"a", table.states[b"a"]["deadline"])
        ((key, due),) = heap.pop_due(BASE + 31 * DAY, 1)
        command = Reevaluate(oneid="a", deadline=due).model_dump_json().encode()
        changes += table.run([Record(SCORING_COMMANDS.name, 0, 0, key, command)], now=due).changes
        if due >= BASE + 30 * DAY:
            break
    assert [
        (
            (c.time.timestamp() - BASE) / DAY,
            c.data.from_tier,
            c.data.to_tier,
            c.data.from_stage,
            c.data.lifecycle_stage,
            c.data.cause.kind,
        )
        for c in changes
    ] == [
        (14, "prospect", "prospect", "new", "growing", "timer"),  # age 14 days
        (21, "prospect", "prospect", "growing", "declining", "timer"),  # silent 21 days
        (30, "prospect", "at_risk", "declining", "declining", "timer"),  # silent 30 days
    ]


BROWSER_CONTEXT = {
    "ip": "203.0.113.7",
    "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_1) Version/17.1 Safari/605.1.15",
    "library": {"name": "analytics.js", "version": "4.1.0"},
    "page": {"path": "/pricing", "referrer": "https://www.google.com/", "title": "Pricing"},
}


def test_scoring_reads_what_the_resolved_event_contract_holds() -> None:
    events = [
        make_resolved("p-1", context=BROWSER_CONTEXT, properties={"webinar": "w-1"}),
        make_resolved("p-2", type="page", event=None, properties={"path": "/pricing"}),
        make_resolved("p-3", type="identify", event=None, traits={"job_level": "director"}),
    ]
    for resolved in events:
        view = ScoredEvent.model_validate_json(encode(resolved))
        assert view.oneid == resolved.oneid
        read = set(ScoredEnvelope.model_fields)
        assert view.event.model_dump() == resolved.event.model_dump(include=read)


def test_scoring_refuses_what_the_contract_refuses_in_the_fields_it_reads() -> None:
    valid = orjson.loads(encode(make_resolved("p-1", context=BROWSER_CONTEXT)))
    breaks: list[tuple[str, str | None, Any]] = [
        ("oneid", None, ""),
        ("oneid", None, "x" * 65),
        ("schema_version", None, 2),
        ("event", "schema_version", 2),
        ("event", "event_id", None),
        ("event", "type", "click"),
        ("event", "event", 7),
        ("event", "properties", "not an object"),
        ("event", "traits", ["not", "an", "object"]),
        ("event", "timestamp", "yesterday"),
        ("event", "timestamp", "2026-11-01T12:00:00"),  # no time zone
        ("event", "received_at", None),
    ]
    for outer, inner, value in breaks:
        broken = orjson.loads(orjson.dumps(valid))
        if inner is None:
            broken[outer] = value
        else:
            broken[outer][inner] = value
        raw = orjson.dumps(broken)
        for contract in (ResolvedEvent, ScoredEvent):
            with pytest.raises(ValidationError):
                contract.model_validate_json(raw)
