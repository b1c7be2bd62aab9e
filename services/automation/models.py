"""Tables of the ``automation`` schema."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Index, Integer, MetaData, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

metadata = MetaData(schema="automation")


class Base(DeclarativeBase):
    """Declarative base bound to the automation schema."""

    metadata = metadata


class Action(Base):
    """One touch action; the primary key is its idempotency key, so it exists at most once."""

    __tablename__ = "actions"

    action_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    oneid: Mapped[str] = mapped_column(String(36))
    tier_change_id: Mapped[str] = mapped_column(String(64))
    playbook: Mapped[str] = mapped_column(String(64))
    step: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (Index("ix_actions_oneid", "oneid", "created_at"),)
