"""Notification queries. Every one is scoped by (tenant, user): another user's row is never
found, so it is a 404 like one that does not exist; a deleted row (a tombstone, kept for its
idempotency key) is never found either. Callers own the transaction."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import ColumnElement, and_, exists, func, literal, select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import BadCursor
from app.notifications.models import Notification, NotificationTag
from app.notifications.schemas import Status
from app.sql import UTCDateTime, insert, rows_changed

N = Notification
T = NotificationTag
NOT_DELETED = N.deleted_at.is_(None)
VISIBLE = and_(N.snoozed_until.is_(None), NOT_DELETED)  # in lists and counts
# each of these spells out the predicate of its partial index (models.UNREAD / UNSEEN)
IN_INBOX = and_(N.archived_at.is_(None), VISIBLE)
IS_UNREAD = and_(N.read_at.is_(None), N.archived_at.is_(None), VISIBLE)
IS_UNSEEN = and_(N.seen_at.is_(None), N.archived_at.is_(None), VISIBLE)
IS_SNOOZED = and_(N.snoozed_until.is_not(None), NOT_DELETED)
_STATUS: dict[str, ColumnElement[bool]] = {
    "unread": IS_UNREAD,
    "unseen": IS_UNSEEN,
    "all": IN_INBOX,
    "archived": and_(N.archived_at.is_not(None), VISIBLE),
    "snoozed": IS_SNOOZED,
}


def _mine(tenant: str, user_id: str) -> ColumnElement[bool]:
    return and_(N.tenant == tenant, N.user_id == user_id)


@dataclass(frozen=True, slots=True)
class Position:
    """Where a keyset page ends: (created_at, id) of its last row, opaque to clients."""

    created_at: datetime
    id: str

    def encode(self) -> str:
        raw = orjson.dumps([self.created_at.isoformat(), self.id])
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    @classmethod
    def decode(cls, cursor: str) -> Position:
        try:
            created_at, id_ = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
            position = cls(datetime.fromisoformat(created_at), id_)
        except (binascii.Error, orjson.JSONDecodeError, TypeError, ValueError) as exc:
            raise BadCursor("not a cursor this API returned") from exc
        if position.created_at.tzinfo is None or not isinstance(position.id, str):
            raise BadCursor("not a cursor this API returned")
        return position


async def lock_inbox(db: AsyncSession, tenant: str, user_id: str) -> None:
    """Serialize the writers of one inbox for the rest of the transaction.

    Each write transaction changes rows, counts and appends its event before committing; with
    writers serialized, events reach the log in commit order and the counts they carry never go
    backwards. Postgres: a transaction-scoped advisory lock (a hash collision only serializes two
    inboxes). SQLite: the database's one write lock, taken now by a write that changes nothing.
    Waiting for the first real write is not enough: Python's sqlite3 runs the reads before it
    outside any transaction, so a writer could find no pending outbox row (or no action taken)
    in a read that another writer's commit then made stale, and publish out of order.
    """
    if db.get_bind().dialect.name == "postgresql":
        await db.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
                         {"key": f"inbox:{tenant}:{user_id}"})
    else:
        await db.execute(text("UPDATE leases SET name = name WHERE 0"))


async def insert_new(db: AsyncSession, values: dict[str, Any]) -> bool:
    """Insert unless the (tenant, idempotency_key) is taken; True when inserted."""
    inserted = await db.scalar(insert(db, N).values(**values).on_conflict_do_nothing().returning(N.id))
    return inserted is not None


async def by_idempotency_key(db: AsyncSession, tenant: str, key: str) -> Notification | None:
    return await db.scalar(select(N).where(N.tenant == tenant, N.idempotency_key == key))


async def get(db: AsyncSession, tenant: str, user_id: str, notification_id: str) -> Notification | None:
    return await db.scalar(select(N).where(_mine(tenant, user_id), N.id == notification_id, NOT_DELETED))


async def add_tags(db: AsyncSession, row: Notification) -> None:
    if row.tags:
        await db.execute(insert(db, T).values([
            {"notification_id": row.id, "tag": tag, "tenant": row.tenant, "user_id": row.user_id} for tag in row.tags]))


async def page(
    db: AsyncSession, tenant: str, user_id: str, *, status: Status, category: str | None, limit: int,
    after: Position | None, tags: Sequence[str] = (),
) -> tuple[list[Notification], Position | None]:
    """Newest first; one row more than asked tells whether there is a next page. Every tag given
    must be on a notification for it to be listed."""
    query = select(N).where(_mine(tenant, user_id), _STATUS[status])
    if category is not None:
        query = query.where(N.category == category)
    for tag in dict.fromkeys(tags):
        query = query.where(exists().where(T.tenant == tenant, T.user_id == user_id, T.tag == tag,
                                           T.notification_id == N.id))
    if after is not None:
        query = query.where(tuple_(N.created_at, N.id) < tuple_(literal(after.created_at, UTCDateTime()), literal(after.id)))
    rows = list(await db.scalars(query.order_by(N.created_at.desc(), N.id.desc()).limit(limit + 1)))
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], Position(last.created_at, last.id)


async def unread_count(db: AsyncSession, tenant: str, user_id: str) -> int:
    return await db.scalar(select(func.count()).select_from(N).where(_mine(tenant, user_id), IS_UNREAD)) or 0


async def badge(db: AsyncSession, tenant: str, user_id: str) -> dict[str, Any]:
    """What every inbox event carries: the counts, as `unread_count`/`unseen_count` (section 7)
    and as `counts` (section 10)."""
    found = await counts(db, tenant, user_id)
    return {"unread_count": found["unread"], "unseen_count": found["unseen"], "counts": found}


async def counts(db: AsyncSession, tenant: str, user_id: str) -> dict[str, int]:
    """Unread and unseen, each read from its partial index, and the inbox's total."""
    def count(where: ColumnElement[bool]) -> Any:
        return select(func.count()).select_from(N).where(_mine(tenant, user_id), where).scalar_subquery()

    row = (await db.execute(select(count(IS_UNREAD), count(IS_UNSEEN), count(IN_INBOX)))).one()
    return {"unread": row[0], "unseen": row[1], "total": row[2]}


async def update_one(
    db: AsyncSession, tenant: str, user_id: str, notification_id: str, *, when: ColumnElement[bool],
    values: dict[str, Any],
) -> Notification | None:
    """Apply `values` if the notification is the caller's and `when` holds; the changed row, or None."""
    return await db.scalar(
        update(N).where(_mine(tenant, user_id), N.id == notification_id, NOT_DELETED, when).values(**values)
        .returning(N).execution_options(populate_existing=True)
    )


async def update_all(
    db: AsyncSession, tenant: str, user_id: str, *, when: ColumnElement[bool], values: dict[str, Any],
) -> int:
    return await rows_changed(db, update(N).where(_mine(tenant, user_id), NOT_DELETED, when).values(**values))


async def update_ids(
    db: AsyncSession, tenant: str, user_id: str, ids: Sequence[str], *, when: ColumnElement[bool],
    values: dict[str, Any],
) -> list[str]:
    """`update_one` for many: the ids changed, in the order given (others' ids are never matched)."""
    changed = set(await db.scalars(
        update(N).where(_mine(tenant, user_id), N.id.in_(ids), NOT_DELETED, when).values(**values).returning(N.id)))
    return [id_ for id_ in ids if id_ in changed]


async def due_snoozes(db: AsyncSession, now: datetime, limit: int) -> list[tuple[str, str, str]]:
    """(tenant, user_id, id) of snoozes due by `now`, soonest first (from ix_notifications_snoozed)."""
    rows = await db.execute(select(N.tenant, N.user_id, N.id).where(N.snoozed_until <= now, NOT_DELETED)
                            .order_by(N.snoozed_until).limit(limit))
    return [(row[0], row[1], row[2]) for row in rows]


async def next_snooze(db: AsyncSession) -> datetime | None:
    return await db.scalar(select(func.min(N.snoozed_until)).where(IS_SNOOZED))


def stamp(value: datetime) -> Any:
    """A timestamp as a typed bind parameter, for use inside SQL expressions (e.g. COALESCE)."""
    return literal(value, UTCDateTime())

