"""Automation API for operators: a person's actions, the dead-letter with retry, playbooks."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from services.automation import repository
from services.automation.schemas import ActionOut, OutcomeOut, PersonActionsOut, PlaybookOut
from services.automation.service import AutomationService
from shared.auth import AdminOnly
from shared.db import unit_of_work
from shared.errors import NotFound

router = APIRouter(prefix="/v1", tags=["automation"], dependencies=[AdminOnly])


@router.get("/persons/{oneid}/actions", response_model=PersonActionsOut)
async def person_actions(oneid: str, request: Request) -> PersonActionsOut:
    """Every action taken for a person (newest first) and every outcome (in order)."""
    async with unit_of_work(request.app.state.sessions) as session:
        actions = await repository.actions_of(session, oneid)
        history = await repository.history_of(session, oneid)
    return PersonActionsOut(
        oneid=oneid,
        actions=[ActionOut.model_validate(a, from_attributes=True) for a in actions],
        history=[OutcomeOut.model_validate(h, from_attributes=True) for h in history],
    )


@router.get("/deadletters", response_model=list[ActionOut])
async def dead_letters(
    request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 200
) -> list[ActionOut]:
    """Actions whose retry schedule ran out, newest first."""
    async with unit_of_work(request.app.state.sessions) as session:
        actions = await repository.dead_letters(session, limit)
    return [ActionOut.model_validate(a, from_attributes=True) for a in actions]


@router.post("/deadletters/{action_id}/retry", response_model=ActionOut)
async def retry_dead_letter(action_id: str, request: Request) -> ActionOut:
    """Send a dead-lettered action again, under the same id, with a fresh retry schedule."""
    service: AutomationService = request.app.state.service
    action = await service.retry_dead(action_id)
    if action is None:
        raise NotFound(f"no dead-lettered action {action_id}")
    return ActionOut.model_validate(action, from_attributes=True)


@router.get("/playbooks", response_model=list[PlaybookOut])
async def playbooks(request: Request) -> list[PlaybookOut]:
    """The playbooks this worker runs."""
    service: AutomationService = request.app.state.service
    return [
        PlaybookOut(
            name=p.name,
            description=p.description,
            trigger=p.trigger.model_dump(by_alias=True, exclude_none=True),
            exit_on_leave=p.exit_on_leave,
            steps=[s.model_dump(mode="json", by_alias=True) for s in p.steps],
        )
        for p in service.playbooks.playbooks
    ]
