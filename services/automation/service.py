"""The life of an action: planned from a tier change, stored under its idempotency key, claimed
when due, guarded, delivered, and its outcome recorded (and published through the outbox).

Delivery never happens inside the tier-change consumer: the consumer only stores schedules and
commits, so a slow endpoint or a long retry schedule never holds a partition.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.automation import metrics, repository
from services.automation.clock import Clock
from services.automation.delivery import Attempt, Endpoint, retry_delay_s
from services.automation.guards import (
    Decision,
    Person,
    decide,
    has_left,
    held_out,
    known_zone,
    person_from_event,
    refreshed,
)
from services.automation.models import Action
from services.automation.playbooks import PlaybookSet, plan_actions
from shared.contracts import (
    ActionOutcome,
    ActionRecord,
    DeadLetter,
    IdentityErasure,
    IdentityMerge,
    IdentityNotice,
    TierChangeEvent,
    encode,
)
from shared.db import unit_of_work
from shared.kafka import Publisher, send_grouped
from shared.topics import ACTIONS, DEADLETTER

log = logging.getLogger(__name__)

COALESCE_S = 0.02
COALESCE_RESULTS = 32
"""While deliveries are in flight, wait this long for this many results before a round: each
round is two transactions, and one per finished request would cost more than the request."""


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """How deliveries are leased, retried and batched."""

    secrets: list[str]
    attempts: int = 6
    backoff_base_s: float = 10.0
    backoff_cap_s: float = 3600.0
    lease_s: float = 60.0
    claim_batch: int = 200
    max_in_flight: int = 256


@dataclass(frozen=True, slots=True)
class IncomingChange:
    """A parsed tier change with its raw ``data`` (for fields the contract does not carry)."""

    event: TierChangeEvent
    raw_data: Mapping[str, Any]


def body_of(payload: Mapping[str, Any]) -> bytes:
    """The exact bytes sent for a payload: sorted keys, so every retry carries the same body."""
    return orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)


def record_of(action: Action, outcome: ActionOutcome, at: datetime, **extra: Any) -> ActionRecord:
    """An outcome of an action, as published on ``tierflow.actions``."""
    return ActionRecord(
        action_id=action.action_id,
        oneid=action.oneid,
        tier_change_id=action.tier_change_id,
        playbook=action.playbook,
        step=action.step,
        channel=action.channel,
        outcome=outcome,
        attempts=extra.pop("attempts", action.attempts),
        at=at,
        **extra,
    )


def dead_letter_of(record: Mapping[str, Any], raw: bytes) -> DeadLetter:
    """A dead-lettered action on ``tierflow.deadletter``, beside every other stage's failures;
    the payload is the action record, whose ``action_id`` the operator's retry API takes."""
    return DeadLetter(
        stage="automation",
        reason=record.get("detail") or "delivery attempts exhausted",
        error_type="delivery",
        key=record["oneid"],
        payload=raw.decode(),
        failed_at=record["at"],
    )


class AutomationService:
    """Owns actions from a tier change to a recorded outcome; one per worker process."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        playbooks: PlaybookSet,
        endpoints: dict[str, Endpoint],
        policy: DeliveryPolicy,
        clock: Clock,
    ) -> None:
        self._sessions = sessions
        self._playbooks = playbooks
        self._guards = playbooks.guards
        self._endpoints = endpoints
        self._policy = policy
        self._clock = clock
        self._results: list[tuple[Action, Attempt, datetime, datetime]] = []
        """Finished attempts: the action, its outcome, when, and the lease it was sent under."""
        self._tasks: set[asyncio.Task[None]] = set()
        self.wake = asyncio.Event()
        self.outbox_wake = asyncio.Event()
        windows = [cap.per for cap in self._guards.frequency_caps.values()]
        self._cap_window = max(windows, default=timedelta(0))

    @property
    def playbooks(self) -> PlaybookSet:
        """The playbooks in force."""
        return self._playbooks

    @property
    def idle(self) -> bool:
        """True when no delivery is in flight or waiting to be recorded."""
        return not self._tasks and not self._results

    async def handle_changes(self, changes: Sequence[IncomingChange]) -> int:
        """Store every planned action once, apply exit rules; returns the new actions' count."""
        now = self._clock.now()
        async with unit_of_work(self._sessions) as session:
            oneids = {c.event.data.oneid for c in changes}
            await repository.lock_identities(session, oneids)
            erased = await repository.erased_among(session, oneids)
            # an absorbed id's change was scored before its merge: the winner's own
            # re-evaluation is what plans steps for the merged person
            absorbed = await repository.absorbed_among(session, oneids)
            live = [c for c in changes if c.event.data.oneid not in erased | absorbed]
            rows, held = self._plan(live, now)
            new_ids = await repository.insert_actions(session, rows)
            moves = [
                (d.oneid, d.to_tier, d.changed_at, d.sequence) for d in (c.event.data for c in live)
            ]
            exited = await repository.exit_pending(session, moves, now)
            await repository.record_tiers(session, moves)
            await self._refresh_persons(session, live)
            records = [
                ActionRecord(
                    action_id=row["action_id"],
                    oneid=row["oneid"],
                    tier_change_id=row["tier_change_id"],
                    playbook=row["playbook"],
                    step=row["step"],
                    channel=row["channel"],
                    outcome="held_out" if row["action_id"] in held else "requested",
                    at=now,
                )
                for row in rows
                if row["action_id"] in new_ids
            ]
            records += [record_of(a, "exited", now, detail=a.last_error) for a in exited]
            await repository.append_log(session, records)
        self._count(records)
        for reason, gone in (("erased", erased), ("merged", absorbed)):
            if ignored := sum(c.event.data.oneid in gone for c in changes):
                metrics.CHANGES_IGNORED.labels(reason).inc(ignored)
        if rows:
            self.wake.set()
            self.outbox_wake.set()
        return len(new_ids)

    def _plan(
        self, changes: Sequence[IncomingChange], now: datetime
    ) -> tuple[list[dict[str, Any]], set[str]]:
        """Rows to insert for these changes, and which of them are held out."""
        rows: list[dict[str, Any]] = []
        held: set[str] = set()
        seen: set[str] = set()
        holdout = self._guards.holdout
        for change in changes:
            data = change.event.data
            person = person_from_event(change.raw_data, self._guards.default_timezone)
            out = held_out(data.oneid, data.to_tier, holdout.shares, holdout.salt)
            for planned in plan_actions(change.event, self._playbooks):
                if planned.action_id in seen:
                    continue  # the same change twice in one poll batch
                seen.add(planned.action_id)
                payload = {
                    "action_id": planned.action_id,
                    "oneid": data.oneid,
                    "playbook": planned.playbook,
                    "step": planned.step.send,
                    "channel": planned.step.channel,
                    "tier": data.to_tier,
                    "from_tier": data.from_tier,
                    "lifecycle_stage": data.lifecycle_stage,
                    "tier_change_id": change.event.id,
                    "scores": data.scores.model_dump(),
                    "content": planned.step.content,
                }
                if out:
                    held.add(planned.action_id)
                rows.append(
                    {
                        "action_id": planned.action_id,
                        "oneid": data.oneid,
                        "tier_change_id": change.event.id,
                        "playbook": planned.playbook,
                        "step": planned.step.send,
                        "channel": planned.step.channel,
                        "status": "held_out" if out else repository.SCHEDULED,
                        "payload": payload,
                        "attempts": 0,
                        "due_at": now + planned.delay,
                        "changed_at": data.changed_at,
                        "change_sequence": data.sequence,
                        "hold_tier": planned.hold_tier,
                        "person": person.as_json(),
                        "created_at": now,
                        "updated_at": now,
                    }
                )
        return rows, held

    async def _refresh_persons(self, session: AsyncSession, live: Sequence[IncomingChange]) -> None:
        """Guard each person's pending steps, those just planned included, with what their
        latest change and their latest profile say (a refusal given since the steps were
        planned; see :func:`guards.refreshed`): the stored copy alone let an unsubscribe given
        mid-sequence be ignored for the rest of it, and a profile read before the change that
        planned the steps found none to guard."""
        default = self._guards.default_timezone
        latest = {c.event.data.oneid: person_from_event(c.raw_data, default) for c in live}
        for oneid, (optouts, zone) in (await repository.contacts_of(session, list(latest))).items():
            profile = Person(known_zone(zone) or latest[oneid].timezone, frozenset(optouts))
            latest[oneid] = refreshed(latest[oneid], profile)
        await self._refresh(session, list(latest), lambda o, stored: refreshed(stored, latest[o]))

    async def refresh_contacts(
        self, contacts: Mapping[str, tuple[Mapping[str, Any], datetime]]
    ) -> None:
        """Store and apply the contact of each person's latest profile (``contacts``: oneid →
        the profile's ``contact`` and time) to their steps not yet sent: a consent change
        reaches them even when it moves neither tier nor stage."""
        default = self._guards.default_timezone
        async with unit_of_work(self._sessions) as session:
            await repository.lock_identities(session, contacts)
            gone = await repository.erased_among(session, contacts)
            gone |= await repository.absorbed_among(session, contacts)
            kept = {oneid: value for oneid, value in contacts.items() if oneid not in gone}
            latest = {
                oneid: person_from_event({"contact": contact}, default)
                for oneid, (contact, _) in kept.items()
            }
            stored = {
                oneid: (sorted(latest[oneid].optouts), known_zone(contact.get("timezone")), at)
                for oneid, (contact, at) in kept.items()
            }
            await repository.record_contacts(session, stored)
            await self._refresh(
                session, list(latest), lambda o, stored: refreshed(stored, latest[o])
            )

    async def _refresh(
        self,
        session: AsyncSession,
        oneids: Sequence[str],
        guard: Callable[[str, Person], Person],
    ) -> None:
        """Guard these people's steps not yet sent with ``guard(oneid, stored person)``."""
        default = self._guards.default_timezone
        updates = []
        for action_id, oneid, stored_json in await repository.pending_persons(session, oneids):
            stored = Person.from_json(stored_json, default)
            person = guard(oneid, stored)
            if person != stored:
                updates.append({"action_id": action_id, "person": person.as_json()})
        await repository.update_actions(session, updates)

    async def dispatch_once(self) -> int:
        """Record finished deliveries, then claim due actions and start their deliveries.

        Returns how much work was done (0 means idle). Channels whose endpoint is saturated or
        whose circuit is open are not claimed, so their backlog waits in Postgres, not in memory.
        """
        if self._tasks and len(self._results) < COALESCE_RESULTS:
            await asyncio.sleep(COALESCE_S)
        finished = await self._flush_results()
        free = self._policy.max_in_flight - len(self._tasks)
        if free <= 0:
            return finished
        now = self._clock.now()
        blocked = [
            name
            for name, endpoint in self._endpoints.items()
            if endpoint.saturated or not endpoint.breaker.allows(now.timestamp())
        ]
        async with unit_of_work(self._sessions) as session:
            due = self._within_capacity(
                await repository.lock_due(
                    session, now, min(free, self._policy.claim_batch), blocked
                )
            )
            lease = now + timedelta(seconds=self._policy.lease_s)
            to_send, records = await self._guard(session, due, now, lease)
            await repository.append_log(session, records)
        self._count(records)
        if records:
            self.outbox_wake.set()
        for action in to_send:
            self._start(action, now, lease)
        return finished + len(due)

    def _within_capacity(self, due: list[Action]) -> list[Action]:
        """Keep only what each endpoint can start now; the rest stays due for the next round
        (an action waiting in memory would eat its lease)."""
        free = {n: e.concurrency - e.in_flight for n, e in self._endpoints.items()}
        kept: list[Action] = []
        for action in due:
            if free.get(action.channel, 1) > 0:
                free[action.channel] = free.get(action.channel, 1) - 1
                kept.append(action)
        return kept

    async def _guard(
        self, session: AsyncSession, due: list[Action], now: datetime, lease_until: datetime
    ) -> tuple[list[Action], list[ActionRecord]]:
        """Decide each due action under a per-person lock; a redelivery (the send was already
        decided: a retry or an expired lease) skips the guards and keeps its id and body. What
        is sent is leased until ``lease_until``."""
        fresh = [a for a in due if a.sent_at is None]
        recent: dict[tuple[str, str], list[datetime]] = {}
        tiers: dict[str, tuple[str, datetime, int]] = {}
        if fresh:
            oneids = [a.oneid for a in fresh]
            await repository.lock_persons(session, oneids)
            if self._cap_window > timedelta(0):
                recent = await repository.recent_sends(session, oneids, now - self._cap_window)
            held = [a.oneid for a in fresh if a.hold_tier is not None]
            tiers = await repository.current_tiers(session, held)
        to_send: list[Action] = []
        updates: list[dict[str, Any]] = []
        records: list[ActionRecord] = []
        for action in due:  # loaded objects stay unmodified: the session must not flush them
            sent_at = action.sent_at
            planned = (action.changed_at, action.change_sequence)
            if sent_at is None and has_left(action.hold_tier, planned, tiers.get(action.oneid)):
                detail = "left the tier (seen at send time)"
                updates.append(
                    {
                        "action_id": action.action_id,
                        "status": repository.EXITED,
                        "last_error": detail,
                        "updated_at": now,
                    }
                )
                records.append(record_of(action, "exited", now, detail=detail))
                continue
            if sent_at is None:
                person = Person.from_json(action.person, self._guards.default_timezone)
                sends = recent.setdefault((action.oneid, action.channel), [])
                decision = decide(action.channel, person, sends, now, self._guards)
                if decision.kind != "send":
                    updates.append(self._undelivered(action, decision, now))
                    records.append(record_of(action, decision.kind, now, detail=decision.detail))
                    continue
                sends.append(now)
                sent_at = now
            updates.append(
                {
                    "action_id": action.action_id,
                    "status": repository.DELIVERING,
                    "lease_until": lease_until,
                    "sent_at": sent_at,
                    "updated_at": now,
                }
            )
            to_send.append(action)
        await repository.update_actions(session, updates)
        return to_send, records

    @staticmethod
    def _undelivered(action: Action, decision: Decision, now: datetime) -> dict[str, Any]:
        """The row update for a guard that did not let the action go now."""
        if decision.kind == "postponed":
            assert decision.until is not None
            return {
                "action_id": action.action_id,
                "status": repository.SCHEDULED,
                "due_at": decision.until,
                "last_error": decision.detail,
                "updated_at": now,
            }
        return {
            "action_id": action.action_id,
            "status": decision.kind,
            "due_at": action.due_at,
            "last_error": decision.detail,
            "updated_at": now,
        }

    def _start(self, action: Action, now: datetime, lease: datetime) -> None:
        endpoint = self._endpoints[action.channel]
        endpoint.in_flight += 1
        task = asyncio.create_task(self._deliver(endpoint, action, now, lease))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(
        self, endpoint: Endpoint, action: Action, claimed_at: datetime, lease: datetime
    ) -> None:
        try:
            attempt = await endpoint.post(
                self._policy.secrets, action.action_id, body_of(action.payload), claimed_at
            )
        except Exception as exc:  # a bug must not lose the result: the retry schedule applies
            log.exception("delivery crashed", extra={"action_id": action.action_id})
            attempt = Attempt(False, True, None, f"{type(exc).__name__}: {exc}")
        finally:
            endpoint.in_flight -= 1
        if not attempt.delivered:
            kind = "circuit" if attempt.error == "circuit open" else "network"
            if attempt.status_code is not None:
                kind = f"{attempt.status_code // 100}xx"
            metrics.ENDPOINT_FAILURES.labels(endpoint.name, kind).inc()
        self._results.append((action, attempt, self._clock.now(), lease))
        self.wake.set()

    async def _flush_results(self) -> int:
        """Write finished attempts: sent, rescheduled with backoff, or dead-lettered."""
        if not self._results:
            return 0
        results, self._results = self._results, []
        updates: list[dict[str, Any]] = []
        records: list[ActionRecord] = []
        try:
            async with unit_of_work(self._sessions) as session:
                leases = await repository.lock_leases(
                    session, [a.action_id for a, _, _, _ in results]
                )
                for action, attempt, at, lease in results:
                    if leases.get(action.action_id) != lease:
                        # erased while in flight, or claimed again since (this attempt outlived
                        # its lease): the newer claim's outcome is the one that counts
                        continue
                    update, record = self._outcome(action, attempt, at)
                    updates.append(update)
                    records.append(record)
                await repository.update_actions(session, updates)
                await repository.append_log(session, records)
        except BaseException:
            # kept for the next flush: dropped, every one of them would be sent again
            # once its lease ran out
            self._results[:0] = results
            raise
        self._count(records)
        self.outbox_wake.set()
        return len(results)

    def _outcome(
        self, action: Action, attempt: Attempt, at: datetime
    ) -> tuple[dict[str, Any], ActionRecord]:
        tries = action.attempts + 1
        update: dict[str, Any] = {
            "action_id": action.action_id,
            "attempts": tries,
            "last_status_code": attempt.status_code,
            "last_error": attempt.error,
            "lease_until": None,
            "updated_at": at,
        }
        common = {"attempts": tries, "status_code": attempt.status_code}
        if attempt.delivered:
            metrics.DELIVERY_LAG.labels(action.channel).observe(
                max(0.0, (at - action.due_at).total_seconds())
            )
            update |= {"status": repository.SENT, "due_at": action.due_at}
            return update, record_of(action, "sent", at, **common)
        if attempt.retryable and tries < self._policy.attempts:
            delay = retry_delay_s(
                tries,
                base_s=self._policy.backoff_base_s,
                cap_s=self._policy.backoff_cap_s,
                retry_after_s=attempt.retry_after_s,
            )
            metrics.RETRIES.labels(action.channel).inc()
            update |= {"status": repository.SCHEDULED, "due_at": at + timedelta(seconds=delay)}
            detail = f"{attempt.error}; retry {tries + 1} in {delay:.1f}s"
            # the one line a failed attempt leaves, now that httpx's request lines are quiet
            log.info("delivery failed: %s", detail, extra={"action_id": action.action_id})
            return update, record_of(action, "failed", at, detail=detail, **common)
        update |= {"status": repository.DEAD, "due_at": action.due_at}
        log.warning(
            "action dead-lettered: %s", attempt.error, extra={"action_id": action.action_id}
        )
        return update, record_of(action, "dead_lettered", at, detail=attempt.error, **common)

    @staticmethod
    def _count(records: Sequence[ActionRecord]) -> None:
        for record in records:
            metrics.ACTIONS.labels(record.playbook, record.step, record.outcome).inc()

    async def publish_once(self, publisher: Publisher, limit: int = 1000) -> int:
        """Publish the oldest unpublished outcomes on ``tierflow.actions`` (the outbox)."""
        async with unit_of_work(self._sessions) as session:
            rows = await repository.unpublished(session, limit)
            if rows:
                # the stored record was dumped from an ActionRecord: sent as is, not re-validated
                raw = [(r.oneid.encode(), orjson.dumps(r.record)) for r in rows]
                acks = await send_grouped(publisher.producer, ACTIONS.name, raw)
                dead = [
                    (key, encode(dead_letter_of(row.record, value)))
                    for row, (key, value) in zip(rows, raw, strict=True)
                    if row.record["outcome"] == "dead_lettered"
                ]
                if dead:
                    acks += await send_grouped(publisher.producer, DEADLETTER.name, dead)
                await asyncio.gather(*acks)
                await repository.mark_published(session, [r.id for r in rows])
        return len(rows)

    async def apply_notice(self, notice: IdentityNotice) -> None:
        """Erasure: delete the person's actions and never send to them again. Merge: move the
        absorbed person's actions to the winner, exiting steps the winner already has."""
        now = self._clock.now()
        async with unit_of_work(self._sessions) as session:
            if isinstance(notice, IdentityErasure):
                oneids = sorted({notice.oneid, *notice.oneids})
                await repository.lock_identities(session, oneids)
                deleted = await repository.erase(session, oneids, now)
                log.info("erased %d actions", deleted, extra={"erasure_id": notice.erasure_id})
                return
            assert isinstance(notice, IdentityMerge)
            records = await self._merge(session, notice, now)
            await repository.append_log(session, records)
        self._count(records)
        self.outbox_wake.set()

    async def _merge(
        self, session: AsyncSession, notice: IdentityMerge, now: datetime
    ) -> list[ActionRecord]:
        """Move the absorbed person's steps to the OneID the winner ended up in (a later merge
        of the winner may have been applied first), guarded by every refusal either person
        gave; returns the records of the steps exited."""
        absorbed = notice.absorbed
        # merges one at a time: a chain's notices arrive together on several partitions, and
        # a root read while another merge moved it on left steps under an absorbed id
        await repository.lock_merges(session)
        root = await repository.root_of(session, notice.winner)
        await repository.lock_identities(session, [absorbed, root])
        await repository.record_merge(session, absorbed, notice.winner, notice.merged_at)
        if root == absorbed:
            return []
        if await repository.erased_among(session, [root]):
            await repository.erase(session, [absorbed], now)
            return []
        contacts = await repository.contacts_of(session, [absorbed, root])
        _, exited = await repository.merge(session, absorbed, root, now)
        if contacts:
            zones = (known_zone(contacts[o][1]) for o in (root, absorbed) if o in contacts)
            zone = next((z for z in zones if z is not None), None)
            refused = frozenset(r for optouts, _ in contacts.values() for r in optouts)
            await self._refresh(
                session,
                [root],
                lambda _, stored: Person(zone or stored.timezone, stored.optouts | refused),
            )
        return [
            record_of(a, "exited", now, detail=a.last_error).model_copy(update={"oneid": root})
            for a in exited
        ]

    async def retry_dead(self, action_id: str) -> Action | None:
        """An operator's retry of a dead-lettered action: a fresh schedule, due now."""
        async with unit_of_work(self._sessions) as session:
            action = await repository.requeue_dead(session, action_id, self._clock.now())
        if action is not None:
            self.wake.set()
        return action

    async def refresh_gauges(self) -> None:
        """The dead-letter size, for the gauge."""
        async with unit_of_work(self._sessions) as session:
            metrics.DEADLETTER_SIZE.set(await repository.dead_letter_count(session))

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Wait for in-flight deliveries and record them (graceful stop)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)
        await self._flush_results()
