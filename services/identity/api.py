"""Operator APIs (admin token): 360° profiles, lookups by identifier, merges, erasure."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Query, Request

from services.identity import repository
from services.identity.rules import MAX_TYPE_LENGTH, MAX_VALUE_LENGTH
from services.identity.schemas import (
    ErasureIn,
    ErasureOut,
    IdentifierOut,
    ProfileOut,
    RefusalOut,
    TraitOut,
)
from services.identity.service import Resolver, merge_notice
from shared.auth import AdminOnly
from shared.contracts import IdentityMerge
from shared.contracts.base import usable_oneid
from shared.db import unit_of_work
from shared.errors import NotFound

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["identity"], dependencies=[AdminOnly])


async def _scores(request: Request, oneid: str) -> tuple[dict[str, Any] | None, str | None]:
    """The person's tier and scores from scoring's read API; the profile stands without them."""
    client: httpx.AsyncClient = request.app.state.scoring
    try:
        response = await client.get(f"/v1/scores/{oneid}")
    except httpx.HTTPError as exc:
        return None, f"scoring unreachable: {exc!r}"
    if response.status_code == 404:
        return None, None
    if response.status_code != 200:
        return None, f"scoring answered {response.status_code}"
    body: dict[str, Any] = response.json()
    return body, None


def _require_usable(oneid: str) -> None:
    """404 for a OneID no person can have (a NUL, too long) before Postgres, which refuses a
    NUL with an error that would be a 500."""
    if not usable_oneid(oneid):
        raise NotFound(f"no live person {oneid!r}")


def _storable(text: str, length: int) -> bool:
    """Whether a column of ``length`` characters can hold ``text``: a longer text or one with a
    NUL (which Postgres refuses outright) cannot name a stored identifier."""
    return len(text) <= length and "\x00" not in text


@router.get("/profiles/{oneid}", response_model=ProfileOut)
async def get_profile(oneid: str, request: Request) -> ProfileOut:
    """A person's identifiers, traits, merge history, refused identifiers, tier and scores.

    An absorbed OneID answers with the person that absorbed it.
    """
    _require_usable(oneid)
    async with unit_of_work(request.app.state.sessions) as session:
        root = await repository.resolve_oneid(session, oneid)
        if root is None:
            raise NotFound(f"no live person {oneid}")
        person = await repository.load_persons(session, [root])
        identifiers = await repository.identifiers_of_person(session, root)
        traits = await repository.traits_of(session, root)
        absorbed = await repository.absorbed_by(session, root)
        merges = await repository.merges_involving(session, [root, *absorbed])
        refusals = await repository.refusals_involving(session, [root, *absorbed])
    scoring, scoring_error = await _scores(request, root)
    return ProfileOut(
        oneid=root,
        requested=oneid,
        created_at=person[root].created_at,
        identifiers=[
            IdentifierOut(type=i.id_type, value=i.id_value, first_seen_at=i.first_seen_at)
            for i in identifiers
        ],
        traits={
            t.name: TraitOut(value=t.value, updated_at=t.updated_at, event_id=t.event_id)
            for t in traits
        },
        absorbed=absorbed,
        merges=[merge_notice(m) for m in merges],
        refusals=[
            RefusalOut(
                event_id=r.event_id,
                rule=r.rule,
                type=r.id_type,
                value=r.id_value,
                kept=r.kept,
                other=r.other,
                refused_at=r.refused_at,
            )
            for r in refusals
        ],
        scoring=scoring,
        scoring_error=scoring_error,
    )


@router.get("/identifiers/{id_type}/{value:path}", response_model=ProfileOut)
async def lookup(id_type: str, value: str, request: Request) -> ProfileOut:
    """The profile an identifier belongs to (the value is normalised as events' are). The value
    is the rest of the path, so ids holding "/" (an external id like ``crm/123``) are reachable."""
    resolver: Resolver = request.app.state.resolver
    key = id_type.strip().lower()
    if not _storable(key, MAX_TYPE_LENGTH):
        raise NotFound(f"no identifier type {id_type!r}")
    normalized = resolver.rules.canonical(key, value, resolver.region)
    if normalized is None:
        raise NotFound(f"{id_type} {value!r} is not a usable identifier")
    if not _storable(normalized, MAX_VALUE_LENGTH):
        raise NotFound(f"no person with {key} {normalized!r}")
    async with unit_of_work(request.app.state.sessions) as session:
        oneid = await repository.owner_of(session, key, normalized)
    if oneid is None:
        raise NotFound(f"no person with {key} {normalized!r}")
    return await get_profile(oneid, request)


@router.get("/merges", response_model=list[IdentityMerge])
async def list_merges(
    request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[IdentityMerge]:
    """The latest merges, newest first."""
    async with unit_of_work(request.app.state.sessions) as session:
        merges = await repository.recent_merges(session, limit)
    return [merge_notice(m) for m in merges]


@router.post("/profiles/{oneid}/erasure", response_model=ErasureOut, status_code=202)
async def erase(oneid: str, body: ErasureIn, request: Request) -> ErasureOut:
    """Erase a person: identity deletes their raw identifiers and traits now and suppresses
    later events carrying them; scoring and automation erase on the published notice."""
    _require_usable(oneid)
    resolver: Resolver = request.app.state.resolver
    erasure = await resolver.erase(oneid, body.reason)
    try:
        await request.app.state.relay.relay()
        published = True
    except Exception:  # committed: a 500 now would send the operator's retry to a 404
        log.exception("erasure %s committed, its notice stays in the outbox", erasure.erasure_id)
        published = False
    return ErasureOut(
        erasure_id=erasure.erasure_id,
        oneid=erasure.oneid,
        oneids=erasure.oneids,
        identifiers_removed=erasure.identifiers,
        notice_published=published,
    )
