"""Push subscription queries (callers own the transaction). The endpoint is the key: a browser
re-subscribing (new keys, or a different user logged in on it) updates its one row."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import Conflict
from app.push.models import PushSubscription
from app.sql import insert, rows_changed, utcnow


async def upsert(
    db: AsyncSession,
    *,
    tenant: str,
    user_id: str,
    endpoint: str,
    p256dh: str,
    auth: str,
    expiration_time: datetime | None,
    user_agent: str | None,
) -> tuple[PushSubscription, bool]:
    """Store the subscription; returns it and whether it was new."""
    now = utcnow()
    owned = {"tenant": tenant, "user_id": user_id, "p256dh": p256dh, "auth": auth,
             "expiration_time": expiration_time, "user_agent": user_agent, "updated_at": now}
    created = await db.scalar(
        insert(db, PushSubscription)
        .values(id=str(uuid.uuid4()), endpoint=endpoint, created_at=now, **owned)
        .on_conflict_do_nothing()
        .returning(PushSubscription.id)
    )
    if created is not None:
        row = await db.get(PushSubscription, created)
    else:
        row = await db.scalar(
            update(PushSubscription).where(PushSubscription.endpoint == endpoint).values(**owned)
            .returning(PushSubscription).execution_options(populate_existing=True)
        )
    if row is None:  # deleted between our insert attempt and the update
        raise Conflict("the subscription changed concurrently; send it again")
    return row, created is not None


async def for_user(db: AsyncSession, tenant: str, user_id: str) -> list[PushSubscription]:
    rows = await db.scalars(
        select(PushSubscription)
        .where(PushSubscription.tenant == tenant, PushSubscription.user_id == user_id)
        .order_by(PushSubscription.created_at, PushSubscription.id)
    )
    return list(rows)


async def remove(db: AsyncSession, tenant: str, user_id: str, endpoint: str) -> bool:
    """The caller's own subscription only; False when there is none."""
    mine = delete(PushSubscription).where(PushSubscription.tenant == tenant, PushSubscription.user_id == user_id,
                                          PushSubscription.endpoint == endpoint)
    return await rows_changed(db, mine) > 0


async def remove_dead(db: AsyncSession, subscription_id: str, endpoint: str) -> bool:
    """Forget a subscription the push service called gone (404/410)."""
    dead = delete(PushSubscription).where(PushSubscription.id == subscription_id, PushSubscription.endpoint == endpoint)
    return await rows_changed(db, dead) > 0
