"""Turning tier changes into actions: record (idempotent), claim, deliver, record the outcome."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.automation import metrics, repository
from services.automation.delivery import WebhookSender
from services.automation.models import Action
from services.automation.playbooks import PlaybookSet, plan_actions
from shared.contracts import ActionOutcome, ActionRecord, TierChangeEvent
from shared.db import unit_of_work
from shared.kafka import Publisher
from shared.topics import ACTIONS

log = logging.getLogger(__name__)

DELIVERY_LEASE = timedelta(seconds=60)


class ActionRunner:
    """Owns the life of actions from a tier change to a recorded outcome."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        playbooks: PlaybookSet,
        sender: WebhookSender,
        publisher: Publisher,
        *,
        concurrency: int = 32,
    ) -> None:
        self._sessions = sessions
        self._playbooks = playbooks
        self._sender = sender
        self._publisher = publisher
        self._limit = asyncio.Semaphore(concurrency)

    async def handle_changes(self, changes: list[TierChangeEvent]) -> None:
        """Record every planned action once, then deliver the ones this worker claimed."""
        rows: list[dict[str, Any]] = []
        for change in changes:
            for planned in plan_actions(change, self._playbooks):
                payload = {
                    "action_id": planned.action_id,
                    "oneid": change.data.oneid,
                    "playbook": planned.playbook,
                    "step": planned.step.name,
                    "channel": planned.step.channel,
                    "tier": change.data.to_tier,
                    "from_tier": change.data.from_tier,
                    "tier_change_id": change.id,
                    "scores": change.data.scores.model_dump(),
                    "content": planned.step.content,
                }
                rows.append(
                    {
                        "action_id": planned.action_id,
                        "oneid": change.data.oneid,
                        "tier_change_id": change.id,
                        "playbook": planned.playbook,
                        "step": planned.step.name,
                        "channel": planned.step.channel,
                        "payload": payload,
                    }
                )
        if not rows:
            return
        now = datetime.now(UTC)
        async with unit_of_work(self._sessions) as session:
            await repository.record_requested(session, rows)
            claimed = await repository.claim(
                session, [r["action_id"] for r in rows], lease=DELIVERY_LEASE, now=now
            )
        await self._deliver_all(claimed)

    async def sweep(self) -> int:
        """Deliver actions left behind by a crashed worker (their lease expired)."""
        async with unit_of_work(self._sessions) as session:
            claimed = await repository.claim(
                session, None, lease=DELIVERY_LEASE, now=datetime.now(UTC)
            )
        await self._deliver_all(claimed)
        return len(claimed)

    async def _deliver_all(self, actions: list[Action]) -> None:
        records = await asyncio.gather(*(self._deliver(action) for action in actions))
        await self._publisher.publish_many(ACTIONS, ((r.oneid, r) for r in records))

    async def _deliver(self, action: Action) -> ActionRecord:
        async with self._limit:
            result = await self._sender.send(action.action_id, action.channel, action.payload)
        status = repository.SENT if result.delivered else repository.DEAD
        outcome: ActionOutcome = "sent" if result.delivered else "dead_lettered"
        async with unit_of_work(self._sessions) as session:
            await repository.finish(
                session,
                action.action_id,
                status=status,
                attempts=result.attempts,
                status_code=result.status_code,
                error=result.error,
            )
        metrics.ACTIONS.labels(action.playbook, action.step, outcome).inc()
        if not result.delivered:
            log.warning(
                "action dead-lettered: %s", result.error, extra={"action_id": action.action_id}
            )
        return ActionRecord(
            action_id=action.action_id,
            oneid=action.oneid,
            tier_change_id=action.tier_change_id,
            playbook=action.playbook,
            step=action.step,
            channel=action.channel,
            outcome=outcome,
            attempts=result.attempts,
            status_code=result.status_code,
            detail=result.error,
            at=datetime.now(UTC),
        )
