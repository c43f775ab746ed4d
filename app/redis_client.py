"""The process's one Redis client, made at start-up and handed to every part that uses Redis
(event log, ingest, presence, push queue, tickets); the lifespan closes it after all of them.

Its pool is bounded (REDIS_MAX_CONNECTIONS) and blocking: a caller that finds every connection
busy waits up to REDIS_POOL_TIMEOUT for one, then gets `PoolExhausted` (counted as the limit
`redis_pool`), which clients hear as `busy`, not as an engine that is unreachable. Connections
left idle past REDIS_POOL_IDLE_SECONDS are closed by one periodic task per process (`PoolReaper`),
so a burst does not leave the pool at its peak size for good (redis-py never shrinks a pool).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app import metrics
from app.errors import Busy, ServiceError, Unavailable
from app.settings import Settings

logger = logging.getLogger(__name__)

# What replies are. redis-py types each one as `bytes | str` (often with `| None` or `Any`),
# whatever the client's decode_responses; this client never decodes, so they are bytes. Readers
# `cast` a reply to one of these where they take it: the one gap in redis-py's types we bridge.
Fields = dict[bytes, bytes]
StreamEntry = tuple[bytes, Fields]  # XRANGE, XREVRANGE, XAUTOCLAIM: (id, fields)
StreamReply = list[tuple[bytes, list[StreamEntry]]]  # XREAD, XREADGROUP: (stream, entries) per stream

# Seconds a client is told to wait: the engine unreachable (a restart, a failover: usually quick),
# or busy (this process's pool exhausted, or Redis answering too slowly: load, which a crowd retrying
# at once would only prolong; clients add their own jitter).
UNREACHABLE_RETRY_AFTER = 1
BUSY_RETRY_AFTER = 2

# redis-py's words when BlockingConnectionPool's wait for a free connection runs out
_NO_CONNECTION = "No connection available."


class PoolExhausted(RedisConnectionError):
    """Every connection of this process's pool stayed busy for REDIS_POOL_TIMEOUT. A subclass of
    redis-py's ConnectionError, so code that retries on a lost connection (the hub's tail, ingest)
    retries on this too; clients are told `busy`, not `unavailable`."""


class Pool(aioredis.BlockingConnectionPool):
    """redis-py's blocking pool, plus: a named error when the wait runs out, the time each idle
    connection was released (for the reaper), and the counts the metrics show."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._idle_since: weakref.WeakKeyDictionary[AbstractConnection, float] = weakref.WeakKeyDictionary()

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        try:
            connection: AbstractConnection = await super().get_connection()
        except RedisConnectionError as exc:
            if type(exc) is RedisConnectionError and exc.args == (_NO_CONNECTION,):
                metrics.LIMIT_HITS.labels(limit="redis_pool").inc()
                raise PoolExhausted(f"no Redis connection came free within {self.timeout:g} s "
                                    f"(REDIS_MAX_CONNECTIONS={self.max_connections} all busy)") from exc
            raise
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        self._idle_since[connection] = time.monotonic()
        await super().release(connection)

    @property
    def size(self) -> int:
        """Connections this pool holds (idle and in use); each is a TCP connection once used."""
        return len(self._available_connections) + len(self._in_use_connections)

    @property
    def in_use(self) -> int:
        return len(self._in_use_connections)

    async def reap(self, idle_seconds: float, keep_idle: int) -> int:
        """Disconnect and drop the idle connections released more than `idle_seconds` ago, keeping
        at least `keep_idle` idle ones (the most recently used). Returns how many were closed.

        Idle connections are a stack (released onto the end, taken from the end), so the oldest
        are at the front and the working set of a quiet process stays at the end, untouched."""
        cutoff = time.monotonic() - idle_seconds
        doomed: list[AbstractConnection] = []
        async with self._condition:  # get_connection and release change the lists under it
            available = self._available_connections
            while len(available) > keep_idle and self._idle_since.get(available[0], cutoff) <= cutoff:
                doomed.append(available.pop(0))
        for connection in doomed:
            self._idle_since.pop(connection, None)
            with contextlib.suppress(Exception):  # a connection already broken is as good as closed
                await connection.disconnect()
        return len(doomed)


def create_redis(settings: Settings) -> aioredis.Redis | None:
    """A client on one pool of REDIS_MAX_CONNECTIONS connections to REDIS_URL; None without REDIS_URL.

    The pool blocks: under a burst of requests a caller waits (up to REDIS_POOL_TIMEOUT) for a
    connection instead of failing. A command waits REDIS_SOCKET_TIMEOUT for its reply (longer than
    the blocking reads of the tail, ingest and push worker, 1 s). Nothing connects until the first
    command. The client owns its pool, so `aclose()` disconnects every connection.
    """
    if not settings.redis_url:
        return None
    pool = Pool.from_url(settings.redis_url, max_connections=settings.redis_max_connections,
                         timeout=settings.redis_pool_timeout, socket_timeout=settings.redis_socket_timeout,
                         health_check_interval=30)
    return aioredis.Redis.from_pool(pool)


def pool_of(redis: aioredis.Redis) -> Pool | None:
    pool = redis.connection_pool
    return pool if isinstance(pool, Pool) else None


class PoolReaper:
    """One task per process: every so often closes the pool's connections idle longer than
    REDIS_POOL_IDLE_SECONDS beyond REDIS_POOL_MIN_IDLE, and exports the pool's size."""

    def __init__(self, pool: Pool, *, idle_seconds: float, keep_idle: int) -> None:
        self.pool, self.idle_seconds, self.keep_idle = pool, idle_seconds, keep_idle
        # often enough that a connection goes at most half its idle time late; at most every 30 s
        self.every = min(max(idle_seconds / 2, 0.05), 30.0) if idle_seconds > 0 else 30.0
        self._task: asyncio.Task[None] | None = None

    def tick(self) -> None:
        metrics.REDIS_POOL.labels(state="in_use").set(self.pool.in_use)
        metrics.REDIS_POOL.labels(state="idle").set(self.pool.size - self.pool.in_use)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                if self.idle_seconds > 0:
                    closed = await self.pool.reap(self.idle_seconds, self.keep_idle)
                    if closed:
                        metrics.REDIS_POOL_REAPED.inc(closed)
                        logger.debug("closed %d idle Redis connections; pool now %d", closed, self.pool.size)
                self.tick()
            except Exception:  # never let the pool's upkeep die quietly
                logger.exception("Redis pool upkeep failed")

    async def start(self) -> None:
        self.tick()
        self._task = asyncio.create_task(self._run(), name="redis-pool-reaper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


def engine_failure(exc: BaseException) -> ServiceError | None:
    """What a failed Redis call means for a client, counted by kind in
    `realtime_engine_failures_total{kind}`; None when `exc` is not an engine failure.

    - pool exhausted (this process had no free connection in time) and a timeout (Redis, or
      something on the way, did not answer in time): `busy` 503, retry after BUSY_RETRY_AFTER s;
    - any other lost or refused connection: `unavailable` 503, retry after UNREACHABLE_RETRY_AFTER s.
    """
    error: ServiceError
    if isinstance(exc, PoolExhausted):
        kind, error = "pool_exhausted", Busy(
            "the server has no free connection to its event log engine; retry shortly", retry_after=BUSY_RETRY_AFTER)
    elif isinstance(exc, (RedisTimeoutError, TimeoutError)):
        kind, error = "timeout", Busy(
            "the event log engine is answering too slowly; retry shortly", retry_after=BUSY_RETRY_AFTER)
    elif isinstance(exc, RedisConnectionError):
        kind, error = "unreachable", Unavailable(
            "the event log engine is unreachable; retry shortly", retry_after=UNREACHABLE_RETRY_AFTER)
    else:
        return None
    metrics.ENGINE_FAILURES.labels(kind=kind).inc()
    return error
