"""Presence: who is viewing a channel (interface in base, engines in memory and redis)."""

from __future__ import annotations

from app.presence.base import Presence


def create_presence(settings, redis=None) -> Presence:  # type: ignore[no-untyped-def]
    """Redis when the event log runs on Redis (presence must span processes), else in memory."""
    if redis is not None:
        from app.presence.redis import RedisPresence

        return RedisPresence(redis, prefix=settings.redis_prefix, ttl_seconds=settings.presence_ttl_seconds)
    from app.presence.memory import MemoryPresence

    return MemoryPresence(settings.presence_ttl_seconds)
