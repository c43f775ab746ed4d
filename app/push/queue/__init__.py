"""Push queue engines behind one interface (see base.PushQueue)."""

from __future__ import annotations

import redis.asyncio as aioredis

from app.push.queue.base import PushQueue
from app.settings import Settings


def create_push_queue(settings: Settings, redis: aioredis.Redis | None) -> PushQueue:
    """A Redis Streams consumer group when the event log runs on Redis; in memory otherwise."""
    if redis is not None:
        from app.push.queue.redis import RedisPushQueue

        return RedisPushQueue(redis, prefix=settings.redis_prefix, claim_idle_ms=settings.push_claim_idle_ms)
    from app.push.queue.memory import MemoryPushQueue

    return MemoryPushQueue(claim_idle_ms=settings.push_claim_idle_ms)
