"""The embedded engine: the same log in one process's memory, for `make run` on a bare machine."""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_right
from collections.abc import AsyncIterator, Sequence

from app.eventlog.base import (
    ZERO,
    Draft,
    Event,
    EventLog,
    Order,
    conflict,
    cursor_from_ms,
    cursor_max,
    now_ms,
    out_of_order,
    parse_cursor,
)


class _Index:
    """Events in id order with a moving start, so trimming the oldest is O(1) amortized."""

    __slots__ = ("events", "keys", "start")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.keys: list[tuple[int, int]] = []
        self.start = 0

    def __len__(self) -> int:
        return len(self.events) - self.start

    def add(self, event: Event) -> None:
        self.events.append(event)
        self.keys.append(event.key)

    def oldest(self) -> Event:
        return self.events[self.start]

    def drop_oldest(self) -> Event:
        event = self.events[self.start]
        self.start += 1
        if self.start > 1024 and self.start * 2 > len(self.events):
            del self.events[: self.start], self.keys[: self.start]
            self.start = 0
        return event

    def between(self, after: tuple[int, int], until: tuple[int, int], limit: int) -> list[Event]:
        lo = bisect_right(self.keys, after, lo=self.start)
        hi = bisect_right(self.keys, until, lo=lo)
        return self.events[lo : min(hi, lo + limit)]

    def after(self, after: tuple[int, int]) -> list[Event]:
        return self.events[bisect_right(self.keys, after, lo=self.start) :]


class MemoryEventLog(EventLog):
    def __init__(self, *, max_events: int, retention_seconds: int, idempotency_seconds: int) -> None:
        self._max_events = max_events
        self._retention_ms = retention_seconds * 1000
        self._idempotency_seconds = idempotency_seconds
        self._log = _Index()
        self._channels: dict[tuple[str, str], _Index] = {}
        self._idempotency: dict[tuple[str, str], tuple[str, float]] = {}
        self._cursors: dict[tuple[str, str, str], str] = {}
        # (tenant, channel) -> type -> (latest event, its order)
        self._state: dict[tuple[str, str], dict[str, tuple[Event, Order | None]]] = {}
        self._origin = cursor_from_ms(now_ms() - 1)  # strictly below every id this log assigns
        self._deleted = ZERO  # the newest id trimmed away
        self._last = (0, 0)
        self._appended = asyncio.Event()

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def ping(self) -> None:
        pass

    def _next_id(self) -> str:
        ms = now_ms()
        last_ms, last_seq = self._last
        self._last = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
        return f"{self._last[0]}-{self._last[1]}"

    async def append(self, draft: Draft, idempotency_key: str | None = None) -> tuple[str, bool]:
        if idempotency_key is not None:
            prior = self._idempotency.get((draft.tenant, idempotency_key))
            if prior and prior[1] > time.monotonic():
                return prior[0], False
        kept = self._state.get((draft.tenant, draft.channel), {}).get(draft.type)
        if kept is not None and self._fresh(kept[0]) and out_of_order(draft, kept[1]):
            raise conflict(draft, kept[1].value if kept[1] else "")
        event = Event(self._next_id(), draft.tenant, draft.channel, draft.type, draft.data, traceparent=draft.traceparent)
        if draft.keeps_state:
            self._state.setdefault((draft.tenant, draft.channel), {})[draft.type] = (event, draft.order)
        self._log.add(event)
        self._channels.setdefault((draft.tenant, draft.channel), _Index()).add(event)
        if idempotency_key is not None:
            expires = time.monotonic() + self._idempotency_seconds
            self._idempotency[(draft.tenant, idempotency_key)] = (event.id, expires)
        self._trim()
        self._appended.set()
        self._appended = asyncio.Event()
        return event.id, True

    def _trim(self) -> None:
        horizon = (now_ms() - self._retention_ms, 0)
        while len(self._log) and (len(self._log) > self._max_events or self._log.oldest().key < horizon):
            gone = self._log.drop_oldest()
            self._deleted = gone.id
            channel = self._channels[(gone.tenant, gone.channel)]
            channel.drop_oldest()  # the oldest of the log is the oldest of its channel
            if not len(channel):
                del self._channels[(gone.tenant, gone.channel)]
        if len(self._idempotency) > 2 * self._max_events:
            now = time.monotonic()
            self._idempotency = {k: v for k, v in self._idempotency.items() if v[1] > now}

    def _fresh(self, event: Event) -> bool:
        """Live state expires with its channel's retention."""
        return event.key[0] > now_ms() - self._retention_ms

    async def snapshot(self, tenant: str, channel: str) -> list[Event]:
        kept = self._state.get((tenant, channel), {})
        events = [Event(e.id, e.tenant, e.channel, e.type, e.data, snapshot=True) for e, _ in kept.values() if self._fresh(e)]
        return sorted(events, key=lambda e: e.key)

    async def read(self, tenant: str, channel: str, after: str, until: str, limit: int) -> list[Event]:
        index = self._channels.get((tenant, channel))
        if index is None:
            return []
        return index.between(parse_cursor(after), parse_cursor(until), limit)

    async def head(self, partition: int = 0) -> str:
        return self._log.events[-1].id if len(self._log) else cursor_max(self._deleted, ZERO)

    async def floor(self, partition: int = 0) -> str:
        self._trim()
        return cursor_max(self._origin, self._deleted, cursor_from_ms(now_ms() - self._retention_ms))

    async def tail(self, after: str | Sequence[str]) -> AsyncIterator[list[Event]]:
        position = parse_cursor(after if isinstance(after, str) else after[0])
        while True:
            waiter = self._appended
            batch = self._log.after(position)
            if batch:
                position = batch[-1].key
                yield batch
            else:
                await waiter.wait()

    async def get_cursor(self, tenant: str, user: str, client_id: str) -> str | None:
        return self._cursors.get((tenant, user, client_id))

    async def set_cursor(self, tenant: str, user: str, client_id: str, cursor: str) -> None:
        self._cursors[(tenant, user, client_id)] = cursor
