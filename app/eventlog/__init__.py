"""Event log engines behind one interface (see base.EventLog)."""

from __future__ import annotations

import redis.asyncio as aioredis

from app.eventlog.base import EventLog
from app.settings import Settings


def create_event_log(settings: Settings, redis: aioredis.Redis | None) -> EventLog:
    """Redis Streams on the process's Redis client (app.redis_client.create_redis, None without
    REDIS_URL: one Redis, or a primary found through Sentinel); otherwise the embedded in-process
    engine. The log does not close the client."""
    options = dict(
        max_events=settings.log_max_events,
        retention_seconds=settings.log_retention_seconds,
        idempotency_seconds=settings.idempotency_seconds,
    )
    if redis is not None:
        from app.eventlog.redis import RedisEventLog
        from app.redis_client import keys_for

        return RedisEventLog(redis, keys=keys_for(settings), wait_replicas=settings.redis_wait_replicas,
                             wait_timeout_ms=settings.redis_wait_timeout_ms, **options)
    from app.eventlog.memory import MemoryEventLog

    return MemoryEventLog(**options)
