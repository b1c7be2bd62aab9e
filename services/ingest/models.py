"""Tables of the ``ingest`` schema."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Integer, MetaData, String, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

metadata = MetaData(schema="ingest")


class Base(DeclarativeBase):
    """Declarative base bound to the ingest schema."""

    metadata = metadata


class Source(Base):
    """An upstream site or app; its write key is stored only as a SHA-256 hash."""

    __tablename__ = "sources"

    source_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    rate_limit_per_s: Mapped[int | None] = mapped_column(Integer)
