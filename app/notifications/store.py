"""Notification queries. Every one is scoped by (tenant, user): another user's row is never
found, so it is a 404 like one that does not exist. Callers own the transaction."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import ColumnElement, and_, func, literal, select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import BadCursor
from app.notifications.models import Notification
from app.notifications.schemas import Status
from app.sql import UTCDateTime, insert, rows_changed

N = Notification
NOT_ARCHIVED = N.archived_at.is_(None)
IS_UNREAD = and_(N.read_at.is_(None), NOT_ARCHIVED)
IS_UNSEEN = and_(N.seen_at.is_(None), NOT_ARCHIVED)
_STATUS: dict[str, ColumnElement[bool]] = {
    "unread": IS_UNREAD,
    "unseen": IS_UNSEEN,
    "all": NOT_ARCHIVED,
    "archived": N.archived_at.is_not(None),
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
    inboxes). SQLite: every writer already holds the database's one write lock from its first
    write to its commit, and every write transaction here writes before it counts.
    """
    if db.get_bind().dialect.name == "postgresql":
        await db.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
                         {"key": f"inbox:{tenant}:{user_id}"})


async def insert_new(db: AsyncSession, values: dict[str, Any]) -> bool:
    """Insert unless the (tenant, idempotency_key) is taken; True when inserted."""
    inserted = await db.scalar(insert(db, N).values(**values).on_conflict_do_nothing().returning(N.id))
    return inserted is not None


async def by_idempotency_key(db: AsyncSession, tenant: str, key: str) -> Notification | None:
    return await db.scalar(select(N).where(N.tenant == tenant, N.idempotency_key == key))


async def get(db: AsyncSession, tenant: str, user_id: str, notification_id: str) -> Notification | None:
    return await db.scalar(select(N).where(_mine(tenant, user_id), N.id == notification_id))


async def page(
    db: AsyncSession, tenant: str, user_id: str, *, status: Status, category: str | None, limit: int,
    after: Position | None,
) -> tuple[list[Notification], Position | None]:
    """Newest first; one row more than asked tells whether there is a next page."""
    query = select(N).where(_mine(tenant, user_id), _STATUS[status])
    if category is not None:
        query = query.where(N.category == category)
    if after is not None:
        query = query.where(tuple_(N.created_at, N.id) < tuple_(literal(after.created_at, UTCDateTime()), literal(after.id)))
    rows = list(await db.scalars(query.order_by(N.created_at.desc(), N.id.desc()).limit(limit + 1)))
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], Position(last.created_at, last.id)


async def unread_count(db: AsyncSession, tenant: str, user_id: str) -> int:
    return await db.scalar(select(func.count()).select_from(N).where(_mine(tenant, user_id), IS_UNREAD)) or 0


async def badge(db: AsyncSession, tenant: str, user_id: str) -> dict[str, int]:
    """Unread and unseen counts, each read from its partial index (what events carry)."""
    unread = select(func.count()).select_from(N).where(_mine(tenant, user_id), IS_UNREAD).scalar_subquery()
    unseen = select(func.count()).select_from(N).where(_mine(tenant, user_id), IS_UNSEEN).scalar_subquery()
    row = (await db.execute(select(unread, unseen))).one()
    return {"unread_count": row[0], "unseen_count": row[1]}


async def counts(db: AsyncSession, tenant: str, user_id: str) -> dict[str, int]:
    row = (await db.execute(
        select(func.count().filter(IS_UNREAD), func.count().filter(IS_UNSEEN), func.count().filter(NOT_ARCHIVED))
        .select_from(N).where(_mine(tenant, user_id))
    )).one()
    return {"unread": row[0], "unseen": row[1], "total": row[2]}


async def update_one(
    db: AsyncSession, tenant: str, user_id: str, notification_id: str, *, when: ColumnElement[bool],
    values: dict[str, Any],
) -> Notification | None:
    """Apply `values` if the notification is the caller's and `when` holds; the changed row, or None."""
    return await db.scalar(
        update(N).where(_mine(tenant, user_id), N.id == notification_id, when).values(**values)
        .returning(N).execution_options(populate_existing=True)
    )


async def update_all(
    db: AsyncSession, tenant: str, user_id: str, *, when: ColumnElement[bool], values: dict[str, Any],
) -> int:
    return await rows_changed(db, update(N).where(_mine(tenant, user_id), when).values(**values))


def stamp(value: datetime) -> Any:
    """A timestamp as a typed bind parameter, for use inside SQL expressions (e.g. COALESCE)."""
    return literal(value, UTCDateTime())

