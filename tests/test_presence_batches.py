"""Presence changes go to the engine in batches: a burst of connects (a reconnect storm) is a few
pipelines on one Redis connection, not one call and one pooled connection per change, and an
engine failure is one log line per batch, not a traceback per connection."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from app.eventlog.base import Event
from app.eventlog.redis import RedisEventLog
from app.keys import Keys
from app.presence.base import Change
from app.presence.redis import RedisPresence
from app.presence.tracker import PresenceTracker


class CountingPresence(RedisPresence):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.batches: list[int] = []

    async def apply(self, changes: list[Change]) -> list[bool]:
        self.batches.append(len(changes))
        return await super().apply(changes)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, max_connections=4)
    yield client
    await client.aclose()


async def presence_events(log: RedisEventLog, channel: str) -> list[Event]:
    return await log.read("t1", channel, "0-0", "+", 10_000)


async def test_a_burst_of_joins_and_leaves_is_a_few_batches_and_announces_each_moment_once(redis: aioredis.Redis,
                                                                                             prefix: str) -> None:
    keys = Keys(prefix)
    log = RedisEventLog(redis, keys=keys, max_events=100_000, retention_seconds=3600, idempotency_seconds=60)
    await log.start()
    presence = CountingPresence(redis, keys=keys, ttl_seconds=30)
    tracker = PresenceTracker(presence, log, namespaces=frozenset({"repository"}), heartbeat_seconds=60)
    # 300 connections of 100 users at once, on a pool of 4 connections: one call each would wait
    # for the pool; batched, they all go through
    members = [("t1", "repository:r1", f"u{i % 100}", f"c{i}") for i in range(300)]
    await asyncio.gather(*(tracker.join(*m) for m in members))
    assert sum(presence.batches) == 300 and len(presence.batches) <= 3, presence.batches
    joins = [e for e in await presence_events(log, "repository:r1") if e.type == "presence.join"]
    assert sorted(e.data for e in joins) == sorted(b'{"user_id":"u%d"}' % i for i in range(100))  # each user once

    for m in members:
        tracker.leave(*m)
    await tracker.stop()
    assert sum(presence.batches) == 600 and len(presence.batches) <= 5, presence.batches
    leaves = [e for e in await presence_events(log, "repository:r1") if e.type == "presence.leave"]
    assert len(leaves) == 100  # each user's last connection, once
    assert await presence.viewers("t1", "repository:r1") == []


async def test_a_failed_batch_fails_its_joins_with_one_line_and_no_traceback(redis: aioredis.Redis, prefix: str,
                                                                              caplog: pytest.LogCaptureFixture) -> None:
    keys = Keys(prefix)
    log = RedisEventLog(redis, keys=keys, max_events=100_000, retention_seconds=3600, idempotency_seconds=60)
    await log.start()

    class Away(RedisPresence):
        async def apply(self, changes: list[Change]) -> list[bool]:
            raise ConnectionError("Redis is away")

    tracker = PresenceTracker(Away(redis, keys=keys, ttl_seconds=30), log, namespaces=frozenset({"repository"}),
                              heartbeat_seconds=60)
    with caplog.at_level(logging.WARNING, logger="app.presence.tracker"):
        results = await asyncio.gather(*(tracker.join("t1", "repository:r1", f"u{i}", f"c{i}") for i in range(50)),
                                       return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    records = [r for r in caplog.records if r.name == "app.presence.tracker"]
    assert 1 <= len(records) <= 2, [r.getMessage() for r in records]
    assert all(r.exc_info is None for r in records)
    assert "50 changes" in records[0].getMessage() or len(records) == 2
