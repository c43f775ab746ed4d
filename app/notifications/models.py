"""The notification tables. Indexes follow the API's queries (see the migration for the why)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base
from app.sql import JSONDocument, UTCDateTime, iso

UNREAD = "read_at IS NULL AND archived_at IS NULL"
UNSEEN = "seen_at IS NULL AND archived_at IS NULL"


class Notification(Base):
    __tablename__ = "notifications"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[str] = mapped_column(String(128))
    type: Mapped[str] = mapped_column(String(64))
    category: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(200))
    message: Mapped[str] = mapped_column(Text)
    action_url: Mapped[str | None] = mapped_column(String(2048))
    data: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key"),
        # keyset pages of the whole inbox (status=all/archived), newest first
        Index("ix_notifications_inbox", "tenant", "user_id", "created_at", "id"),
        Index("ix_notifications_category", "tenant", "user_id", "category", "created_at", "id"),
        # partial: the unread list and the unread count read only unread rows
        Index("ix_notifications_unread", "tenant", "user_id", "created_at", "id",
              postgresql_where=text(UNREAD), sqlite_where=text(UNREAD)),
        Index("ix_notifications_unseen", "tenant", "user_id", "created_at", "id",
              postgresql_where=text(UNSEEN), sqlite_where=text(UNSEEN)),
    )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "user_id": self.user_id,
            "type": self.type,
            "category": self.category,
            "title": self.title,
            "message": self.message,
            "action_url": self.action_url,
            "data": self.data,
            "idempotency_key": self.idempotency_key,
            "created_at": iso(self.created_at),
            "seen_at": iso(self.seen_at),
            "read_at": iso(self.read_at),
            "archived_at": iso(self.archived_at),
        }


class NotificationPreference(Base):
    """One switch of one user: (category, medium) on or off. No row: on."""

    __tablename__ = "notification_preferences"

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    category: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The medium (in_app, web_push), in a column named `channel` by the schema and the wire
    # (the `channels` field of the preferences API); "channel" in code means a pub/sub channel.
    medium: Mapped[str] = mapped_column("channel", String(16), primary_key=True)
    enabled: Mapped[bool] = mapped_column(Boolean)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
