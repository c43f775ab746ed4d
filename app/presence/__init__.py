"""Presence: who is viewing a channel (interface in base, engines in memory and redis)."""

from __future__ import annotations

import redis.asyncio as aioredis

from app.presence.base import Presence
from app.settings import Settings


def create_presence(settings: Settings, redis: aioredis.Redis | None) -> Presence:
    """Redis (presence must span processes) on the process's Redis client; None: in memory."""
    if redis is not None:
        from app.presence.redis import RedisPresence
        from app.redis_client import keys_for

        return RedisPresence(redis, keys=keys_for(settings), ttl_seconds=settings.presence_ttl_seconds)
    from app.presence.memory import MemoryPresence

    return MemoryPresence(settings.presence_ttl_seconds)
