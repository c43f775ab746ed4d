"""Event log engines behind one interface (see base.EventLog)."""

from __future__ import annotations

from app.eventlog.base import EventLog
from app.settings import Settings


def create_event_log(settings: Settings) -> EventLog:
    """Redis Streams when REDIS_URL is set; otherwise the embedded in-process engine."""
    options = dict(
        max_events=settings.log_max_events,
        retention_seconds=settings.log_retention_seconds,
        idempotency_seconds=settings.idempotency_seconds,
    )
    if settings.redis_url:
        from app.eventlog.redis import RedisEventLog

        return RedisEventLog(settings.redis_url, prefix=settings.redis_prefix,
                             max_connections=settings.redis_max_connections, **options)
    from app.eventlog.memory import MemoryEventLog

    return MemoryEventLog(**options)
