"""Tables of the ``scoring`` schema: the read model of ``tierflow.profiles``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Float, Index, Integer, MetaData, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

metadata = MetaData(schema="scoring")


class Base(DeclarativeBase):
    """Declarative base bound to the scoring schema."""

    metadata = metadata


class ProfileRow(Base):
    """The latest profile of one person, as published on ``tierflow.profiles``, or the
    tombstone of one erased or merged away (``profile`` and the columns read from it NULL).

    ``version`` is the record's offset in ``tierflow.profiles`` plus one, which breaks ties of
    ``updated_at`` (see ``repository.store_versions``); a tombstone row is kept, since a
    deleted row kept nothing to refuse an older profile landing after it.
    """

    __tablename__ = "profiles"

    oneid: Mapped[str] = mapped_column(String(64), primary_key=True)
    tier: Mapped[str | None] = mapped_column(String(64))
    lifecycle_stage: Mapped[str | None] = mapped_column(String(64))
    total: Mapped[float | None] = mapped_column(Float)
    profile: Mapped[dict[str, Any] | None] = mapped_column(JSONB(none_as_null=True))
    events_counted: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    version: Mapped[int] = mapped_column(BigInteger, server_default="0")

    __table_args__ = (
        # a tier's members by total, highest first: the listing's order and keyset
        Index("ix_profiles_tier_total", "tier", total.desc(), "oneid"),
    )
