"""One partition count at a time per Redis (or Cluster) and prefix.

The count is in every partitioned key (`rt:{p3/8}:log`), so processes of two REDIS_PARTITIONS
counts would publish into two layouts, and the clients of each would silently miss the other's
events. So every Redis-backed process announces its count in `<prefix>:layouts` (a hash field
`<count>|<process>` whose value is until when it holds, in ms, renewed every HEARTBEAT_SECONDS),
and refuses to start while a process of another count has announced itself within TTL_SECONDS.
A change of the count is therefore a stop-then-start, never a rolling one: every process of the
old count stopped (a clean stop withdraws its announcement at once; a killed one lapses after
TTL_SECONDS), then the new ones start, and every cursor of the old layout resumes with a reset.

Two processes of two counts starting in the same instant both pass; the heartbeat sees the other
within HEARTBEAT_SECONDS and says so loudly (log, `realtime_engine_failures_total{kind="mixed_layouts"}`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from app import metrics
from app.keys import Keys

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 2.0
TTL_SECONDS = 10.0


class MixedLayouts(RuntimeError):
    """Processes of another REDIS_PARTITIONS count use this Redis and prefix: this one must not start."""


class LayoutGuard:
    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.key = keys.layouts
        self.partitions = keys.partitions
        self.field = f"{keys.partitions}|{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._task: asyncio.Task[None] | None = None
        self._mixed = False

    async def start(self) -> None:
        """Raises MixedLayouts when another count is in use; else announces this one and keeps it so."""
        others = await self.others()
        if others:
            raise MixedLayouts(
                f"REDIS_PARTITIONS={self.partitions}, but processes with REDIS_PARTITIONS={', '.join(map(str, others))} "
                f"use this Redis under the same prefix (announced in {self.key} within {TTL_SECONDS:.0f} s): stop them "
                "first. A change of the partition count is a stop-then-start, not a rolling change: processes of two "
                "counts would publish into two layouts and their clients miss each other's events (README, Deploying)")
        await self._announce()
        self._task = asyncio.create_task(self._run(), name="layout-heartbeat")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        try:  # withdrawn at once, so that a process of the next count may start now
            await self.redis.hdel(self.key, self.field)
        except RedisError as exc:
            logger.warning("could not withdraw this process's layout from %s (%s: %s); it lapses in %.0f s",
                           self.key, type(exc).__name__, exc, TTL_SECONDS)

    async def others(self) -> list[int]:
        """The other partition counts announced and not lapsed, ascending."""
        return self._others(cast(dict[bytes, bytes], await self.redis.hgetall(self.key)), time.time() * 1000)

    def _others(self, fields: dict[bytes, bytes], now: float) -> list[int]:
        return sorted({count for field, until in fields.items()
                       if (count := int(field.split(b"|", 1)[0])) != self.partitions and float(until) > now})

    async def _announce(self) -> list[int]:
        """Renew this process's field; the other counts in use (and killed processes' long-lapsed fields removed)."""
        now = time.time() * 1000
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(self.key, self.field, str(int(now + TTL_SECONDS * 1000)))
            pipe.expire(self.key, int(TTL_SECONDS * 6))  # the hash goes when no process renews it
            pipe.hgetall(self.key)
            _, _, fields = await pipe.execute()
        lapsed = [field for field, until in fields.items() if float(until) < now - TTL_SECONDS * 1000]
        if lapsed:
            await self.redis.hdel(self.key, *lapsed)
        return self._others(fields, now)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                others = await self._announce()
            except RedisError as exc:  # Redis away: the log's own calls say so; the next beat renews
                logger.warning("layout heartbeat failed (%s: %s)", type(exc).__name__, exc)
                continue
            if others and not self._mixed:
                metrics.ENGINE_FAILURES.labels(kind="mixed_layouts").inc()
                logger.error("processes with REDIS_PARTITIONS=%s publish into another layout of this Redis while this "
                             "one (REDIS_PARTITIONS=%d) runs: clients of each miss the other's events; stop one count",
                             ", ".join(map(str, others)), self.partitions)
            self._mixed = bool(others)
