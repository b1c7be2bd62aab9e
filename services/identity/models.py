"""Tables of the ``identity`` schema: persons, identifiers, and the merge audit (an outbox too)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

metadata = MetaData(schema="identity")


class Base(DeclarativeBase):
    """Declarative base bound to the identity schema."""

    metadata = metadata


class Person(Base):
    """A OneID. An absorbed person keeps its row, pointing at the root that absorbed it."""

    __tablename__ = "persons"

    oneid: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    merged_into: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("identity.persons.oneid")
    )
    merged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    erased_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_persons_merged_into", "merged_into"),)


class Identifier(Base):
    """One normalised identifier; the primary key makes 'one person per identifier' a fact."""

    __tablename__ = "identifiers"

    id_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    id_value: Mapped[str] = mapped_column(String(512), primary_key=True)
    oneid: Mapped[str] = mapped_column(String(36), ForeignKey("identity.persons.oneid"))
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_identifiers_oneid", "oneid"),)


class MergeRecord(Base):
    """Audit of a merge, and its outbox entry until it is published."""

    __tablename__ = "merges"

    merge_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    winner: Mapped[str] = mapped_column(String(36), ForeignKey("identity.persons.oneid"))
    absorbed: Mapped[str] = mapped_column(String(36), ForeignKey("identity.persons.oneid"))
    cause_event_id: Mapped[str] = mapped_column(String(64))
    rule: Mapped[str] = mapped_column(String(64))
    merged_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    # winner/absorbed serve a profile's merge history, merged_at the newest-first list; the
    # partial index only covers the relay's unpublished rows
    __table_args__ = (
        Index("ix_merges_unpublished", "merged_at", postgresql_where="published_at IS NULL"),
        Index("ix_merges_winner", "winner"),
        Index("ix_merges_absorbed", "absorbed"),
        Index("ix_merges_merged_at", "merged_at"),
    )


class SeenEvent(Base):
    """First sighting of an event id on the raw topic, kept for the dedup window."""

    __tablename__ = "seen_events"

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    raw_partition: Mapped[int] = mapped_column(Integer)
    raw_offset: Mapped[int] = mapped_column(BigInteger)
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_seen_events_seen_at", "seen_at"),)


class RefusalRecord(Base):
    """Audit of an identifier dropped from an event because keeping it would break a limit."""

    __tablename__ = "refusals"

    refusal_id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(64))
    rule: Mapped[str] = mapped_column(String(80))
    id_type: Mapped[str] = mapped_column(String(64))
    id_value: Mapped[str] = mapped_column(String(512))
    kept: Mapped[str | None] = mapped_column(String(36))
    other: Mapped[str | None] = mapped_column(String(36))
    refused_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_refusals_kept", "kept"),
        Index("ix_refusals_other", "other"),
        Index("ix_refusals_refused_at", "refused_at"),
        Index("ix_refusals_id_value", "id_value"),  # erasure deletes refusals of its values
    )


class Trait(Base):
    """One trait of a person from identify calls; the latest event time wins."""

    __tablename__ = "traits"

    oneid: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[object] = mapped_column(JSONB, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    event_id: Mapped[str] = mapped_column(String(64))


class ErasureRecord(Base):
    """An erasure request: what was erased, and its outbox entry until it is published."""

    __tablename__ = "erasures"

    erasure_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    oneid: Mapped[str] = mapped_column(String(36))
    oneids: Mapped[list[str]] = mapped_column(ARRAY(String(36)))
    reason: Mapped[str] = mapped_column(String(500))
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_erasures_unpublished", "requested_at", postgresql_where="published_at IS NULL"),
    )


class Suppression(Base):
    """An erased identifier, kept only as a SHA-256 digest, so later events carrying it are
    dropped without the raw value being stored anywhere."""

    __tablename__ = "suppressions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    erasure_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
