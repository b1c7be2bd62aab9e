"""Identity lookups for operators (admin token)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from services.identity import repository
from services.identity.rules import normalize
from services.identity.schemas import IdentifierOut, PersonOut
from shared.auth import AdminOnly
from shared.db import unit_of_work
from shared.errors import NotFound

router = APIRouter(prefix="/v1", tags=["identity"], dependencies=[AdminOnly])


@router.get("/persons/{oneid}", response_model=PersonOut)
async def get_person(oneid: str, request: Request) -> PersonOut:
    """A person by OneID; an absorbed OneID answers with the person that absorbed it."""
    async with unit_of_work(request.app.state.sessions) as session:
        view = await repository.person_view(session, oneid)
    if view is None:
        raise NotFound(f"no person {oneid}")
    person, identifiers, absorbed = view
    return PersonOut(
        oneid=person.oneid,
        requested=oneid,
        created_at=person.created_at,
        identifiers=[
            IdentifierOut(type=i.id_type, value=i.id_value, first_seen_at=i.first_seen_at)
            for i in identifiers
        ],
        absorbed=absorbed,
    )


@router.get("/identifiers/{id_type}/{value}", response_model=PersonOut)
async def lookup(id_type: str, value: str, request: Request) -> PersonOut:
    """The person an identifier belongs to (the value is normalised first)."""
    normalized = normalize(id_type, value)
    if normalized is None:
        raise NotFound(f"{id_type} {value!r} is not a usable identifier")
    async with unit_of_work(request.app.state.sessions) as session:
        oneid = await repository.owner_of(session, id_type, normalized)
    if oneid is None:
        raise NotFound(f"no person with {id_type} {normalized!r}")
    return await get_person(oneid, request)
