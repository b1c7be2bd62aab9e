"""A batch of records through the model, as a pure function.

The worker reads each person's state once per batch, runs every record in order (so the result
does not depend on where batches start and end), then sends what the batch produced and writes
each changed person once. The crash test's replay runs the same function.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from pydantic import ValidationError

from services.scoring import service
from services.scoring.positions import POSITION
from services.scoring.rules import ScoringModel
from services.scoring.schemas import COMMAND, Erase, Fold, Forward, Reevaluate, ScoredEvent
from services.scoring.scorer import State
from shared.contracts import (
    IDENTITY_NOTICE,
    IdentityErasure,
    TierChangeEvent,
    decode,
    encode,
)
from shared.contracts.base import usable_oneid
from shared.deadletters import from_record
from shared.topics import (
    DEADLETTER,
    EVENTS_RESOLVED,
    IDENTITY_MERGES,
    PROFILES,
    SCORING_COMMANDS,
    TIERS_CHANGES,
)

log = logging.getLogger(__name__)

MERGED = "merged_into"
"""Marker key: this id was absorbed by the oneid it names; its late events are forwarded."""
ERASED = "erased"
"""Marker key: this id was erased; nothing about it is kept or recreated."""


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed message (the fields a dead letter names, too)."""

    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes | None


@dataclass(frozen=True, slots=True)
class Send:
    """A message to produce; ``value`` None is a tombstone."""

    topic: str
    key: bytes
    value: bytes | None


@dataclass
class Outcome:
    """What a batch produced: messages to send first, then each changed person's new value."""

    sends: list[Send] = field(default_factory=list)
    writes: dict[bytes, State] = field(default_factory=dict)
    outcomes: Counter[str] = field(default_factory=Counter)
    changes: list[TierChangeEvent] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    lateness: list[float] = field(default_factory=list)


def is_live(state: State | None) -> bool:
    """True for a scored person (not absent, merged away or erased, nor a position marker)."""
    return (
        state is not None and MERGED not in state and ERASED not in state and POSITION not in state
    )


class _Batch:
    """Runs one batch against a lookup of the table, keeping the batch's own writes."""

    def __init__(
        self, lookup: Callable[[bytes], State | None], model: ScoringModel, now: float
    ) -> None:
        self.lookup = lookup
        self.model = model
        self.now = now
        self.out = Outcome()

    def state(self, key: bytes) -> State | None:
        return self.out.writes[key] if key in self.out.writes else self.lookup(key)

    def send(self, topic: str, key: str | bytes, value: bytes | None) -> None:
        raw_key = key.encode() if isinstance(key, str) else key
        self.out.sends.append(Send(topic, raw_key, value))

    def changed(self, change: TierChangeEvent | None) -> None:
        if change is not None:
            self.out.changes.append(change)
            self.send(TIERS_CHANGES.name, change.subject, encode(change))

    def record(self, record: Record) -> None:
        if record.value is None:
            self.out.outcomes["ignored"] += 1
        elif record.topic == EVENTS_RESOLVED.name:
            resolved = decode(ScoredEvent, record.value)
            self.event(_keyed(record.key, resolved.oneid), resolved)
        elif record.topic == IDENTITY_MERGES.name:
            self.notice(record.value)
        elif record.topic == SCORING_COMMANDS.name:
            command = COMMAND.validate_json(record.value)
            target = command.oneid if isinstance(command, Erase | Reevaluate) else command.winner
            self.command(_keyed(record.key, target), command)
        else:
            raise ValueError(f"scoring does not consume {record.topic}")

    def event(self, key: bytes, resolved: ScoredEvent) -> None:
        current = self.state(key)
        if current is not None and ERASED in current:
            self.out.outcomes["erased"] += 1
            return
        if current is not None and MERGED in current:
            # a late event of an absorbed id: the winner scores it as its own
            forward = Forward(winner=current[MERGED], absorbed=resolved.oneid, event=resolved)
            self.send(SCORING_COMMANDS.name, forward.winner, forward.model_dump_json().encode())
            self.out.outcomes["forwarded"] += 1
            return
        self.score(key, current, resolved)

    def score(self, key: bytes, current: State | None, resolved: ScoredEvent) -> None:
        state, counted, change = service.score_event(current, resolved, self.model)
        if not counted:
            self.out.outcomes["duplicate"] += 1
            return
        self.out.outcomes["scored"] += 1
        self.out.writes[key] = state
        self.changed(change)
        if change is not None:
            self.out.latencies.append(self.now - resolved.event.received_at.timestamp())

    def notice(self, raw: bytes) -> None:
        notice = IDENTITY_NOTICE.validate_json(raw)
        if isinstance(notice, IdentityErasure):
            for oneid in dict.fromkeys((notice.oneid, *notice.oneids)):
                erase = Erase(erasure_id=notice.erasure_id, oneid=oneid)
                self.send(SCORING_COMMANDS.name, oneid, erase.model_dump_json().encode())
            self.out.outcomes["erasure"] += 1
            return
        key = notice.absorbed.encode()
        current = self.state(key)
        if current is not None and ERASED in current:
            return
        if is_live(current):
            fold = Fold(
                fold_id=f"merge:{notice.merge_id}",
                winner=notice.winner,
                absorbed=notice.absorbed,
                state=cast(State, current),
            )
            self.send(SCORING_COMMANDS.name, notice.winner, fold.model_dump_json().encode())
            self.send(PROFILES.name, key, None)
        self.out.writes[key] = {MERGED: notice.winner}
        self.out.outcomes["merge"] += 1

    def command(self, key: bytes, command: Fold | Forward | Erase | Reevaluate) -> None:
        current = self.state(key)
        if isinstance(command, Erase):
            self.out.writes[key] = {ERASED: command.erasure_id}
            self.send(PROFILES.name, key, None)
            self.out.outcomes["erased"] += 1
        elif current is not None and ERASED in current:
            self.out.outcomes["erased"] += 1
        elif isinstance(command, Fold | Forward) and current is not None and MERGED in current:
            # the winner was itself absorbed since: pass the command on to its winner
            onward = command.model_copy(update={"winner": current[MERGED]})
            self.send(SCORING_COMMANDS.name, onward.winner, onward.model_dump_json().encode())
        elif isinstance(command, Forward):
            self.score(key, current, command.event.model_copy(update={"oneid": command.winner}))
        elif isinstance(command, Fold):
            state, folded, change = service.fold_in(
                command.winner, current, command.state, command.fold_id, self.model
            )
            if folded:
                self.out.writes[key] = state
                self.changed(change)
            self.out.outcomes["folded" if folded else "refold"] += 1
        elif isinstance(command, Reevaluate):
            if not is_live(current) or current is None or current["deadline"] is None:
                return
            if current["deadline"] > self.now:
                return  # an event moved the deadline since the timer fired
            self.out.lateness.append(self.now - current["deadline"])
            state, change = service.reevaluate(command.oneid, current, self.now, self.model)
            self.out.writes[key] = state
            self.changed(change)
            self.out.outcomes["reevaluated"] += 1

    def profiles(self) -> None:
        for key, state in self.out.writes.items():
            if is_live(state):
                profile = service.profile_json(key.decode(), state, self.model)
                self.send(PROFILES.name, key, profile)


def _keyed(key: bytes | None, oneid: str) -> bytes:
    """The record's key, which must be the person it applies to: the state is stored and the
    profile published under it, so a key that is empty, too long or not the person's id would
    write a stranger's state, or fail the batch's profiles after every record was handled."""
    if key is None or not usable_oneid(oneid) or key != oneid.encode():
        raise ValueError(f"record key {key!r} is not the person it applies to ({oneid!r})")
    return key


def process(
    records: Iterable[Record],
    lookup: Callable[[bytes], State | None],
    model: ScoringModel,
    now: float,
) -> Outcome:
    """Run ``records`` in order over the states ``lookup`` returns; nothing is mutated.

    A record the model cannot apply becomes a dead letter with its cause and never stops the
    batch. The outcome's sends end with the latest profile of every changed person.
    """
    batch = _Batch(lookup, model, now)
    for record in records:
        try:
            batch.record(record)
        except Exception as error:
            outcome = "invalid" if isinstance(error, ValidationError) else "failed"
            batch.out.outcomes[outcome] += 1
            log.warning("dead-lettering %s record: %r", record.topic, error)
            letter = from_record("scoring", cast(Any, record), error)
            batch.send(DEADLETTER.name, record.key, encode(letter))
    batch.profiles()
    return batch.out
