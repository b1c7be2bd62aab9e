"""The automation loops: the tier-change and identity-notice consumers (thin: parse, hand over,
commit), the dispatcher that delivers due actions, and the outbox publisher."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from datetime import datetime
from typing import Any

import orjson
from pydantic import ValidationError

from services.automation.service import AutomationService, IncomingChange
from shared.consumer import Records
from shared.contracts import IDENTITY_NOTICE, DeadLetter, Profile, TierChangeEvent
from shared.deadletters import from_record
from shared.kafka import Publisher
from shared.topics import DEADLETTER

log = logging.getLogger(__name__)


def parse_change(raw: bytes) -> IncomingChange:
    """A tier change and its raw ``data`` (consent or time zone may travel outside the contract)."""
    event = TierChangeEvent.model_validate_json(raw)
    loaded = orjson.loads(raw)
    data: dict[str, Any] = loaded.get("data", {}) if isinstance(loaded, dict) else {}
    return IncomingChange(event, data)


class TierChangeHandler:
    """One poll batch of tier changes: poison to the dead-letter, the rest stored as schedules."""

    def __init__(self, service: AutomationService, publisher: Publisher) -> None:
        self._service = service
        self._publisher = publisher

    async def __call__(self, records: Records) -> None:
        """Parse, dead-letter what does not parse, store the rest (idempotent)."""
        changes: list[IncomingChange] = []
        dead: list[tuple[str, DeadLetter]] = []
        for record in records:
            try:
                changes.append(parse_change(record.value or b""))
            except (ValidationError, orjson.JSONDecodeError) as error:
                key = record.key.decode(errors="replace") if record.key else ""
                dead.append((key, from_record("automation", record, error)))
        await self._publisher.publish_many(DEADLETTER, dead)
        await self._service.handle_changes(changes)


class ProfileHandler:
    """Scored profiles: each person's latest ``contact`` reaches their steps not yet sent."""

    def __init__(self, service: AutomationService) -> None:
        self._service = service

    async def __call__(self, records: Records) -> None:
        """Take the last profile of each person in the batch (tombstones and profiles the
        contract refuses carry no contact and are skipped: the profile topic is scoring's
        output, checked by its own read model)."""
        contacts: dict[str, tuple[dict[str, Any], datetime]] = {}
        for record in records:
            try:
                profile = Profile.model_validate_json(record.value) if record.value else None
            except ValidationError:
                continue
            if profile is not None:
                contact = profile.contact.model_dump()
                contacts[profile.oneid] = (contact, profile.updated_at)
        await self._service.refresh_contacts(contacts)


class IdentityNoticeHandler:
    """Merges and erasures, applied in topic order."""

    def __init__(self, service: AutomationService, publisher: Publisher) -> None:
        self._service = service
        self._publisher = publisher

    async def __call__(self, records: Records) -> None:
        """Apply each notice; one that does not parse goes to the dead-letter."""
        for record in records:
            try:
                notice = IDENTITY_NOTICE.validate_json(record.value or b"")
            except ValidationError as error:
                key = record.key.decode(errors="replace") if record.key else ""
                await self._publisher.publish_many(
                    DEADLETTER, [(key, from_record("automation", record, error))]
                )
                continue
            await self._service.apply_notice(notice)


async def run_loop(
    name: str,
    step: Callable[[], Awaitable[int]],
    wake: asyncio.Event | None,
    *,
    idle_s: float,
    stopping: asyncio.Event,
) -> None:
    """Call ``step`` until stopped; sleep up to ``idle_s`` (or until woken) when it did nothing.

    A failing step is logged and retried after a pause: the database or broker may be away.
    """
    while not stopping.is_set():
        if wake is not None:
            wake.clear()  # before the step: a wake during it makes the next wait return at once
        try:
            busy = await step()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; retrying", name)
            busy = 0
            await asyncio.sleep(1.0)
        if busy or stopping.is_set():
            continue
        with suppress(TimeoutError):
            await asyncio.wait_for((wake or stopping).wait(), idle_s)
