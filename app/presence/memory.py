"""Presence in this process's memory (the embedded engine: one process, nothing to expire but
connections that were never closed cleanly)."""

from __future__ import annotations

import time

from app.presence.base import Presence, Viewer, group, member


class MemoryPresence(Presence):
    def __init__(self, ttl_seconds: float) -> None:
        self._ttl = ttl_seconds
        # (tenant, channel) -> member -> (since ms, expires at monotonic)
        self._channels: dict[tuple[str, str], dict[str, tuple[int, float]]] = {}

    def _live_users(self, key: tuple[str, str]) -> set[str]:
        now = time.monotonic()
        return {m.rsplit("|", 1)[0] for m, (_, exp) in self._channels.get(key, {}).items() if exp > now}

    async def join(self, tenant: str, channel: str, user: str, connection: str) -> bool:
        key = (tenant, channel)
        first = user not in self._live_users(key)
        self._channels.setdefault(key, {})[member(user, connection)] = (int(time.time() * 1000), time.monotonic() + self._ttl)
        return first

    async def leave(self, tenant: str, channel: str, user: str, connection: str) -> bool:
        key = (tenant, channel)
        members = self._channels.get(key, {})
        if members.pop(member(user, connection), None) is None:
            return False
        if not members:
            self._channels.pop(key, None)
        return user not in self._live_users(key)

    async def heartbeat(self, members: list[tuple[str, str, str, str]]) -> None:
        expires = time.monotonic() + self._ttl
        for tenant, channel, user, connection in members:
            entries = self._channels.get((tenant, channel), {})
            name = member(user, connection)
            if name in entries:
                entries[name] = (entries[name][0], expires)

    async def expire(self) -> list[tuple[str, str, str]]:
        now = time.monotonic()
        left = []
        for key, members in list(self._channels.items()):
            dead = [m for m, (_, exp) in members.items() if exp <= now]
            for name in dead:
                del members[name]
            alive = self._live_users(key)
            left += [(key[0], key[1], u) for u in {m.rsplit("|", 1)[0] for m in dead} if u not in alive]
            if not members:
                del self._channels[key]
        return left

    async def viewers(self, tenant: str, channel: str) -> list[Viewer]:
        now = time.monotonic()
        members = self._channels.get((tenant, channel), {})
        return group([(m, since) for m, (since, exp) in members.items() if exp > now])
