"""Every change to an inbox: stored, announced on `user:<id>` so that each open tab updates its
list and badge, and, for a new notification, queued for Web Push.

A write transaction locks the inbox (store.lock_inbox), changes rows, counts, appends its event
and enqueues its pushes, then commits. So events carry exact counts in commit order, and a failure
anywhere before the commit leaves nothing behind: the caller gets an error and may retry (with the
idempotency key, a create is stored once). What remains is the commit itself failing after the
append: then clients saw an event for a change that did not happen, and a refetch corrects them.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, func
from sqlalchemy.ext.asyncio import AsyncSession

from app import metrics
from app.core.publish import prepare
from app.errors import Conflict, NotFound
from app.eventlog.base import Draft, EventLog
from app.notifications import preferences, store
from app.notifications.models import Notification
from app.notifications.schemas import NotificationIn
from app.push import payload, subscriptions
from app.push.queue.base import PushJob, PushQueue
from app.rules import user_channel
from app.settings import Settings
from app.sql import iso, utcnow

N = Notification
Change = Literal["read", "unread", "archive"]


class Inbox:
    def __init__(self, db: AsyncSession, *, log: EventLog, queue: PushQueue, settings: Settings) -> None:
        self.db = db
        self.log = log
        self.queue = queue
        self.settings = settings

    async def create(self, new: NotificationIn) -> tuple[Notification, bool]:
        """Store, announce and push one notification; (the first one, False) on a repeated key.

        A category whose in-app medium the user turned off is filed straight into the archive
        (read and seen): stored, so idempotency and history hold, but never listed in the inbox,
        counted or announced.
        """
        db, tenant, user = self.db, new.tenant, new.user_id
        critical = self.settings.critical_categories
        now = utcnow()
        async with db.begin():
            await store.lock_inbox(db, tenant, user)
            media = await preferences.media_for(db, tenant, user, new.category, critical)
            filed = None if "in_app" in media else now
            row = N(id=str(uuid.uuid4()), **new.model_dump(), created_at=now, seen_at=filed, read_at=filed, archived_at=filed)
            if not await store.insert_new(db, _columns(row)):
                first = await store.by_idempotency_key(db, tenant, new.idempotency_key or "")
                if first is None:
                    raise Conflict("the notification conflicts with one being stored concurrently; retry")
                return first, False
            # prepared even when not announced: the event's size limit also bounds what is stored
            event = self._event(tenant, user, "notification.created",
                                {"notification": row.to_json(), **await store.badge(db, tenant, user)})
            if "in_app" in media:
                await self.log.append(event)
            if "web_push" in media:
                await self._queue_pushes(row, urgent=new.category in critical)
        metrics.NOTIFICATIONS.inc()
        return row, True

    async def mark(self, tenant: str, user: str, notification_id: str, change: Change) -> Notification:
        """read / unread / archive one notification; already so: returned as is, nothing announced."""
        at = utcnow()
        now = store.stamp(at)
        when: ColumnElement[bool]
        values: dict[str, Any]
        event_type = "notification.updated"
        if change == "read":
            when, values = N.read_at.is_(None), {"read_at": now, "seen_at": func.coalesce(N.seen_at, now)}
            event_type = "notification.read"
        elif change == "unread":
            when, values = N.read_at.is_not(None), {"read_at": None}
        else:
            when, values = N.archived_at.is_(None), {"archived_at": now}
        async with self.db.begin():
            await store.lock_inbox(self.db, tenant, user)
            row = await store.update_one(self.db, tenant, user, notification_id, when=when, values=values)
            if row is None:
                unchanged = await store.get(self.db, tenant, user, notification_id)
                if unchanged is None:
                    raise NotFound("no such notification")
                return unchanged
            await self._announce(tenant, user, event_type, {
                "change": "archived" if change == "archive" else change, "ids": [row.id], "at": iso(at),
                "notification": row.to_json()})
        return row

    async def read_all(self, tenant: str, user: str) -> dict[str, int]:
        now = utcnow()
        values = {"read_at": store.stamp(now), "seen_at": func.coalesce(N.seen_at, store.stamp(now))}
        return await self._bulk(tenant, user, "notification.read", "read", now, when=store.IS_UNREAD, values=values)

    async def seen_all(self, tenant: str, user: str) -> dict[str, int]:
        now = utcnow()
        return await self._bulk(tenant, user, "notification.updated", "seen", now, when=store.IS_UNSEEN,
                                values={"seen_at": store.stamp(now)})

    async def _bulk(self, tenant: str, user: str, event_type: str, change: str, now: datetime, *,
                    when: ColumnElement[bool], values: dict[str, Any]) -> dict[str, int]:
        async with self.db.begin():
            await store.lock_inbox(self.db, tenant, user)
            updated = await store.update_all(self.db, tenant, user, when=when, values=values)
            counts = await store.badge(self.db, tenant, user)
            if updated:
                await self.log.append(self._event(tenant, user, event_type,
                                                  {"change": change, "all": True, "at": iso(now), **counts}))
        return {"updated": updated, **counts}

    async def _announce(self, tenant: str, user: str, event_type: str, data: dict[str, Any]) -> None:
        counts = await store.badge(self.db, tenant, user)
        await self.log.append(self._event(tenant, user, event_type, {**data, **counts}))

    def _event(self, tenant: str, user: str, event_type: str, data: dict[str, Any]) -> Draft:
        return prepare(tenant, user_channel(user), event_type, data, max_event_bytes=self.settings.max_event_bytes)

    async def _queue_pushes(self, row: Notification, *, urgent: bool) -> None:
        now = utcnow()
        targets = [s for s in await subscriptions.for_user(self.db, row.tenant, row.user_id)
                   if s.expiration_time is None or s.expiration_time > now]
        if not targets:
            return
        body = payload.build(row.to_json())
        created_ms = int(time.time() * 1000)
        await self.queue.put([
            PushJob(id=str(uuid.uuid4()), subscription_id=s.id, endpoint=s.endpoint, p256dh=s.p256dh, auth=s.auth,
                    payload=body, ttl=self.settings.push_ttl_seconds,
                    urgency="high" if urgent else self.settings.push_urgency, created_ms=created_ms)
            for s in targets
        ])


def _columns(row: Notification) -> dict[str, Any]:
    return {column.key: getattr(row, column.key) for column in N.__table__.columns}
