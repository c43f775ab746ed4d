"""Every change to an inbox: stored, announced on `user:<id>` so that each open tab updates its
list and badge, and, for a new notification, queued for Web Push.

A write transaction locks the inbox (store.lock_inbox), changes rows, counts, and writes its event
and pushes to the outbox (app/notifications/outbox.py), then commits; after the commit the writer
publishes its inbox's outbox rows. So events carry exact counts in commit order, a change that did
not commit is never announced or pushed, and one that did is announced exactly once, whatever
fails after the commit (the relay publishes what a writer could not).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, func
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import metrics
from app.core.publish import prepare
from app.errors import Conflict, InvalidEvent, NotFound
from app.eventlog.base import Draft
from app.notifications import outbox, preferences, store
from app.notifications.models import Notification, OutboxEntry
from app.notifications.outbox import Outbox
from app.notifications.schemas import SNOOZE_MAX_DAYS, BulkAction, NotificationIn
from app.push import payload, subscriptions
from app.push.queue.base import PushJob
from app.rules import user_channel
from app.settings import Settings
from app.sql import iso, utcnow
from app.tracing import NO_PARENT, Parent

N = Notification
Change = Literal["read", "unread", "archive", "unarchive"]
# the `change` each event names, per action
_CHANGED = {"read": "read", "unread": "unread", "archive": "archived", "unarchive": "unarchived"}


def _change(change: Change, now: datetime) -> tuple[ColumnElement[bool], dict[str, Any]]:
    """(which rows it applies to, what it sets): a row already so is left alone, and not announced."""
    stamp = store.stamp(now)
    if change == "read":
        return N.read_at.is_(None), {"read_at": stamp, "seen_at": func.coalesce(N.seen_at, stamp)}
    if change == "unread":
        return N.read_at.is_not(None), {"read_at": None}
    if change == "archive":
        return N.archived_at.is_(None), {"archived_at": stamp}
    return N.archived_at.is_not(None), {"archived_at": None}


class Inbox:
    def __init__(self, db: AsyncSession, *, outbox: Outbox, settings: Settings, parent: Parent = NO_PARENT) -> None:
        self.db = db
        self.outbox = outbox
        self.settings = settings
        self.parent = parent  # the caller's trace context, stored with each outbox row it writes
        # per (tenant, channel) written in this transaction: whether rows were pending before ours
        # (then publish the inbox's pending rows, in order), and our rows
        self._written: dict[tuple[str, str], tuple[bool, list[OutboxEntry]]] = {}

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
            fields = new.model_dump()
            row = N(id=str(uuid.uuid4()), **fields, created_at=now, seen_at=filed, read_at=filed, archived_at=filed)
            if not await store.insert_new(db, _columns(row)):
                first = await store.by_idempotency_key(db, tenant, new.idempotency_key or "")
                if first is None:
                    raise Conflict("the notification conflicts with one being stored concurrently; retry")
                return first, False
            await store.add_tags(db, row)
            # prepared even when not announced: the event's size limit also bounds what is stored
            event = self._event(tenant, user, "notification.created",
                                {"notification": row.to_json(), **await store.badge(db, tenant, user)})
            pushes = await self._pushes(row, urgent=new.category in critical) if "web_push" in media else []
            if "in_app" in media or pushes:
                await self._write(event if "in_app" in media else None, pushes, tenant=tenant, user=user)
        await self._publish()
        metrics.NOTIFICATIONS.inc()
        return row, True

    async def mark(self, tenant: str, user: str, notification_id: str, change: Change) -> Notification:
        """read / unread / archive / unarchive one notification; already so: returned as is, nothing announced."""
        at = utcnow()
        when, values = _change(change, at)
        event_type = "notification.read" if change == "read" else "notification.updated"
        row, _ = await self._one(tenant, user, notification_id, when, values, event_type,
                                 {"change": _CHANGED[change], "at": iso(at)})
        return row

    async def snooze(self, tenant: str, user: str, notification_id: str, until: datetime) -> Notification:
        """Hidden from every list but `snoozed` and from the counts until `until` (again: a new time)."""
        now = utcnow()
        if until <= now:
            raise InvalidEvent("`until` must be in the future")
        if until > now + timedelta(days=SNOOZE_MAX_DAYS):
            raise InvalidEvent(f"`until` may be at most {SNOOZE_MAX_DAYS} days ahead")
        row, _ = await self._one(tenant, user, notification_id, N.snoozed_until.is_distinct_from(until),
                                 {"snoozed_until": until}, "notification.updated", {"change": "snoozed", "at": iso(now)})
        return row

    async def unsnooze(self, tenant: str, user: str, notification_id: str, *, due: datetime | None = None) -> Notification:
        """Back in the inbox as unread (and unseen), announced as `notification.unsnoozed`; with
        `due`, only if its snooze had come due by then (the clock's call: so it fires once)."""
        when = N.snoozed_until.is_not(None) if due is None else N.snoozed_until <= due
        row, _ = await self._one(tenant, user, notification_id, when,
                                 {"snoozed_until": None, "read_at": None, "seen_at": None, "archived_at": None},
                                 "notification.unsnoozed", {"at": iso(utcnow())})
        return row

    async def act(self, tenant: str, user: str, notification_id: str, action_id: str) -> Notification:
        """Record the action taken (once: a second is a Conflict), and mark the notification read."""
        async with self.db.begin():
            await store.lock_inbox(self.db, tenant, user)
            row = await store.get(self.db, tenant, user, notification_id)
            if row is None:
                raise NotFound("no such notification")
            if action_id not in {action["id"] for action in row.actions or ()}:
                raise NotFound("no such action on this notification")
            if row.action_taken is not None:
                raise Conflict(f"an action was already taken: {row.action_taken}")
            at = utcnow()
            stamp = store.stamp(at)
            changed = await store.update_one(self.db, tenant, user, notification_id, when=N.action_taken.is_(None), values={
                "action_taken": action_id, "acted_at": stamp, "read_at": func.coalesce(N.read_at, stamp),
                "seen_at": func.coalesce(N.seen_at, stamp)})
            assert changed is not None  # the inbox is locked: nothing changed it since the read
            await self._write(self._event(tenant, user, "notification.updated", {
                "change": "acted", "action_id": action_id, "ids": [changed.id], "at": iso(at),
                "notification": changed.to_json(), **await store.badge(self.db, tenant, user)}))
        await self._publish()
        return changed

    async def delete(self, tenant: str, user: str, notification_id: str) -> None:
        """Gone from every list and count; the row stays as a tombstone for its idempotency key."""
        if not await self.bulk(tenant, user, [notification_id], "delete"):
            raise NotFound("no such notification")

    async def bulk(self, tenant: str, user: str, ids: Sequence[str], action: BulkAction) -> int:
        """One change to many of the caller's notifications (others' ids are skipped); how many
        changed. Announced once for the lot (`notification.deleted` once per id)."""
        ids = list(dict.fromkeys(ids))
        at = utcnow()
        when: ColumnElement[bool]
        values: dict[str, Any]
        if action == "delete":
            when, values = N.deleted_at.is_(None), {"deleted_at": store.stamp(at)}
        else:
            when, values = _change(action, at)
        async with self.db.begin():
            await store.lock_inbox(self.db, tenant, user)
            changed = await store.update_ids(self.db, tenant, user, ids, when=when, values=values)
            if changed:
                counts = await store.badge(self.db, tenant, user)
                if action == "delete":
                    for id_ in changed:
                        await self._write(self._event(tenant, user, "notification.deleted",
                                                      {"id": id_, "ids": [id_], "at": iso(at), **counts}))
                else:
                    event_type = "notification.read" if action == "read" else "notification.updated"
                    await self._write(self._event(tenant, user, event_type, {
                        "change": _CHANGED[action], "ids": changed, "at": iso(at), **counts}))
        await self._publish()
        return len(changed)

    async def read_all(self, tenant: str, user: str) -> dict[str, Any]:
        now = utcnow()
        values = {"read_at": store.stamp(now), "seen_at": func.coalesce(N.seen_at, store.stamp(now))}
        return await self._all(tenant, user, "notification.read", {"change": "read"}, now, when=store.IS_UNREAD,
                               values=values)

    async def seen_all(self, tenant: str, user: str) -> dict[str, Any]:
        now = utcnow()
        return await self._all(tenant, user, "notification.updated", {"change": "seen"}, now, when=store.IS_UNSEEN,
                               values={"seen_at": store.stamp(now)})

    async def archive_all(self, tenant: str, user: str, *, only_read: bool) -> dict[str, Any]:
        now = utcnow()
        when = store.IN_INBOX if not only_read else store.IN_INBOX & N.read_at.is_not(None)
        return await self._all(tenant, user, "notification.updated",
                               {"change": "archived", "status": "read" if only_read else None}, now,
                               when=when, values={"archived_at": store.stamp(now)})

    async def _all(self, tenant: str, user: str, event_type: str, change: dict[str, Any], now: datetime, *,
                   when: ColumnElement[bool], values: dict[str, Any]) -> dict[str, Any]:
        """A change to every notification `when` selects; `all: true` tells tabs to refetch."""
        async with self.db.begin():
            await store.lock_inbox(self.db, tenant, user)
            updated = await store.update_all(self.db, tenant, user, when=when, values=values)
            counts = await store.badge(self.db, tenant, user)
            if updated:
                await self._write(self._event(tenant, user, event_type, {**change, "all": True, "at": iso(now), **counts}))
        await self._publish()
        return {"updated": updated, **counts}

    async def _one(self, tenant: str, user: str, notification_id: str, when: ColumnElement[bool],
                   values: dict[str, Any], event_type: str, data: dict[str, Any]) -> tuple[Notification, bool]:
        """Change one notification if `when` holds and announce it; otherwise return it as it is.
        (the notification, whether it changed)"""
        async with self.db.begin():
            await store.lock_inbox(self.db, tenant, user)
            row = await store.update_one(self.db, tenant, user, notification_id, when=when, values=values)
            if row is None:
                unchanged = await store.get(self.db, tenant, user, notification_id)
                if unchanged is None:
                    raise NotFound("no such notification")
                return unchanged, False
            counts = await store.badge(self.db, tenant, user)
            await self._write(self._event(tenant, user, event_type,
                                          {**data, "ids": [row.id], "notification": row.to_json(), **counts}))
        await self._publish()
        return row, True

    async def _write(self, event: Draft | None, pushes: Sequence[PushJob] = (), *, tenant: str = "",
                     user: str = "") -> None:
        """Into the outbox, inside the transaction; published by `_publish` after the commit.
        No event: pushes alone (a notification filed unlisted), queued in the inbox's order."""
        tenant, channel = (event.tenant, event.channel) if event is not None else (tenant, user_channel(user))
        if (tenant, channel) not in self._written:
            self._written[(tenant, channel)] = (await outbox.pending(self.db, tenant, channel), [])
        self._written[(tenant, channel)][1].append(await outbox.add(self.db, tenant, channel, event, pushes, self.parent))

    async def _publish(self) -> None:
        written, self._written = self._written, {}
        for (tenant, channel), (behind, rows) in sorted(written.items()):
            if behind:
                await self.outbox.publish_inbox(tenant, channel)
            else:
                await self.outbox.publish_rows(rows)

    def _event(self, tenant: str, user: str, event_type: str, data: dict[str, Any]) -> Draft:
        return prepare(tenant, user_channel(user), event_type, data, max_event_bytes=self.settings.max_event_bytes)

    async def _pushes(self, row: Notification, *, urgent: bool) -> list[PushJob]:
        now = utcnow()
        targets = [s for s in await subscriptions.for_user(self.db, row.tenant, row.user_id)
                   if s.expiration_time is None or s.expiration_time > now]
        if not targets:
            return []
        body = payload.build(row.to_json())
        created_ms = int(time.time() * 1000)
        return [PushJob(id=str(uuid.uuid4()), subscription_id=s.id, endpoint=s.endpoint, p256dh=s.p256dh, auth=s.auth,
                        payload=body, ttl=self.settings.push_ttl_seconds,
                        urgency="high" if urgent else self.settings.push_urgency, created_ms=created_ms)
                for s in targets]


class SnoozeClock:
    """Brings due snoozes back: a chore of the outbox relay, so one process at a time runs it, and
    each snooze fires once (the change applies only while it is still snoozed)."""

    BATCH = 100

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], outbox: Outbox, settings: Settings) -> None:
        self.sessionmaker = sessionmaker
        self.outbox = outbox
        self.settings = settings

    async def __call__(self) -> float | None:
        """Release what is due; seconds until the next snooze is due (None: none)."""
        async with self.sessionmaker() as db:
            while True:
                now = utcnow()
                async with db.begin():
                    due = await store.due_snoozes(db, now, self.BATCH)
                inbox = Inbox(db, outbox=self.outbox, settings=self.settings)
                for tenant, user, notification_id in due:
                    await inbox.unsnooze(tenant, user, notification_id, due=now)
                    metrics.SNOOZES_RELEASED.inc()
                if len(due) < self.BATCH:
                    break
            async with db.begin():
                following = await store.next_snooze(db)
        return None if following is None else (following - utcnow()).total_seconds()


def _columns(row: Notification) -> dict[str, Any]:
    return {column.key: getattr(row, column.key) for column in N.__table__.columns}
