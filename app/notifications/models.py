"""The notification tables. Indexes follow the API's queries (see the migrations for the why).

A notification is *visible* while neither snoozed nor deleted: only visible rows are listed
(but `status=snoozed`) and counted. A deleted row is kept as a tombstone so that its
idempotency key still answers with the first id and never creates it again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base
from app.sql import JSONDocument, UTCDateTime, iso
from app.tracing import TRACEPARENT_MAX, TRACESTATE_MAX

VISIBLE = "snoozed_until IS NULL AND deleted_at IS NULL"
UNREAD = f"read_at IS NULL AND archived_at IS NULL AND {VISIBLE}"
UNSEEN = f"seen_at IS NULL AND archived_at IS NULL AND {VISIBLE}"


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
    actions: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONDocument)
    tags: Mapped[list[str] | None] = mapped_column(JSONDocument)  # as given; filters use NotificationTag
    action_taken: Mapped[str | None] = mapped_column(String(64))
    acted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    snoozed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

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
        # the snooze clock reads only snoozed rows, soonest first
        Index("ix_notifications_snoozed", "snoozed_until",
              postgresql_where=text("snoozed_until IS NOT NULL"), sqlite_where=text("snoozed_until IS NOT NULL")),
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
            "actions": self.actions or [],
            "tags": self.tags or [],
            "action_taken": self.action_taken,
            "acted_at": iso(self.acted_at),
            "snoozed_until": iso(self.snoozed_until),
        }


class NotificationTag(Base):
    """One tag of one notification, a row each so that `?tag=a&tag=b` is an indexed lookup on
    both databases (JSON containment differs between them)."""

    __tablename__ = "notification_tags"

    notification_id: Mapped[str] = mapped_column(String(36), ForeignKey("notifications.id", ondelete="CASCADE"),
                                                 primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[str] = mapped_column(String(128))

    __table_args__ = (Index("ix_notification_tags_lookup", "tenant", "user_id", "tag", "notification_id"),)


class OutboxEntry(Base):
    """An inbox event (and its pushes) written in the transaction of the change it announces;
    the relay (app.notifications.outbox) publishes it after the commit, then deletes it."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True)
    # the publish's idempotency key: random, since ids may be handed out again (SQLite reuses a
    # deleted row's, a database restored or recreated starts over) while the log remembers keys
    key: Mapped[str] = mapped_column(String(36))
    tenant: Mapped[str] = mapped_column(String(128))
    channel: Mapped[str] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(64))  # "": no event, pushes alone
    data: Mapped[str] = mapped_column(Text)  # the event's data, compact JSON, exactly as published
    pushes: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONDocument)  # PushJob fields
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # the W3C context of the change's caller (TRACING on): the publish span's parent, whoever publishes
    traceparent: Mapped[str | None] = mapped_column(String(TRACEPARENT_MAX))
    tracestate: Mapped[str | None] = mapped_column(String(TRACESTATE_MAX))

    # what the writer of one inbox publishes right after its commit: that inbox's rows, in order
    __table_args__ = (Index("ix_outbox_inbox", "tenant", "channel", "id"),)


class Lease(Base):
    """Who does a job that one process at a time may do (the outbox relay), until when."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


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
