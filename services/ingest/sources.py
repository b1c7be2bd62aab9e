"""Sources and write keys: hashing, creation, and a short-lived lookup cache."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import secrets
import time
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.ingest import metrics, repository
from shared.db import unit_of_work
from shared.errors import Unauthorized, Unavailable

log = logging.getLogger(__name__)

UNKNOWN_REMEMBERED = 10_000  # refused keys remembered at most (then forgotten all at once)


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

    The caches are keyed by the key itself, which this process holds anyway while it serves the
    request, so a hit costs no hashing. Valid and refused keys are cached apart: a flood of
    random keys fills and clears only the second, never evicting a real source's key.

    When Postgres cannot answer within ``timeout_s``, a key it accepted before keeps working
    (its source does not go down with the database; a revocation waits for it to return),
    and any other key is answered 503 with ``Retry-After``: it may be valid, so not 401. For
    ``retry_after_s`` after a failed lookup no other is tried, and then one request at a time
    probes the database, so that requests do not each wait ``timeout_s`` on one that hangs.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        ttl_s: float,
        timeout_s: float = 5.0,
        retry_after_s: int = 5,
    ) -> None:
        self._sessions = sessions
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._retry_after_s = retry_after_s
        self._valid: dict[str, tuple[float, SourceRef]] = {}
        self._refused: dict[str, float] = {}
        self._down_until = 0.0
        self._failing = False  # the last lookup failed: the next one is a probe

    async def authenticate(self, write_key: str | None) -> SourceRef:
        """The source owning ``write_key``; Unauthorized when missing, unknown or revoked,
        Unavailable when only the database could tell and it does not answer."""
        if not write_key:
            raise Unauthorized("a write key is required (HTTP Basic user name, or writeKey)")
        now = time.monotonic()
        valid = self._valid.get(write_key)
        if valid is not None and now - valid[0] < self._ttl_s:
            return valid[1]
        refused = self._refused.get(write_key)
        if refused is None or now - refused >= self._ttl_s:
            if now < self._down_until:  # the database failed lately, or is being probed
                return self._without_database(valid, None)
            probing = self._failing
            if probing:  # one request tries the failing database; the others do not wait
                self._down_until = math.inf
            try:
                async with asyncio.timeout(self._timeout_s):
                    source = await self._lookup(write_key)
            except (SQLAlchemyError, OSError, TimeoutError) as exc:
                if not self._failing:
                    log.warning("write keys cannot be checked: %r", exc)
                self._failing = True
                self._down_until = time.monotonic() + self._retry_after_s
                return self._without_database(valid, exc)
            except BaseException:  # the client left, or a bug: let the next request probe
                if probing and self._down_until == math.inf:
                    self._down_until = 0.0
                raise
            self._failing, self._down_until = False, 0.0
            if source is not None:
                self._valid[write_key] = (now, source)
                self._refused.pop(write_key, None)
                return source
            self._valid.pop(write_key, None)
            if len(self._refused) >= UNKNOWN_REMEMBERED:
                self._refused.clear()
            self._refused[write_key] = now
        raise Unauthorized(
            "unknown or revoked write key; create one with `tierflow sources create NAME`"
        )

    def _without_database(
        self, valid: tuple[float, SourceRef] | None, cause: Exception | None
    ) -> SourceRef:
        """A key checked before keeps working; any other may be valid, so 503, not 401."""
        if valid is not None:
            metrics.STALE_KEYS.inc()
            return valid[1]
        raise Unavailable(
            "the write key cannot be checked now (database unavailable); retry",
            retry_after=self._retry_after_s,
        ) from cause

    async def _lookup(self, write_key: str) -> SourceRef | None:
        async with unit_of_work(self._sessions) as session:
            source = await repository.find_active_source(session, hash_key(write_key))
        if source is None:
            return None
        return SourceRef(source.source_id, source.name, source.rate_limit_per_s)


async def ensure_source(
    sessions: async_sessionmaker[AsyncSession],
    *,
    source_id: str,
    name: str,
    write_key: str,
    rate_limit_per_s: int | None = None,
) -> None:
    """Create or re-key and un-revoke a source (the development source at ingest start, tests
    and benches; ``tierflow sources create`` never changes an existing one)."""
    async with unit_of_work(sessions) as session:
        await repository.upsert_source(
            session,
            source_id=source_id,
            name=name,
            key_hash=hash_key(write_key),
            rate_limit_per_s=rate_limit_per_s,
        )
