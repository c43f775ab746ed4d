"""The process's one Redis client, made at start-up and handed to every part that uses Redis
(event log, ingest, presence, push queue, tickets); the lifespan closes it after all of them."""

from __future__ import annotations

import redis.asyncio as aioredis

from app.settings import Settings

# What replies are. redis-py types each one as `bytes | str` (often with `| None` or `Any`),
# whatever the client's decode_responses; this client never decodes, so they are bytes. Readers
# `cast` a reply to one of these where they take it: the one gap in redis-py's types we bridge.
Fields = dict[bytes, bytes]
StreamEntry = tuple[bytes, Fields]  # XRANGE, XREVRANGE, XAUTOCLAIM: (id, fields)
StreamReply = list[tuple[bytes, list[StreamEntry]]]  # XREAD, XREADGROUP: (stream, entries) per stream


def create_redis(settings: Settings) -> aioredis.Redis | None:
    """A client on one pool of REDIS_MAX_CONNECTIONS connections to REDIS_URL; None without REDIS_URL.

    The pool blocks: under a burst of requests a caller waits (up to 10 s) for a connection instead
    of failing. Nothing connects until the first command. The client owns its pool, so `aclose()`
    disconnects every connection.
    """
    if not settings.redis_url:
        return None
    pool = aioredis.BlockingConnectionPool.from_url(settings.redis_url, max_connections=settings.redis_max_connections,
                                                    timeout=10, health_check_interval=30)
    return aioredis.Redis.from_pool(pool)
