"""Sources and write keys: hashing, creation, and a short-lived lookup cache."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.ingest import repository
from shared.db import unit_of_work
from shared.errors import Unauthorized


def hash_key(write_key: str) -> str:
    """SHA-256 of a write key: keys are random tokens, so a fast hash is enough and lookups work."""
    return hashlib.sha256(write_key.encode()).hexdigest()


def new_write_key() -> str:
    """A fresh random write key (shown once, stored only hashed)."""
    return "wk_" + secrets.token_urlsafe(24)


@dataclass(frozen=True, slots=True)
class SourceRef:
    """The authenticated source of a request."""

    source_id: str
    name: str
    rate_limit_per_s: int | None = None


class SourceDirectory:
    """Resolves write keys to sources, caching answers for ``ttl_s`` (the revocation lag).

    The cache is keyed by the key itself, which this process holds anyway while it serves the
    request, so a hit costs no hashing.
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, ttl_s: float) -> None:
        self._sessions = sessions
        self._ttl_s = ttl_s
        self._cache: dict[str, tuple[float, SourceRef | None]] = {}

    async def authenticate(self, write_key: str | None) -> SourceRef:
        """The source owning ``write_key``; Unauthorized when missing, unknown or revoked."""
        if not write_key:
            raise Unauthorized("a write key is required (HTTP Basic user name, or writeKey)")
        now = time.monotonic()
        cached = self._cache.get(write_key)
        if cached is not None and now - cached[0] < self._ttl_s:
            ref = cached[1]
        else:
            async with unit_of_work(self._sessions) as session:
                source = await repository.find_active_source(session, hash_key(write_key))
            ref = (
                SourceRef(source.source_id, source.name, source.rate_limit_per_s)
                if source
                else None
            )
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[write_key] = (now, ref)
        if ref is None:
            raise Unauthorized(
                "unknown or revoked write key; create one with `tierflow sources create NAME`"
            )
        return ref


async def ensure_source(
    sessions: async_sessionmaker[AsyncSession],
    *,
    source_id: str,
    name: str,
    write_key: str,
    rate_limit_per_s: int | None = None,
) -> None:
    """Create or re-key a source (used for the development source and by ``tierflow sources``)."""
    async with unit_of_work(sessions) as session:
        await repository.upsert_source(
            session,
            source_id=source_id,
            name=name,
            key_hash=hash_key(write_key),
            rate_limit_per_s=rate_limit_per_s,
        )
