"""Tables of the ``automation`` schema: actions (with their schedule), the action log that is
also the outbox of ``tierflow.actions``, and the erased persons."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

metadata = MetaData(schema="automation")


class Base(DeclarativeBase):
    """Declarative base bound to the automation schema."""

    metadata = metadata


class Action(Base):
    """One touch action; the primary key is its idempotency key, so it exists at most once.

    ``status`` is ``scheduled`` (waiting for ``due_at``: a delay, a postponement or a retry),
    ``delivering`` (leased by a worker until ``lease_until``), or final: ``sent``,
    ``dead_lettered``, ``suppressed``, ``capped``, ``held_out``, ``exited``.
    """

    __tablename__ = "actions"

    action_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    oneid: Mapped[str] = mapped_column(String(64))
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
    due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    change_sequence: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    hold_tier: Mapped[str | None] = mapped_column(String(64))
    person: Mapped[dict[str, Any]] = mapped_column(JSONB)

    __table_args__ = (
        Index("ix_actions_oneid", "oneid", "created_at"),
        Index("ix_actions_due", "status", "due_at"),
        Index("ix_actions_sends", "oneid", "channel", "sent_at"),
        # the exit rule's rows (see migration 0004 for why it is its own index)
        Index(
            "ix_actions_pending",
            "oneid",
            postgresql_where=text(
                "status = 'scheduled' AND sent_at IS NULL AND hold_tier IS NOT NULL"
            ),
        ),
    )


class ActionLog(Base):
    """Every outcome of every action, in order; unpublished rows are the outbox."""

    __tablename__ = "action_log"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    action_id: Mapped[str] = mapped_column(String(36))
    oneid: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    record: Mapped[dict[str, Any]] = mapped_column(JSONB)
    published: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (
        Index("ix_action_log_action", "action_id"),
        Index("ix_action_log_oneid", "oneid"),
        Index("ix_action_log_published", "published", "id"),
    )


class StoredContact(Base):
    """Each person's contact preferences from their latest profile: a profile read before the
    tier change that plans steps (two consumer groups, each at its own pace) must still guard
    those steps."""

    __tablename__ = "contacts"

    oneid: Mapped[str] = mapped_column(String(64), primary_key=True)
    optouts: Mapped[list[str]] = mapped_column(JSONB)
    timezone: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CurrentTier(Base):
    """Each person's tier as of their latest change seen: a merge drops the absorbed person's
    steps held in a tier the winner is not in, and a due step held in a tier its person has
    left is exited at send time, whatever the tier-change consumer's lag."""

    __tablename__ = "tiers"

    oneid: Mapped[str] = mapped_column(String(64), primary_key=True)
    tier: Mapped[str] = mapped_column(String(64))
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    change_sequence: Mapped[int] = mapped_column(Integer)


class Erased(Base):
    """Persons erased on request: nothing is ever sent to them again."""

    __tablename__ = "erased"

    oneid: Mapped[str] = mapped_column(String(64), primary_key=True)
    erased_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Merged(Base):
    """Each absorbed OneID and the one it joined: merge notices arrive in any order (they are
    keyed by the absorbed id), so a merge follows the chain to the OneID that still exists."""

    __tablename__ = "merged"

    absorbed: Mapped[str] = mapped_column(String(64), primary_key=True)
    winner: Mapped[str] = mapped_column(String(64))
    merged_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
