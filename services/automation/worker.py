"""The automation consumer: tier changes in, actions recorded and delivered before commit."""

from __future__ import annotations

import asyncio
import logging

from pydantic import ValidationError

from services.automation.service import ActionRunner
from shared.consumer import Records
from shared.contracts import DeadLetter, TierChangeEvent, decode
from shared.deadletters import from_record
from shared.kafka import Publisher
from shared.topics import DEADLETTER

log = logging.getLogger(__name__)


class AutomationHandler:
    """Handles one poll batch of tier changes."""

    def __init__(self, runner: ActionRunner, publisher: Publisher) -> None:
        self._runner = runner
        self._publisher = publisher

    async def __call__(self, records: Records) -> None:
        """Decode (poison goes to the dead-letter), then run the playbooks."""
        changes: list[TierChangeEvent] = []
        dead: list[tuple[str, DeadLetter]] = []
        for record in records:
            try:
                changes.append(decode(TierChangeEvent, record.value or b""))
            except ValidationError as error:
                key = record.key.decode(errors="replace") if record.key else ""
                dead.append((key, from_record("automation", record, error)))
        await self._publisher.publish_many(DEADLETTER, dead)
        await self._runner.handle_changes(changes)


async def sweep_forever(runner: ActionRunner, interval_s: float = 5.0) -> None:
    """Periodically deliver actions whose worker died mid-delivery."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await runner.sweep()
        except Exception:
            log.exception("sweep failed")
