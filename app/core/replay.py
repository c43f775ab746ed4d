"""History of several channels merged into one id-ordered stream, one bounded batch at a time."""

from __future__ import annotations

import asyncio
from collections import deque

from app.core.recent import RecentEvents
from app.eventlog.base import Event, EventLog


class Replay:
    """Reads each channel's history after a cursor up to a fixed `until`, and yields the events in
    id order: a channel's next event is known only once its buffer holds one, so a batch stops
    where a buffer runs dry. A range the hub's recent window covers is read from memory, the
    log only for the rest."""

    def __init__(self, log: EventLog, tenant: str, channels: set[str], after: str, until: str, batch: int,
                 *, recent: RecentEvents | None = None) -> None:
        self.log, self.tenant, self.until, self.batch, self.recent = log, tenant, until, batch, recent
        self.cursors = {channel: after for channel in channels}
        self.buffers: dict[str, deque[Event]] = {channel: deque() for channel in channels}
        self.done: set[str] = set()

    def add(self, channel: str, after: str) -> None:
        self.cursors[channel] = after
        self.buffers[channel] = deque()
        self.done.discard(channel)

    def remove(self, channel: str) -> None:
        self.cursors.pop(channel, None)
        self.buffers.pop(channel, None)
        self.done.discard(channel)

    async def next(self) -> list[Event]:
        """The next events in order; empty once every channel is exhausted."""
        empty = [ch for ch, buffer in self.buffers.items() if not buffer and ch not in self.done]
        reads: dict[str, list[Event]] = {}
        if self.recent is not None:  # from memory where the window covers the range (no task, no I/O)
            for ch in empty:
                held = self.recent.read(self.tenant, ch, self.cursors[ch], self.until, self.batch)
                if held is not None:
                    reads[ch] = held
        wanted = [ch for ch in empty if ch not in reads]
        fetched = await asyncio.gather(*(self.log.read(self.tenant, ch, self.cursors[ch], self.until, self.batch)
                                         for ch in wanted))
        reads.update(zip(wanted, fetched, strict=True))
        for channel, events in reads.items():
            if channel not in self.buffers:  # unsubscribed while reading
                continue
            if len(events) < self.batch:
                self.done.add(channel)
            if events:
                self.buffers[channel].extend(events)
                self.cursors[channel] = events[-1].id
        out: list[Event] = []
        while len(out) < self.batch:
            ready = [ch for ch, buffer in self.buffers.items() if buffer]
            if not ready:
                break
            channel = min(ready, key=lambda ch: self.buffers[ch][0].key)
            out.append(self.buffers[channel].popleft())
            if not self.buffers[channel] and channel not in self.done:
                break  # its next event is unknown until the next read
        return out
