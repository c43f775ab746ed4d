"""The push queue on Redis Streams: every process's worker reads one consumer group.

Keys (laid out in app/keys.py): `<prefix>:push` (the stream, group `push`) and
`<prefix>:push:delayed` (a sorted set of jobs waiting for their retry time, scored by when they are
due). A job's entry is acknowledged and deleted only once settled; an entry a dead worker left
pending is taken over with XAUTOCLAIM after PUSH_CLAIM_IDLE_MS. Moving a job between the stream and
the delayed set is one script, so a crash in between cannot lose or duplicate it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence
from typing import cast

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from app.keys import PUSH_GROUP, Keys
from app.push.queue.base import Delivery, PushJob, PushQueue
from app.redis_client import StreamEntry, StreamReply

logger = logging.getLogger(__name__)

GROUP = PUSH_GROUP
PROMOTE_BATCH = 100

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: stream, delayed. ARGV: group, entry id, delay ms, job. An entry no longer pending was
# settled by a worker that took it over: that one owns the job, so nothing is re-queued.
_RETRY = _NOW_MS + """
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if acked == 1 then redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[4]) end
return acked
"""

# KEYS: delayed, stream. ARGV: batch size. Due jobs go back on the stream; returns the ms until
# the next one is due (-1: none waiting), so a blocking read never sleeps past it.
_PROMOTE = _NOW_MS + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, job in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'job', job)
  redis.call('ZREM', KEYS[1], job)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if nxt[2] then return math.max(tonumber(nxt[2]) - now, 0) end
return -1
"""


# KEYS: stream, then one "already put" key per job. ARGV: one (job, ttl seconds) pair per job;
# a job is remembered for its TTL (at least a minute), past which a push is not worth sending.
_PUT = """
local queued = 0
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', math.max(tonumber(ARGV[2 * i - 2]), 60)) then
    redis.call('XADD', KEYS[1], '*', 'job', ARGV[2 * i - 3])
    queued = queued + 1
  end
end
return queued
"""


class RedisPushQueue(PushQueue):
    def __init__(self, redis: aioredis.Redis, *, keys: Keys, claim_idle_ms: int) -> None:
        self.redis = redis
        self.stream = keys.push
        self.delayed = keys.push_delayed
        self._put_marker = keys.push_put
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._claim_idle_ms = claim_idle_ms
        self._retry = redis.register_script(_RETRY)
        self._promote = redis.register_script(_PROMOTE)
        self._put = redis.register_script(_PUT)

    async def start(self) -> None:
        await self._create_group()

    async def close(self) -> None:
        return None  # the Redis client is shared; whoever made it closes it

    async def _create_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def put(self, jobs: Sequence[PushJob]) -> None:
        if not jobs:
            return
        args: list[bytes | int] = []
        for job in jobs:
            args += [job.encode(), job.ttl]
        await self._put(keys=[self.stream, *(self._put_marker + job.id for job in jobs)], args=args)

    async def take(self, count: int, block_seconds: float) -> list[Delivery]:
        deadline = time.monotonic() + block_seconds
        try:
            while True:
                next_due_ms = await self._promote(keys=[self.delayed, self.stream], args=[PROMOTE_BATCH])
                claimed = await self.redis.xautoclaim(
                    self.stream, GROUP, self.consumer, min_idle_time=self._claim_idle_ms, start_id="0-0", count=count
                )
                _next, entries, _deleted = cast(tuple[bytes, list[StreamEntry], list[bytes]], claimed)
                remaining_ms = int((deadline - time.monotonic()) * 1000)
                if entries or remaining_ms <= 0:
                    break
                block_ms = min(remaining_ms, next_due_ms) if next_due_ms >= 0 else remaining_ms
                response = cast(StreamReply | None, await self.redis.xreadgroup(
                    GROUP, self.consumer, {self.stream: ">"}, count=count, block=max(block_ms, 1)
                ))
                entries = [entry for _stream, batch in response or () for entry in batch]
                if entries:
                    break
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self._create_group()  # the stream was deleted (or Redis lost it): set it up again
            return []
        deliveries = []
        for entry_id, fields in entries:
            receipt = entry_id.decode()
            try:
                deliveries.append(Delivery(PushJob.decode(fields[b"job"]), receipt))
            except (KeyError, TypeError, orjson.JSONDecodeError) as exc:
                logger.error("push queue: dropping malformed entry %s: %s", receipt, exc)
                await self._settle(receipt)
        return deliveries

    async def done(self, delivery: Delivery) -> None:
        await self._settle(delivery.receipt)

    async def retry(self, delivery: Delivery, delay_seconds: float) -> None:
        job = delivery.job.next_attempt()
        await self._retry(keys=[self.stream, self.delayed],
                          args=[GROUP, delivery.receipt, int(delay_seconds * 1000), job.encode()])

    async def _settle(self, receipt: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, GROUP, receipt)
            pipe.xdel(self.stream, receipt)
            await pipe.execute()
