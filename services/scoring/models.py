"""Tables of the ``scoring`` schema: the read model of ``tierflow.profiles``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Float, Index, Integer, MetaData, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

metadata = MetaData(schema="scoring")


class Base(DeclarativeBase):
    """Declarative base bound to the scoring schema."""

    metadata = metadata


class ProfileRow(Base):
    """The latest profile of one person, as published on ``tierflow.profiles``."""

    __tablename__ = "profiles"

    oneid: Mapped[str] = mapped_column(String(64), primary_key=True)
    tier: Mapped[str | None] = mapped_column(String(64))
    lifecycle_stage: Mapped[str] = mapped_column(String(32))
    total: Mapped[float] = mapped_column(Float)
    profile: Mapped[dict[str, Any]] = mapped_column(JSONB)
    events_counted: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        # a tier's members by total, highest first: the listing's order and keyset
        Index("ix_profiles_tier_total", "tier", total.desc(), "oneid"),
    )
