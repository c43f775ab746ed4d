"""Per-user switches: category × medium (in_app, web_push; "channel" on the wire and in the
database), on unless turned off; critical categories always on.

Critical categories are the operator's (NOTIFICATION_CRITICAL_CATEGORIES): a user cannot turn
them off (422), and a switch stored before a category became critical is ignored.
"""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import CriticalCategory
from app.notifications.models import NotificationPreference
from app.notifications.schemas import MEDIA, Medium
from app.sql import utcnow

P = NotificationPreference


async def load(db: AsyncSession, tenant: str, user_id: str) -> dict[str, dict[str, bool]]:
    rows = await db.scalars(
        select(P).where(P.tenant == tenant, P.user_id == user_id).order_by(P.category, P.medium)
    )
    switches: dict[str, dict[str, bool]] = {}
    for row in rows:
        switches.setdefault(row.category, {})[row.medium] = row.enabled
    return switches


async def replace(
    db: AsyncSession, tenant: str, user_id: str, categories: dict[str, dict[Medium, bool]], critical: frozenset[str],
) -> None:
    """Make `categories` the user's whole set of switches."""
    refused = sorted(c for c, media in categories.items() if c in critical and not all(media.values()))
    if refused:
        raise CriticalCategory(f"critical categories cannot be turned off: {', '.join(refused)}")
    now = utcnow()
    await db.execute(delete(P).where(P.tenant == tenant, P.user_id == user_id))
    db.add_all(
        P(tenant=tenant, user_id=user_id, category=category, medium=medium, enabled=enabled, updated_at=now)
        for category, media in categories.items()
        for medium, enabled in media.items()
    )
    await db.flush()


async def media_for(
    db: AsyncSession, tenant: str, user_id: str, category: str, critical: frozenset[str],
) -> set[Medium]:
    """The media a notification of `category` goes out on for this user."""
    if category in critical:
        return set(MEDIA)
    rows = await db.execute(
        select(P.medium, P.enabled).where(P.tenant == tenant, P.user_id == user_id, P.category == category)
    )
    off = {medium for medium, enabled in rows if not enabled}
    return {medium for medium in MEDIA if medium not in off}
