"""The events this process's hub dispatched lately, held by channel, so that a replay starting
inside that window is answered from memory.

When a process dies, its clients come back to the others at once, each resuming a few seconds
behind. Each resume reading its channels from Redis and encoding the same events again is what
makes a reconnect storm dear; from this window the reads cost nothing and the events are the very
objects live delivery already encoded (app.protocol.encode memoizes each form on the event).

The window is contiguous: every event the log holds with an id above `floor`, up to the last one
dispatched, is here (the hub tails the whole log in id order). Eviction is oldest first, so the
floor only moves forward; a read below it, or past the last event dispatched, is not answered.
"""

from __future__ import annotations

from collections import deque

from app.eventlog.base import Event, parse_cursor


class RecentEvents:
    __slots__ = ("_by_channel", "_floor", "_last", "_order", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity  # events held at most; 0: off
        self._order: deque[Event] = deque()
        self._by_channel: dict[tuple[str, str], deque[Event]] = {}
        self._floor: tuple[int, int] | None = None  # None until the hub says where it starts
        self._last: tuple[int, int] = (0, 0)

    def start(self, after: str) -> None:
        """The hub tails from `after`: everything after it will pass through `add`."""
        self._order.clear()
        self._by_channel.clear()
        self._floor = self._last = parse_cursor(after)

    def add(self, event: Event) -> None:
        """The hub dispatched `event` (ids arrive in increasing order)."""
        self._last = event.key
        if self.capacity <= 0:
            self._floor = event.key
            return
        self._order.append(event)
        key = (event.tenant, event.channel)
        held = self._by_channel.get(key)
        if held is None:
            held = self._by_channel[key] = deque()
        held.append(event)
        if len(self._order) > self.capacity:
            oldest = self._order.popleft()
            old_key = (oldest.tenant, oldest.channel)
            channel = self._by_channel[old_key]
            channel.popleft()  # the channel's oldest too: both deques are in id order
            if not channel:
                del self._by_channel[old_key]
            self._floor = oldest.key

    def read(self, tenant: str, channel: str, after: str, until: str, limit: int) -> list[Event] | None:
        """The channel's events with ids in (after, until], at most `limit`, oldest first, as
        EventLog.read answers; None when the window does not cover that range."""
        if self._floor is None:
            return None
        after_key, until_key = parse_cursor(after), parse_cursor(until)
        if after_key < self._floor or until_key > self._last:
            return None
        held = self._by_channel.get((tenant, channel))
        if not held:
            return []
        # resumes start near the newest events: walk back from the end to the first one past `after`
        start = len(held)
        while start > 0 and held[start - 1].key > after_key:
            start -= 1
        out: list[Event] = []
        for i in range(start, len(held)):
            event = held[i]
            if event.key > until_key or len(out) >= limit:
                break
            out.append(event)
        return out

    def __len__(self) -> int:
        return len(self._order)
