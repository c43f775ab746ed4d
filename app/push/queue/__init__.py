"""Push queue engines behind one interface (see base.PushQueue)."""

from __future__ import annotations

import redis.asyncio as aioredis

from app.push.queue.base import PushQueue
from app.settings import Settings


def create_push_queue(settings: Settings, redis: aioredis.Redis | None) -> PushQueue:
    """A Redis Streams consumer group on the process's Redis client; None: in memory."""
    if redis is not None:
        from app.push.queue.redis import RedisPushQueue
        from app.redis_client import keys_for

        return RedisPushQueue(redis, keys=keys_for(settings), claim_idle_ms=settings.push_claim_idle_ms)
    from app.push.queue.memory import MemoryPushQueue

    return MemoryPushQueue(claim_idle_ms=settings.push_claim_idle_ms)
