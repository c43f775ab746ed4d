"""Presence in Redis, shared by every process. Scores are expiry times on Redis's clock; each
change is one Lua call, so "first to join" and "last to leave" are decided exactly once. Keys (a
members sorted set and a since hash per channel, one index set) are laid out in app/keys.py."""

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
# KEYS: members zset, since hash, index set. ARGV: member, user, ttl ms, index entry
_JOIN = _NOW + _HAS_USER + """
local first = not has_user(KEYS[1], ARGV[2], now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSETNX', KEYS[2], ARGV[1], now)
redis.call('SADD', KEYS[3], ARGV[4])
if first then return 1 end
return 0
"""
# KEYS: members zset, since hash. ARGV: member, user
_LEAVE = _NOW + _HAS_USER + """
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
if has_user(KEYS[1], ARGV[2], now) then return 0 end
return 1
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
        self._index = keys.presence_index
        self._join = redis.register_script(_JOIN)
        self._leave = redis.register_script(_LEAVE)
        self._heartbeat = redis.register_script(_HEARTBEAT)
        self._expire = redis.register_script(_EXPIRE)

    def _keys(self, tenant: str, channel: str) -> tuple[str, str]:
        return self.keys.presence(tenant, channel), self.keys.presence_since(tenant, channel)

    async def join(self, tenant: str, channel: str, user: str, connection: str) -> bool:
        members, since = self._keys(tenant, channel)
        first = await self._join(keys=[members, since, self._index],
                                 args=[f"{user}|{connection}", user, self._ttl_ms, f"{tenant}|{channel}"])
        return bool(first)

    async def leave(self, tenant: str, channel: str, user: str, connection: str) -> bool:
        members, since = self._keys(tenant, channel)
        return bool(await self._leave(keys=[members, since], args=[f"{user}|{connection}", user]))

    async def apply(self, changes: list[Change]) -> list[bool]:
        """One pipeline of script calls, run by Redis in order: one connection from the pool
        however many connections come and go at once."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for joining, (tenant, channel, user, connection) in changes:
                members, since = self._keys(tenant, channel)
                if joining:
                    await self._join(keys=[members, since, self._index],
                                     args=[f"{user}|{connection}", user, self._ttl_ms, f"{tenant}|{channel}"], client=pipe)
                else:
                    await self._leave(keys=[members, since], args=[f"{user}|{connection}", user], client=pipe)
            return [bool(first_or_last) for first_or_last in await pipe.execute()]

    async def heartbeat(self, members: list[Member]) -> None:
        for start in range(0, len(members), 500):
            chunk = members[start : start + 500]
            await self._heartbeat(keys=[self._keys(t, c)[0] for t, c, _, _ in chunk],
                                  args=[self._ttl_ms, *(f"{u}|{conn}" for _, _, u, conn in chunk)])

    async def expire(self) -> list[tuple[str, str, str]]:
        left = []
        async for entry in self.redis.sscan_iter(self._index, count=500):
            tenant, channel = entry.decode().split("|", 1)
            members, since = self._keys(tenant, channel)
            for user in await self._expire(keys=[members, since, self._index], args=[entry]):
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
