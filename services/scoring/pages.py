"""The scoring worker's pages that read the profiles read model (Postgres), so any worker
answers for anyone: one person's scores, people per tier, and a tier's members page by page."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import faust
from sqlalchemy.exc import DataError, IntegrityError, ProgrammingError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.scoring import repository
from services.scoring.listing import parse_members_query
from services.scoring.rules import ScoringModel
from shared.contracts.base import usable_oneid
from shared.db import build_engine, build_sessionmaker, unit_of_work
from shared.errors import BadRequest, NotFound, TierflowError, Unavailable
from shared.settings import CommonSettings

log = logging.getLogger(__name__)


def error_page(web: Any, error: TierflowError) -> Any:
    """A typed error in the shared ``{"error", "detail"}`` shape, as Faust's web answers it,
    with ``Retry-After`` when the error carries one."""
    return web.json(error.body(), status=error.status_code, headers=error.headers())


READ_MODEL_DOWN_RETRY_AFTER_S = 5
READ_TIMEOUT_S = 10.0  # a page waits no longer for Postgres (the pool alone waits 30 s)


@asynccontextmanager
async def read(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A unit of work on the read model whose failure to reach Postgres in time is a 503 with
    ``Retry-After`` (as explain and ingest answer), not a bare 500: refused or lost
    connections, "starting up" and "too many clients" (plain DBAPIErrors from asyncpg), pool
    and query timeouts."""
    try:
        async with asyncio.timeout(READ_TIMEOUT_S), unit_of_work(sessions) as session:
            yield session
    except (DataError, IntegrityError, ProgrammingError):
        raise  # a bug or a query Postgres refuses, not an outage
    except (SQLAlchemyError, OSError, TimeoutError) as exc:  # sqlalchemy's TimeoutError too
        log.warning("read model unavailable: %r", exc)
        raise Unavailable(
            "the profiles read model is unavailable", retry_after=READ_MODEL_DOWN_RETRY_AFTER_S
        ) from exc


Page = Callable[..., Awaitable[Any]]


def answering_errors(page: Page) -> Page:
    """``page`` with a typed error it raises answered in the shared shape (a Faust page that
    raises answers a bare text/plain 500)."""

    @functools.wraps(page)
    async def answered(web: Any, request: Any, **params: Any) -> Any:
        try:
            return await page(web, request, **params)
        except TierflowError as error:
            return error_page(web, error)

    return answered


def add_read_model_pages(app: faust.App, model: ScoringModel, settings: CommonSettings) -> None:
    """Register the pages on ``app``; tier and stage names are checked against ``model``."""
    sessions = build_sessionmaker(build_engine(settings, application_name="tierflow-scoring-api"))
    tier_names = [tier.name for tier in model.tiers]
    stage_names = [stage.name for stage in model.stages]

    @app.page("/v1/scores/{oneid}")
    @answering_errors
    async def scores(web: Any, request: Any, oneid: str) -> Any:
        """From the read model, so any worker answers for anyone."""
        profile = None
        if usable_oneid(oneid):
            async with read(sessions) as session:
                profile = await repository.get_profile(session, oneid)
        if profile is None:
            return error_page(web, NotFound(f"no scores for {oneid}"))
        return web.json(profile.model_dump(mode="json"))

    @app.page("/v1/tiers")
    @answering_errors
    async def tiers(web: Any, request: Any) -> Any:
        """People per tier of the model, from the read model; names the model no longer has
        (people not re-evaluated since a model change) are counted apart."""
        async with read(sessions) as session:
            counts = await repository.tier_counts(session)
        return web.json(
            {
                "model_version": model.version,
                "tiers": [{"tier": name, "members": counts.pop(name, 0)} for name in tier_names],
                "untiered": counts.pop(None, 0),
                "not_in_model": counts,
            }
        )

    @app.page("/v1/tiers/{tier}/members")
    @answering_errors
    async def members(web: Any, request: Any, tier: str) -> Any:
        """A page of the tier's members, highest total first; ``next`` is the cursor of the
        next page (``?after=``), null on the last. ``?stage=`` keeps one lifecycle stage."""
        if tier not in tier_names:
            known = ", ".join(tier_names)
            return error_page(web, NotFound(f"no tier {tier!r} in model {model.version}: {known}"))
        query = parse_members_query(tier, request.query, stage_names)
        if isinstance(query, list):
            refused = [{"field": e.field, "reason": e.reason} for e in query]
            return error_page(web, BadRequest(refused))
        async with read(sessions) as session:
            page, after = await repository.tier_members(session, query)
        return web.json(
            {
                "tier": tier,
                "stage": query.stage,
                "members": page,
                "next": after.encode() if after is not None else None,
            }
        )

    del scores, tiers, members
