"""Presence in Redis, shared by every process. Scores are expiry times on Redis's clock; each
batch of changes is one Lua call, run in order, so "first to join" and "last to leave" are decided exactly once. Keys (a
members sorted set and a since hash per channel, one index set) are laid out in app/keys.py.

With partitions (REDIS_PARTITIONS > 1, or a Cluster) each partition has its own index and a
tenant's channels are in its partition's hash tag: a batch is one call per partition it touches
(each single-slot), and the expiry sweep walks every partition's index."""

from __future__ import annotations

from typing import cast

import redis.asyncio as aioredis

from app.keys import Keys
from app.presence.base import Change, Member, Presence, Viewer, group

_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)"
_HAS_USER = """
local function has_user(key, user, now)
  local prefix = user .. '|'
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', key, now, '+inf')) do
    if string.sub(m, 1, #prefix) == prefix then return true end
  end
  return false
end
"""
# A batch of joins and leaves, in order, in one call (one EVALSHA, no pipeline: redis-py checks a
# pipeline's scripts with SCRIPT EXISTS first, a round trip more per batch).
# KEYS: index set, then a members zset and a since hash per change.
# ARGV: ttl ms, then per change: 'j' or 'l', member, user, index entry. Returns 1 per change that
# was the user's first join or last leave, else 0.
_APPLY = _NOW + _HAS_USER + """
local ttl = tonumber(ARGV[1])
local out = {}
for i = 0, (#KEYS - 1) / 2 - 1 do
  local members, since = KEYS[2 + 2 * i], KEYS[3 + 2 * i]
  local op, member, user = ARGV[2 + 4 * i], ARGV[3 + 4 * i], ARGV[4 + 4 * i]
  local moment = 0
  if op == 'j' then
    if not has_user(members, user, now) then moment = 1 end
    redis.call('ZADD', members, now + ttl, member)
    redis.call('HSETNX', since, member, now)
    redis.call('SADD', KEYS[1], ARGV[5 + 4 * i])
  else
    redis.call('HDEL', since, member)
    if redis.call('ZREM', members, member) == 1 and not has_user(members, user, now) then moment = 1 end
  end
  out[i + 1] = moment
end
return out
"""
# KEYS: zsets to refresh. ARGV: ttl ms, then one member per key
_HEARTBEAT = _NOW + """
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + tonumber(ARGV[1]), ARGV[i + 1])
end
return #KEYS
"""
# KEYS: members zset, since hash, index set. ARGV: index entry. Returns users that left.
_EXPIRE = _NOW + """
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
local left = {}
if #dead > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
  redis.call('HDEL', KEYS[2], unpack(dead))
  local alive = {}
  for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do alive[string.match(m, '^(.*)|[^|]*$')] = true end
  for _, m in ipairs(dead) do
    local user = string.match(m, '^(.*)|[^|]*$')
    if not alive[user] then alive[user] = true table.insert(left, user) end
  end
end
if redis.call('ZCARD', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[3], ARGV[1])
  redis.call('DEL', KEYS[2])
end
return left
"""


class RedisPresence(Presence):
    def __init__(self, redis: aioredis.Redis, *, keys: Keys, ttl_seconds: float) -> None:
        self.redis = redis
        self.keys = keys
        self._ttl_ms = int(ttl_seconds * 1000)
        self._indexes = [keys.presence_index_of(partition) for partition in range(keys.partitions)]
        self._heartbeat = redis.register_script(_HEARTBEAT)
        self._expire = redis.register_script(_EXPIRE)
        self._apply = redis.register_script(_APPLY)

    def _keys(self, tenant: str, channel: str) -> tuple[str, str]:
        return self.keys.presence(tenant, channel), self.keys.presence_since(tenant, channel)

    async def join(self, tenant: str, channel: str, user: str, connection: str) -> bool:
        return (await self.apply([(True, (tenant, channel, user, connection))]))[0]

    async def leave(self, tenant: str, channel: str, user: str, connection: str) -> bool:
        return (await self.apply([(False, (tenant, channel, user, connection))]))[0]

    async def apply(self, changes: list[Change]) -> list[bool]:
        """One script call, run by Redis in order: one connection from the pool and one round
        trip however many connections come and go at once."""
        if not changes:
            return []
        if len(self._indexes) == 1:
            return await self._apply_one(0, changes)
        by_partition: dict[int, list[int]] = {}
        for n, (_, (tenant, _, _, _)) in enumerate(changes):
            by_partition.setdefault(self.keys.partition(tenant), []).append(n)
        moments = [False] * len(changes)
        for partition, positions in by_partition.items():  # each partition's changes in their order
            for n, moment in zip(positions, await self._apply_one(partition, [changes[n] for n in positions]), strict=True):
                moments[n] = moment
        return moments

    async def _apply_one(self, partition: int, changes: list[Change]) -> list[bool]:
        keys: list[str] = [self._indexes[partition]]
        args: list[str | int] = [self._ttl_ms]
        for joining, (tenant, channel, user, connection) in changes:
            keys += self._keys(tenant, channel)
            args += ["j" if joining else "l", f"{user}|{connection}", user, f"{tenant}|{channel}"]
        return [bool(moment) for moment in await self._apply(keys=keys, args=args)]

    async def heartbeat(self, members: list[Member]) -> None:
        groups: dict[int, list[Member]] = {}
        if len(self._indexes) == 1:
            groups[0] = members
        else:
            for member in members:
                groups.setdefault(self.keys.partition(member[0]), []).append(member)
        for group_members in groups.values():  # one partition's keys per call: single-slot
            for start in range(0, len(group_members), 500):
                chunk = group_members[start : start + 500]
                await self._heartbeat(keys=[self._keys(t, c)[0] for t, c, _, _ in chunk],
                                      args=[self._ttl_ms, *(f"{u}|{conn}" for _, _, u, conn in chunk)])

    async def expire(self) -> list[tuple[str, str, str]]:
        left = []
        for index in self._indexes:
            async for entry in self.redis.sscan_iter(index, count=500):
                tenant, channel = entry.decode().split("|", 1)
                members, since = self._keys(tenant, channel)
                for user in await self._expire(keys=[members, since, index], args=[entry]):
                    left.append((tenant, channel, user.decode()))
        return left

    async def viewers(self, tenant: str, channel: str) -> list[Viewer]:
        members_key, since_key = self._keys(tenant, channel)
        seconds, micros = await self.redis.time()
        now = seconds * 1000 + micros // 1000
        members = cast(list[bytes], await self.redis.zrangebyscore(members_key, now, "+inf"))
        if not members:
            return []
        since = cast(list[bytes | None], await self.redis.hmget(since_key, members))
        return group([(m.decode(), int(s or now)) for m, s in zip(members, since, strict=True)])
