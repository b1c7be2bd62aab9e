"""Automation API for operators: a person's actions and the playbooks in force."""

from __future__ import annotations

from fastapi import APIRouter, Request

from services.automation import repository
from services.automation.playbooks import PlaybookSet
from services.automation.schemas import ActionOut, PlaybookOut
from shared.auth import AdminOnly
from shared.db import unit_of_work

router = APIRouter(prefix="/v1", tags=["automation"], dependencies=[AdminOnly])


@router.get("/persons/{oneid}/actions", response_model=list[ActionOut])
async def person_actions(oneid: str, request: Request) -> list[ActionOut]:
    """Every action taken for a person, newest first."""
    async with unit_of_work(request.app.state.sessions) as session:
        actions = await repository.actions_of(session, oneid)
    return [ActionOut.model_validate(a, from_attributes=True) for a in actions]


@router.get("/playbooks", response_model=list[PlaybookOut])
async def playbooks(request: Request) -> list[PlaybookOut]:
    """The playbooks this worker runs."""
    loaded: PlaybookSet = request.app.state.playbooks
    return [
        PlaybookOut(
            name=p.name,
            description=p.description,
            trigger=p.trigger.model_dump(),
            steps=[s.name for s in p.steps],
        )
        for p in loaded.playbooks
    ]
