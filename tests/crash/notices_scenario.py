"""The scoring crash scenario with identity notices and the timer: events, then merges, then
erasures, then late events of absorbed and erased people, then silence (the clock moves past
every deadline), each phase run while workers are killed (-9) and restarted at once, and checked
against a pure replay of the processor over the same phases, then on the profiles topic, in
the read model and in a restarted worker's memory.

A merge's fold and an erasure's commands travel through ``tierflow.scoring.commands`` to another
partition, so their order against other inputs is not fixed within a phase. The phases keep
the replay deterministic: the run waits for each phase's states before it produces the next,
every winner absorbs one person, nobody merged is sent events of their own after the merge, and
an erased person's late events come after the erasure has been applied.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from services.scoring.models import ProfileRow
from services.scoring.processor import Record, is_live, process
from services.scoring.schemas import COMMAND, Fold, Forward, Reevaluate
from services.scoring.scorer import State
from shared.contracts import (
    IdentityErasure,
    IdentityMerge,
    Profile,
    ResolvedEvent,
    decode,
    encode,
)
from shared.topics import (
    EVENTS_RESOLVED,
    IDENTITY_MERGES,
    PROFILES,
    SCORING_COMMANDS,
    TIERS_CHANGES,
)
from tests.crash.scenario import (
    KINDS,
    MODEL,
    WEIGHTS,
    Result,
    _check_changes,
    changelog_states,
    every_change,
    make_stream,
    mismatched,
    stale_across_restart,
)
from tests.crash.scoring_worker import Worker, produce, read_until, set_clock, worker_env
from tests.factories import T0, make_resolved

Item = tuple[bytes, bytes]  # a key and a value, on the phase's topic
CLOCK = (T0 - timedelta(days=365)).timestamp()  # the workers' clock until a phase moves it


@dataclass(frozen=True)
class Phase:
    """What one phase produces, on one topic, and how many times it kills workers meanwhile:
    one at random, or (``kill_all``) every one, as a lost node would, so that whatever the
    notices moved in the last second (a flush interval) is processed again."""

    name: str
    topic: str
    items: list[Item]
    kills: int
    kill_all: bool = False
    clock: float | None = None  # the workers' clock moves here as the phase begins


@dataclass(frozen=True)
class Plan:
    """The phases, and everyone they concern."""

    phases: list[Phase]
    people: list[str]


def plan(people: int, events: int, seed: int) -> Plan:
    """A stream over ``people`` (phase 1); a sixth of them absorbed into another sixth, one
    winner each (phase 2); a third of the winners (with the people they absorbed) and as many
    others erased (phase 3); late events, ~4% redelivered: of absorbed people (forwarded to
    their winners, or dropped when erased), of erased people, and of untouched people (phase
    4); then no input while the clock stands 150 days after the stream began (phase 5)."""
    rng = random.Random(seed)
    stream = make_stream(people, events, seed)
    oneids = sorted({e.oneid for e in stream})
    rng.shuffle(oneids)
    pairs = len(oneids) // 6
    absorbed = dict(zip(oneids[:pairs], oneids[pairs : 2 * pairs], strict=True))
    untouched = oneids[2 * pairs :]
    erased_winners = list(absorbed.values())[: max(1, pairs // 3)]
    erased_others = untouched[: len(erased_winners)]
    merged_at = T0 + timedelta(days=91)
    merges = [
        (
            a.encode(),
            encode(
                IdentityMerge(
                    merge_id=f"merge-{a}",
                    winner=w,
                    absorbed=a,
                    cause_event_id=f"cause-{a}",
                    rule="email",
                    merged_at=merged_at,
                )
            ),
        )
        for a, w in absorbed.items()
    ]
    winners_of = {w: a for a, w in absorbed.items()}
    erasures = [
        (
            oneid.encode(),
            encode(
                IdentityErasure(
                    erasure_id=f"erasure-{oneid}",
                    oneid=oneid,
                    oneids=(oneid, winners_of[oneid]) if oneid in winners_of else (oneid,),
                    requested_at=merged_at + timedelta(days=1),
                )
            ),
        )
        for oneid in erased_winners + erased_others
    ]
    erased = set(erased_winners) | set(erased_others) | {winners_of[w] for w in erased_winners}
    # late events: never of a live winner (its own events and the folds of its absorbed
    # person's events would race through different partitions)
    senders = list(absorbed) + sorted(erased - set(absorbed)) + untouched[len(erased_others) :]
    late: list[ResolvedEvent] = []
    for n in range(max(1, events // 6)):
        kind = rng.choices(KINDS, WEIGHTS)[0]
        at = merged_at + timedelta(days=2 + 10 * n / events, seconds=rng.random())
        late.append(
            make_resolved(rng.choice(senders), message_id=f"late-{seed}-{n}", timestamp=at, **kind)
        )
        if rng.random() < 0.04:
            late.append(rng.choice(late[-50:]))
    return Plan(
        phases=[
            Phase("events", EVENTS_RESOLVED.name, _events(stream), kills=2),
            Phase("merges", IDENTITY_MERGES.name, merges, kills=1, kill_all=True),
            Phase("erasures", IDENTITY_MERGES.name, erasures, kills=1, kill_all=True),
            Phase("late events", EVENTS_RESOLVED.name, _events(late), kills=1, kill_all=True),
            # no input: the timer re-evaluates everyone whose deadline the clock passed
            Phase(
                "silence",
                SCORING_COMMANDS.name,
                [],
                kills=1,
                kill_all=True,
                clock=(T0 + timedelta(days=150)).timestamp(),
            ),
        ],
        people=oneids,
    )


def _due(states: dict[bytes, State], now: float) -> list[Record]:
    """The timer's commands: a re-evaluation of every live person whose deadline has passed."""
    return [
        Record(SCORING_COMMANDS.name, 0, n, key, _reevaluate(key, state["deadline"]))
        for n, (key, state) in enumerate(states.items())
        if is_live(state) and state["deadline"] is not None and state["deadline"] <= now
    ]


def _reevaluate(key: bytes, deadline: float) -> bytes:
    return Reevaluate(oneid=key.decode(), deadline=deadline).model_dump_json().encode()


def _events(events: list[ResolvedEvent]) -> list[Item]:
    return [(e.oneid.encode(), encode(e)) for e in events]


@dataclass
class Replay:
    """The processor's result after each phase, with its commands delivered until none is left."""

    after: list[dict[bytes, State]] = field(default_factory=list)
    change_ids: dict[str, str] = field(default_factory=dict)  # tier change id -> oneid
    profiles: dict[bytes, bytes | None] = field(default_factory=dict)  # last profile message
    folds: Counter[str] = field(default_factory=Counter)  # fold commands sent, by fold id


def replay(phases: list[Phase]) -> Replay:
    """Each phase's records through :func:`process`, then the commands they sent, in rounds."""
    states: dict[bytes, State] = {}
    result = Replay()
    now = CLOCK
    for phase in phases:
        now = phase.clock or now
        records = [Record(phase.topic, 0, n, k, v) for n, (k, v) in enumerate(phase.items)]
        while records := records or _due(states, now):
            outcome = process(records, states.get, MODEL, now)
            states.update(outcome.writes)
            records = []
            for sent in outcome.sends:
                if sent.topic == SCORING_COMMANDS.name:
                    records.append(Record(sent.topic, 0, len(records), sent.key, sent.value or b""))
                    result.folds.update(_fold_ids([sent.value]))
                elif sent.topic == TIERS_CHANGES.name:
                    change = orjson.loads(sent.value or b"{}")
                    result.change_ids[change["id"]] = change["subject"]
                elif sent.topic == PROFILES.name:
                    result.profiles[sent.key] = sent.value
        result.after.append(dict(states))
    return result


@dataclass
class NoticesResult(Result):
    """A :class:`Result`, with the phase whose states did not come out as replayed."""

    phase: str = ""
    wrong_profiles: list[str] = field(default_factory=list)
    wrong_rows: list[str] = field(default_factory=list)  # in the read model (Postgres)
    refolds: int = 0
    """Fold and forward commands sent again (a notice or late event processed again after a
    kill): each one's second copy must have been ignored by its id."""

    @property
    def ok(self) -> bool:
        return super().ok and not (self.phase or self.wrong_profiles or self.wrong_rows)


async def run(
    bootstrap: str,
    database_url: str,
    work_dir: Path,
    *,
    people: int,
    events: int,
    workers: int,
    partitions: int,
    seed: int,
    settle: float = 180.0,
) -> NoticesResult:
    """Produce each phase in chunks, killing and at once restarting random workers, and wait
    for the changelog to hold the replay's states before the next phase."""
    rng = random.Random(seed)
    setup = plan(people, events, seed)
    replayed = replay(setup.phases)
    app_id = f"scoring-notices-{uuid.uuid4().hex[:8]}"
    env = worker_env(
        bootstrap,
        database_url,
        app_id=app_id,
        work_dir=work_dir,
        partitions=partitions,
        clock=CLOCK,  # a year before the stream: no timer is due before the silence
    )
    result = NoticesResult(sum(len(p.items) for p in setup.phases), people, 0, 0.0)
    started = time.monotonic()
    running = [Worker(f"w{n}-0", env, work_dir) for n in range(workers)]
    try:
        await asyncio.gather(*(w.ready() for w in running))
        for phase, expected in zip(setup.phases, replayed.after, strict=True):
            if phase.clock is not None:
                set_clock(env, phase.clock)
            chunks = max(1, min(20, len(phase.items)))
            kill_at = set(rng.sample(range(max(1, chunks - 1)), phase.kills))
            size = -(-len(phase.items) // chunks)
            for chunk in range(chunks):
                await produce(
                    bootstrap, phase.topic, phase.items[chunk * size : (chunk + 1) * size]
                )
                # a moved clock: the timer ticks every 0.2 s, and its batch is killed unflushed
                await asyncio.sleep(rng.uniform(0.05, 0.3) + (0.3 if phase.clock else 0.0))
                if chunk in kill_at:
                    victims = (
                        range(len(running)) if phase.kill_all else [rng.randrange(len(running))]
                    )
                    for victim in victims:
                        running[victim].kill()
                        running[victim] = Worker(f"w{victim}-{phase.name}-{chunk}", env, work_dir)
                        result.kills += 1
            latest = await changelog_states(bootstrap, app_id, expected, timeout=settle, whole=True)
            result.mismatched = mismatched(latest, expected)
            if result.mismatched:
                result.phase = phase.name
                result.seconds = time.monotonic() - started
                result.divergence = [
                    f"after the {phase.name} phase, {key}: changelog "
                    f"{_summary(latest.get(key.encode()))}, "
                    f"replay {_summary(expected[key.encode()])}"
                    for key in result.mismatched[:5]
                ]
                return result
        result.seconds = time.monotonic() - started
        result.refolds = await refolds(bootstrap, setup.people, replayed.folds)
        result.wrong_profiles = await wrong_profiles(bootstrap, replayed.profiles)
        result.wrong_rows = await wrong_rows(database_url, replayed.profiles)
        result.divergence = [f"last profile not the replay's: {k}" for k in result.wrong_profiles]
        result.divergence += [f"read model row not the replay's: {k}" for k in result.wrong_rows]
        result.stale_in_memory = await stale_across_restart(
            running, env, work_dir, replayed.after[-1], settle=settle
        )
        # after the final restart: what the recovered worker sends is checked as well
        people_keys = dict.fromkeys(setup.people, 0)
        changes = await every_change(
            bootstrap,
            {person.encode() for person in setup.people},
            replayed.change_ids,
            timeout=settle,
        )
        _check_changes(result, changes, people_keys, replayed.change_ids)
        return result
    finally:
        for worker in running:
            worker.stop()


async def refolds(bootstrap: str, people: list[str], replayed: Counter[str]) -> int:
    """How many more fold commands the run sent than the replay did."""
    keys = {oneid.encode() for oneid in people}
    commands = await read_until(
        bootstrap,
        SCORING_COMMANDS.name,
        lambda _: False,
        keep=lambda r: r.key in keys,
        timeout=3,
    )
    sent = Counter(_fold_ids(r.value for r in commands))
    return sum(max(0, n - replayed[fold_id]) for fold_id, n in sent.items())


def _fold_ids(values: Iterable[bytes | None]) -> list[str]:
    """The id of each fold and each forwarded late event (what the winner dedups them by)."""
    commands = (COMMAND.validate_json(v) for v in values if v is not None)
    return [
        c.fold_id if isinstance(c, Fold) else c.event.event.event_id
        for c in commands
        if isinstance(c, Fold | Forward)
    ]


async def wrong_profiles(bootstrap: str, expected: dict[bytes, bytes | None]) -> list[str]:
    """People whose last message on tierflow.profiles is not the replay's last profile (a
    tombstone for the merged away and the erased); the replay's profiles carry the same times."""
    last: dict[bytes, bytes | None] = {}

    def done(records: list[Any]) -> bool:
        for record in records:
            last[record.key] = record.value
        records.clear()
        return all(
            key in last and _profile(last[key]) == _profile(v) for key, v in expected.items()
        )

    await read_until(bootstrap, PROFILES.name, done, keep=lambda r: r.key in expected, timeout=30)
    return sorted(
        key.decode()
        for key, value in expected.items()
        if _profile(last.get(key, b"")) != _profile(value)
    )


async def wrong_rows(
    database_url: str, expected: dict[bytes, bytes | None], *, timeout: float = 30.0
) -> list[str]:
    """People whose read-model row is not the replay's last profile (no row for the merged
    away and the erased), waited for until ``timeout``: the workers write it behind the topic."""
    want = {k.decode(): None if v is None else decode(Profile, v) for k, v in expected.items()}
    engine = create_async_engine(database_url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            async with engine.connect() as connection:
                rows = await connection.execute(
                    select(ProfileRow.oneid, ProfileRow.profile).where(
                        ProfileRow.oneid.in_(want), ProfileRow.profile.is_not(None)
                    )
                )
                held = {oneid: Profile.model_validate(profile) for oneid, profile in rows}
            wrong = sorted(oneid for oneid, profile in want.items() if held.get(oneid) != profile)
            if not wrong or time.monotonic() > deadline:
                return wrong
            await asyncio.sleep(0.5)
    finally:
        await engine.dispose()


def _summary(state: Any) -> str:
    if not state:
        return "nothing"
    if not is_live(state):
        return orjson.dumps(state).decode()
    return f"{state['events']} events, {state['changes']} changes, tier {state['tier']}"


def _profile(value: bytes | None) -> Any:
    return None if value is None else orjson.loads(value) if value else "absent"
