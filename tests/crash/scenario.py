"""The scoring crash scenario: a stream with redelivery, workers killed with kill -9 at random
points and restarted at once, and a check against a pure replay of the model.

Used by ``tests/crash`` (a small stream) and ``bench/scoring_crash.py`` (~50k events).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Container, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord

from services.scoring.app import people_changelog
from services.scoring.processor import Record, is_live, process
from services.scoring.rules import load_model
from services.scoring.scorer import State, each_seen, seen_token
from services.scoring.service import profile_of
from shared.contracts import ResolvedEvent, TierChangeEvent, decode, encode
from shared.topics import EVENTS_RESOLVED, TIERS_CHANGES
from tests.crash.scoring_worker import Worker, produce, read_until, worker_env
from tests.factories import T0, make_resolved
from tests.support.services import reading_from_start

MODEL = load_model()
REGROUP_SECONDS = 60  # well past the workers' session timeout (a dead member leaves the group)
LINGER_SECONDS = 2.0  # tier changes read on after the last expected one, to see late extras
NEVER = 1e9  # a flush interval no run reaches (not even the first batch's time since 0)
KINDS: list[dict[str, Any]] = [
    {"type": "page", "event": None, "properties": {"path": "/docs"}},
    {"type": "page", "event": None, "properties": {"path": "/pricing"}},
    {"event": "Webinar Attended"},
    {"event": "Email Opened"},
    {"event": "Form Submitted"},
    {"event": "Coupon Applied"},
    {"event": "Complaint Filed"},
    {"event": "Order Completed", "properties": {"revenue": 250}},
    {"event": "Order Completed", "properties": {"revenue": 3000}},
    {"type": "identify", "event": None, "traits": {"job_level": "director"}},
]
WEIGHTS = [20, 6, 6, 10, 3, 2, 1, 2, 1, 2]


def make_stream(people: int, events: int, seed: int) -> list[ResolvedEvent]:
    """``events`` events over ``people`` people across 90 days, ~4% of them redelivered later."""
    rng = random.Random(seed)
    prefix = uuid.UUID(int=rng.getrandbits(128)).hex[:8]
    oneids = [f"crash-{prefix}-{n}" for n in range(people)]
    stream: list[ResolvedEvent] = []
    for n in range(events):
        kind = rng.choices(KINDS, WEIGHTS)[0]
        at = T0 + timedelta(days=90 * n / events, seconds=rng.random())
        stream.append(
            make_resolved(rng.choice(oneids), message_id=f"{prefix}-{n}", timestamp=at, **kind)
        )
        if stream and rng.random() < 0.04:
            stream.append(rng.choice(stream[-200:]))  # a redelivery, a little later
    return stream


def replay(
    stream: list[ResolvedEvent],
) -> tuple[dict[bytes, State], dict[str, int], dict[str, str]]:
    """The pure model over the same events (per person, in stream order): the final states,
    each person's number of changes, and the id of every change it published (to its oneid)."""
    states: dict[bytes, State] = {}
    records = [
        Record(EVENTS_RESOLVED.name, 0, n, r.oneid.encode(), encode(r))
        for n, r in enumerate(stream)
    ]
    outcome = process(records, states.get, MODEL, 0.0)
    states.update(outcome.writes)
    changes = {key.decode(): state["changes"] for key, state in outcome.writes.items()}
    ids = {
        change["id"]: change["subject"]
        for change in (
            orjson.loads(s.value) for s in outcome.sends if s.topic == TIERS_CHANGES.name
        )
    }
    return dict(outcome.writes), changes, ids


@dataclass(frozen=True)
class Replayed:
    """A stream for a fresh scoring app, what a pure replay of the model makes of it, and the
    environment of that app's workers: their clock stands a year before the stream, so no timer
    is ever due and their result must equal the replay."""

    stream: list[ResolvedEvent]
    expected: dict[bytes, State]
    changes: dict[str, int]
    change_ids: dict[str, str]
    app_id: str
    env: dict[str, str]


def replayed(
    bootstrap: str,
    database_url: str,
    work_dir: Path,
    *,
    name: str,
    partitions: int,
    people: int,
    events: int,
    seed: int,
    **extra_env: str,
) -> Replayed:
    """A :class:`Replayed` for a new app named ``name`` and a random suffix."""
    stream = make_stream(people, events, seed)
    expected, changes, change_ids = replay(stream)
    app_id = f"{name}-{uuid.uuid4().hex[:8]}"
    env = worker_env(
        bootstrap,
        database_url,
        app_id=app_id,
        work_dir=work_dir,
        partitions=partitions,
        clock=(T0 - timedelta(days=365)).timestamp(),
        **extra_env,
    )
    return Replayed(stream, expected, changes, change_ids, app_id, env)


async def produce_events(bootstrap: str, events: list[ResolvedEvent]) -> None:
    """``events`` onto tierflow.events.resolved, keyed by OneID, in order."""
    await produce(bootstrap, EVENTS_RESOLVED.name, [(e.oneid.encode(), encode(e)) for e in events])


@dataclass
class Result:
    """What a run found."""

    events: int
    people: int
    kills: int
    seconds: float
    mismatched: list[str] = field(default_factory=list)
    stale_in_memory: list[str] = field(default_factory=list)
    missing_changes: list[str] = field(default_factory=list)
    conflicting_changes: list[str] = field(default_factory=list)
    unexpected_changes: list[str] = field(default_factory=list)
    duplicate_deliveries: int = 0
    unexercised: str = ""
    """Set when nothing shows that the kills made the workers redo any work: such a run
    passes without testing recovery."""
    divergence: list[str] = field(default_factory=list)
    """For the first mismatched people: how their counted events differ from the replay's."""

    @property
    def ok(self) -> bool:
        """No lost or wrong state, every tier change once per id with one content, and the
        kills made the workers redo work."""
        return not (
            self.mismatched
            or self.stale_in_memory
            or self.missing_changes
            or self.conflicting_changes
            or self.unexpected_changes
            or self.unexercised
        )


def _json(value: State) -> Any:
    return orjson.loads(orjson.dumps(value))


async def run(
    bootstrap: str,
    database_url: str,
    work_dir: Path,
    *,
    people: int,
    events: int,
    kills: int,
    workers: int,
    partitions: int,
    seed: int,
    settle: float = 180.0,  # a loaded machine needs minutes to converge; a lost update never does
    extra_env: dict[str, str] | None = None,
    module: str = "services.scoring",
) -> Result:
    """Produce the stream in chunks while killing (-9) and at once restarting random workers;
    then compare the changelog's last value of every person with the pure replay.

    The first workers never flush (their states, markers and acks wait in memory) and the first
    kills are theirs, the first one only once they delivered a tier change of the stream: all
    they did must be redone (by their successors, or by a survivor that rolls back at the
    rebalance), so a kill certainly meets unflushed work, which random moments alone often
    missed (a restarted worker still waiting for the dead member's session to expire holds
    none). The later kills and restarts are at random moments, with the usual flush interval.
    """
    rng = random.Random(seed)
    setup = replayed(
        bootstrap,
        database_url,
        work_dir,
        name="scoring-crash",
        partitions=partitions,
        people=people,
        events=events,
        seed=seed,
        **(extra_env or {}),
    )
    stream, expected, change_counts = setup.stream, setup.expected, setup.changes
    app_id, env = setup.app_id, setup.env
    started = time.monotonic()
    unflushing = min(kills, workers)  # each is killed, or the changelog would never converge
    held = {**env, "TIERFLOW_SCORING_FLUSH_INTERVAL": str(NEVER)}
    running = [
        Worker(f"w{n}-0", held if n < unflushing else env, work_dir, module) for n in range(workers)
    ]
    try:
        async with reading_from_start(bootstrap, TIERS_CHANGES.name, from_end=True) as changes_now:
            await asyncio.gather(*(w.ready() for w in running))
            chunks = 40
            kill_at = set(rng.sample(range(2, chunks - 2), kills))
            size = -(-len(stream) // chunks)
            killed = 0
            for chunk in range(chunks):
                await produce_events(bootstrap, stream[chunk * size : (chunk + 1) * size])
                await asyncio.sleep(rng.uniform(0.05, 0.4))
                if chunk in kill_at:
                    if not killed:
                        await until_one_arrives(changes_now, expected, timeout=settle)
                    victim = killed if killed < unflushing else rng.randrange(len(running))
                    running[victim].kill()
                    killed += 1
                    # at once: the dead member holds its partitions until its session expires
                    running[victim] = Worker(f"w{victim}-{chunk}", env, work_dir, module)
        latest = await changelog_states(bootstrap, app_id, expected, timeout=settle)
        result = Result(len(stream), people, kills, time.monotonic() - started)
        result.mismatched = mismatched(latest, expected)
        positions = {r.event.event_id: n for n, r in enumerate(stream)}
        result.divergence = [
            divergence(key, latest.get(key.encode()), expected[key.encode()], positions, size)
            for key in result.mismatched[:5]
        ] + [f"kills after chunks {sorted(kill_at)} of {size} events"]
        result.stale_in_memory = await stale_across_restart(
            running, env, work_dir, expected, settle=settle, module=module
        )
        # after the final restart too: what the recovered worker sends is checked as well
        changes = await every_change(bootstrap, expected, setup.change_ids, timeout=settle)
        _check_changes(result, changes, change_counts, setup.change_ids)
        if kills and not result.duplicate_deliveries:
            # work redone after a kill sends its tier changes again, with the same ids
            result.unexercised = "no tier change was sent twice: the kills made no one redo work"
        return result
    finally:
        for worker in running:
            worker.stop()


async def until_one_arrives(
    consumer: AIOKafkaConsumer, keys: Container[bytes], *, timeout: float
) -> None:
    """Read ``consumer`` until a record keyed by one of ``keys`` arrives, or ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batches = await consumer.getmany(timeout_ms=300)
        if any(record.key in keys for records in batches.values() for record in records):
            return


async def every_change(
    bootstrap: str,
    people: Container[bytes],
    expected_ids: Iterable[str],
    *,
    timeout: float,
    linger: float = LINGER_SECONDS,
) -> list[ConsumerRecord[bytes, bytes]]:
    """The tier changes of ``people`` from the start of the topic, read until every one of
    ``expected_ids`` is there, then ``linger`` seconds more (a copy or an unexpected change sent
    late is seen too), or until ``timeout`` (then some are missing)."""
    waiting = set(expected_ids)
    read = 0
    complete_at: float | None = None

    def seen_all(records: list[ConsumerRecord[bytes, bytes]]) -> bool:
        nonlocal read, complete_at
        for record in records[read:]:
            waiting.discard(orjson.loads(record.value or b"{}").get("id"))
        read = len(records)
        if complete_at is None and not waiting:
            complete_at = time.monotonic()
        return complete_at is not None and time.monotonic() - complete_at >= linger

    return await read_until(
        bootstrap, TIERS_CHANGES.name, seen_all, keep=lambda r: r.key in people, timeout=timeout
    )


def divergence(oneid: str, got: Any, want: State, positions: dict[str, int], chunk: int) -> str:
    """Which counted events (by stream position and chunk) a person's changelog state lacks,
    has in excess, or has in another order than the replay (``positions`` by event id)."""
    if not got:
        return f"{oneid}: no state in the changelog"
    got_seen, want_seen = each_seen(got.get("seen", "")), each_seen(want["seen"])
    at = {seen_token(event_id): n for event_id, n in positions.items()}

    def where(ids: list[str]) -> list[str]:
        return [f"{at.get(i)}(chunk {at.get(i, -1) // chunk})" for i in ids]

    missing = [i for i in want_seen if i not in got_seen]
    extra = [i for i in got_seen if i not in want_seen]
    common = [i for i in got_seen if i in want_seen]
    reordered = next(
        (
            n
            for n, (a, b) in enumerate(
                zip(common, [i for i in want_seen if i in common], strict=False)
            )
            if a != b
        ),
        None,
    )
    return (
        f"{oneid}: events {got.get('events')} vs {want['events']}, changes "
        f"{got.get('changes')} vs {want['changes']}, missing {where(missing)}, "
        f"extra {where(extra)}, order differs at {reordered}"
    )


async def changelog_states(
    bootstrap: str,
    app_id: str,
    expected: dict[bytes, State],
    *,
    timeout: float,
    whole: bool = False,
) -> dict[bytes, Any]:
    """Each person's last state in the people changelog of ``app_id``, read until every
    expected person's event count is there (``whole``: their whole state, for what changes
    states without changing counts: the timer, a merged away person's marker) or ``timeout``
    passes."""
    latest: dict[bytes, Any] = {}
    want = {key: _json(state) for key, state in expected.items()} if whole else {}
    read = 0

    def converged(records: list[ConsumerRecord[bytes, bytes]]) -> bool:
        nonlocal read
        for record in records[read:]:
            if record.key is not None and record.value is not None:
                latest[record.key] = orjson.loads(record.value)
        read = len(records)
        if whole:
            return all(latest.get(key) == state for key, state in want.items())
        return all(latest.get(k, {}).get("events") == v["events"] for k, v in expected.items())

    await read_until(bootstrap, people_changelog(app_id), converged, timeout=timeout)
    return latest


def mismatched(latest: dict[bytes, Any], expected: dict[bytes, State]) -> list[str]:
    """People whose changelog state is not the replay's."""
    return [key.decode() for key, state in expected.items() if latest.get(key) != _json(state)]


async def explained(client: httpx.AsyncClient, worker: Worker, oneid: str) -> Any:
    """A person's /explain answer. A worker ready soon after the others were killed may still
    share the group with a dead member until its session expires, and its people are
    unavailable (503) meanwhile: asked again until the group is whole."""
    deadline = time.monotonic() + REGROUP_SECONDS
    while True:
        answer = await client.get(f"{worker.url}/v1/scores/{oneid}/explain")
        if answer.status_code < 500:
            return answer.json()
        if answer.status_code != 503 or time.monotonic() > deadline:
            raise RuntimeError(
                f"/explain of {oneid} answered {answer.status_code}: {answer.text[:300]}"
            )
        await asyncio.sleep(0.5)


async def stale_across_restart(
    running: list[Worker],
    env: dict[str, str],
    work_dir: Path,
    expected: dict[bytes, State],
    *,
    settle: float,
    module: str = "services.scoring",
) -> list[str]:
    """People stale in what the ``running`` workers hold (recovered at their restarts), then
    after one more kill -9 of every one and a fresh start (``running`` then holds it), each
    with where and what was held."""
    # a worker restarted late may still be starting when the other has written everything
    await asyncio.gather(*(w.ready(timeout=settle) for w in running))
    before = await stale_answers(running[0], expected)
    for worker in running:
        worker.kill()
    running[:] = [Worker("final", env, work_dir, module)]
    await running[0].ready(timeout=settle)  # recovers every changelog partition
    after = await stale_answers(running[0], expected)
    return [
        f"{oneid} {where}: {_held(answer)}"
        for where, answers in (("in the running workers", before), ("after a restart", after))
        for oneid, answer in answers.items()
    ]


async def stale_people(worker: Worker, expected: dict[bytes, State]) -> list[str]:
    """People whose state in the workers' memory differs from the replay (via /explain): a
    live person's profile, or an answer other than 404 for someone merged away or erased."""
    return list(await stale_answers(worker, expected))


async def stale_answers(worker: Worker, expected: dict[bytes, State]) -> dict[str, Any]:
    """The /explain answers of :func:`stale_people`, by oneid."""
    stale = {}
    async with httpx.AsyncClient(timeout=10) as client:
        for key, state in expected.items():
            oneid = key.decode()
            answer = await explained(client, worker, oneid)
            fresh = explains(oneid, state, answer) if is_live(state) else "profile" not in answer
            if not fresh:
                stale[oneid] = answer
    return stale


def _held(answer: Any) -> str:
    profile = answer.get("profile")
    if profile is None:
        return f"no profile ({answer.get('title') or answer.get('detail') or answer})"
    return f"{profile.get('events_counted')} events, tier {profile.get('tier')}"


def explains(oneid: str, state: State, answer: Any) -> bool:
    """True when an /explain answer shows the profile of the replayed ``state``."""
    want = profile_of(oneid, state, MODEL).model_dump(mode="json")
    held = answer.get("profile", {})
    fields = ("tier", "scores", "events_counted", "tags", "lifecycle_stage")
    return all(held.get(f) == want[f] for f in fields)


def _check_changes(
    result: Result,
    records: list[ConsumerRecord[bytes, bytes]],
    counts: dict[str, int],
    expected_ids: dict[str, str],
) -> None:
    by_id: dict[str, set[tuple[Any, ...]]] = defaultdict(set)
    copies: dict[str, int] = defaultdict(int)
    for record in records:
        change = decode(TierChangeEvent, record.value or b"")
        if change.subject not in counts:
            continue
        data = change.data
        by_id[change.id].add((change.subject, data.from_tier, data.to_tier, data.cause.event_id))
        copies[change.id] += 1
    result.missing_changes = sorted(i for i in expected_ids if i not in by_id)
    result.unexpected_changes = sorted(i for i in by_id if i not in expected_ids)
    result.conflicting_changes = sorted(i for i, contents in by_id.items() if len(contents) > 1)
    result.duplicate_deliveries = sum(n - 1 for n in copies.values())
