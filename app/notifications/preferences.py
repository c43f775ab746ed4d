"""Per-user switches: category × channel, on unless turned off; critical categories always on.

Critical categories are the operator's (NOTIFICATION_CRITICAL_CATEGORIES): a user cannot turn
them off (422), and a switch stored before a category became critical is ignored.
"""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import CriticalCategory
from app.notifications.models import NotificationPreference
from app.notifications.schemas import CHANNELS, Channel
from app.sql import utcnow

P = NotificationPreference


async def load(session: AsyncSession, tenant: str, user_id: str) -> dict[str, dict[str, bool]]:
    rows = await session.scalars(
        select(P).where(P.tenant == tenant, P.user_id == user_id).order_by(P.category, P.channel)
    )
    switches: dict[str, dict[str, bool]] = {}
    for row in rows:
        switches.setdefault(row.category, {})[row.channel] = row.enabled
    return switches


async def replace(
    session: AsyncSession, tenant: str, user_id: str, categories: dict[str, dict[Channel, bool]], critical: frozenset[str],
) -> None:
    """Make `categories` the user's whole set of switches."""
    refused = sorted(c for c, channels in categories.items() if c in critical and not all(channels.values()))
    if refused:
        raise CriticalCategory(f"critical categories cannot be turned off: {', '.join(refused)}")
    now = utcnow()
    await session.execute(delete(P).where(P.tenant == tenant, P.user_id == user_id))
    session.add_all(
        P(tenant=tenant, user_id=user_id, category=category, channel=channel, enabled=enabled, updated_at=now)
        for category, channels in categories.items()
        for channel, enabled in channels.items()
    )
    await session.flush()


async def channels_for(
    session: AsyncSession, tenant: str, user_id: str, category: str, critical: frozenset[str],
) -> set[Channel]:
    """The channels a notification of `category` goes out on for this user."""
    if category in critical:
        return set(CHANNELS)
    rows = await session.execute(
        select(P.channel, P.enabled).where(P.tenant == tenant, P.user_id == user_id, P.category == category)
    )
    off = {channel for channel, enabled in rows if not enabled}
    return {channel for channel in CHANNELS if channel not in off}
