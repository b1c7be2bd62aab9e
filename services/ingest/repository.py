"""Every query of the ingest schema."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.ingest.models import Source


async def find_active_source(session: AsyncSession, key_hash: str) -> Source | None:
    """The non-revoked source whose write key hashes to ``key_hash``."""
    result = await session.execute(
        select(Source).where(Source.key_hash == key_hash, Source.revoked_at.is_(None))
    )
    return result.scalar_one_or_none()


async def upsert_source(
    session: AsyncSession,
    *,
    source_id: str,
    name: str,
    key_hash: str,
    rate_limit_per_s: int | None = None,
) -> None:
    """Create the source, or give it this key and limit and un-revoke it."""
    statement = insert(Source).values(
        source_id=source_id, name=name, key_hash=key_hash, rate_limit_per_s=rate_limit_per_s
    )
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[Source.source_id],
            set_={
                "key_hash": key_hash,
                "name": name,
                "revoked_at": None,
                "rate_limit_per_s": rate_limit_per_s,
            },
        )
    )


async def add_source(
    session: AsyncSession,
    *,
    source_id: str,
    name: str,
    key_hash: str,
    rate_limit_per_s: int | None = None,
) -> bool:
    """Create the source; False when one with that id or name exists (nothing changes)."""
    statement = insert(Source).values(
        source_id=source_id, name=name, key_hash=key_hash, rate_limit_per_s=rate_limit_per_s
    )
    result = await session.execute(statement.on_conflict_do_nothing())
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def rekey_source(session: AsyncSession, source_id: str, key_hash: str) -> bool:
    """Give the source a new key (the old one stops working) and un-revoke it; its limit
    stays. False when there is no such source."""
    result = await session.execute(
        update(Source)
        .where(Source.source_id == source_id)
        .values(key_hash=key_hash, revoked_at=None)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def set_rate_limit(
    session: AsyncSession, source_id: str, rate_limit_per_s: int | None
) -> bool:
    """Change a source's limit (None: the deployment default); False when there is none."""
    result = await session.execute(
        update(Source)
        .where(Source.source_id == source_id)
        .values(rate_limit_per_s=rate_limit_per_s)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def list_sources(session: AsyncSession) -> list[Source]:
    """Every source, newest first."""
    result = await session.execute(select(Source).order_by(Source.created_at.desc()))
    return list(result.scalars())


async def revoke_source(session: AsyncSession, source_id: str) -> bool:
    """Revoke a source's key; False when no active source has that id."""
    result = await session.execute(
        update(Source)
        .where(Source.source_id == source_id, Source.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
