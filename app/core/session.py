"""The subscription core: what one client connection sees, independent of its transport.

A session registers its channels with the hub first, then replays history from the log up to
the head it read after registering; live events that arrive meanwhile wait in its queue and are
released only past the replay's last id. So a resume that races live events neither skips nor
duplicates one. Memory is bounded: while replaying, an overflowing queue is dropped and the
replay simply goes on reading the log; while live, an overflowing queue cuts the client off
(it resumes with its cursor).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from app import metrics
from app.auth import Principal
from app.channels import Authorizer, joined_channels
from app.core.hub import Hub
from app.errors import ServiceError, TooManySubscriptions
from app.eventlog.base import ZERO, Event, EventLog, parse_cursor
from app.presence.tracker import PresenceTracker


class SlowConsumer(ServiceError):
    status, code = 429, "slow_consumer"


@dataclass(slots=True)
class Batch:
    events: list[Event] = field(default_factory=list)
    reset: bool = False


class _Replay:
    """Merges the history of several channels in id order, one bounded batch per call."""

    def __init__(self, log: EventLog, tenant: str, channels: set[str], after: str, until: str, batch: int) -> None:
        self.log, self.tenant, self.until, self.batch = log, tenant, until, batch
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
        reads = await asyncio.gather(
            *(self.log.read(self.tenant, ch, self.cursors[ch], self.until, self.batch) for ch in empty)
        )
        for channel, events in zip(empty, reads):
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


class Session:
    """One client connection's view of the log (slots: a process holds one per connection)."""

    __slots__ = (
        "_closed",
        "_delivered",
        "_flush_every",
        "_flushed_at",
        "_max_backlog",
        "_opened",
        "_overflowed",
        "_parked",
        "_position_key",
        "_presence",
        "_presence_sticky",
        "_queue",
        "_replay",
        "_replay_batch",
        "_reset_pending",
        "_saved",
        "_slow",
        "_snapshots",
        "_state_namespaces",
        "_wake",
        "authorizer",
        "channels",
        "client_id",
        "connection_id",
        "direct",
        "hub",
        "log",
        "max_subscriptions",
        "on_cut_off",
        "position",
        "principal",
        "transport",
    )

    def __init__(
        self,
        *,
        log: EventLog,
        hub: Hub,
        authorizer: Authorizer,
        principal: Principal,
        transport: str,
        max_backlog: int,
        replay_batch: int,
        client_id: str | None = None,
        cursor_flush_seconds: float = 0.5,
        state_namespaces: frozenset[str] = frozenset(),
        presence: PresenceTracker | None = None,
        presence_sticky: bool = False,
        max_subscriptions: int = 0,
    ) -> None:
        self.log, self.hub, self.authorizer = log, hub, authorizer
        self.max_subscriptions = max_subscriptions  # MAX_SUBSCRIPTIONS; 0: unlimited
        self.principal = principal
        self.transport = transport
        self._delivered = metrics.DELIVERED.labels(transport=transport)  # looked up once, not per batch
        self.client_id = client_id
        self.channels: set[str] = set()
        self.position: str | None = None  # the last id handed to the client (the cursor)
        self._position_key: tuple[int, int] = (0, 0)
        self._max_backlog = max_backlog
        self._replay_batch = replay_batch
        self._queue: deque[Event] = deque()
        self._wake = asyncio.Event()
        self._replay: _Replay | None = None
        self._overflowed = False
        self._reset_pending = False
        self._slow = False
        self.on_cut_off: Callable[[], None] | None = None  # for a transport that must act at once
        # A transport that can write an event to its client synchronously (WebSocket) sets this;
        # while the session is parked (nothing queued, replayed or pending), the hub's deliver()
        # then hands live events straight to it: no queue, no task wake-up.
        self.direct: Callable[[Event], bool] | None = None
        self._parked = False
        self._saved: str | None = None
        self._flush_every = cursor_flush_seconds
        self._flushed_at = 0.0
        self._closed = False
        self._opened = False
        self._state_namespaces = state_namespaces
        self._snapshots: list[Event] = []
        self._presence = presence
        # a long-poll "connection" spans many requests: it keeps one id and leaves by expiry only
        self._presence_sticky = presence_sticky
        self.connection_id = f"poll-{client_id or 'default'}" if presence_sticky else PresenceTracker.new_connection_id()

    # --- subscriptions -------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        """Authorize and join one channel; live from now on (plus history when replaying).

        Over MAX_SUBSCRIPTIONS (the automatic user: and tenant: channels count) it raises
        TooManySubscriptions before asking the authorizer, on every transport alike."""
        if channel in self.channels:
            return
        if self.max_subscriptions and len(self.channels) >= self.max_subscriptions:
            metrics.LIMIT_HITS.labels(limit="subscriptions").inc()
            raise TooManySubscriptions(
                f"a connection holds at most {self.max_subscriptions} channels (user: and tenant: included); "
                "unsubscribe from one first", channel=channel)
        await self.authorizer.check(self.principal, channel)
        self.hub.add(self, channel)
        self.channels.add(channel)
        if self._replay is not None:
            self._replay.add(channel, await self.log.head())
        elif self._opened:  # joined without a cursor: its live state comes first
            await self._queue_snapshots([channel])
            if self._snapshots:
                self._wake.set()
        if self._presence is not None and self._presence.tracks(channel):
            await self._presence.join(self.principal.tenant, channel, self.principal.user, self.connection_id)

    def unsubscribe(self, channel: str) -> None:
        if channel in self.channels:
            self.channels.discard(channel)
            self.hub.remove(self, channel)
            if self._replay is not None:
                self._replay.remove(channel)
            if self._presence is not None and self._presence.tracks(channel):
                member = (self.principal.tenant, channel, self.principal.user, self.connection_id)
                if self._presence_sticky:
                    self._presence.release(*member)
                else:
                    self._presence.leave(*member)

    async def _queue_snapshots(self, channels: list[str]) -> None:
        for channel in channels:
            if channel.partition(":")[0] in self._state_namespaces:
                self._snapshots += await self.log.snapshot(self.principal.tenant, channel)

    async def open(self, channels: list[str], since: str | None) -> list[ServiceError]:
        """Join the automatic and requested channels, then position the stream.

        `since` (or, without it, the client_id's stored cursor) starts a replay; a cursor older
        than the log's history queues a reset and starts at the head. Nothing starts at head.
        Returns the channels refused (as errors); the others are joined.
        """
        if since is not None:
            parse_cursor(since)
        refused: list[ServiceError] = []
        for channel in joined_channels(self.principal) + channels:
            try:
                await self.subscribe(channel)
            except ServiceError as exc:
                refused.append(exc)
        if since is None and self.client_id:
            since = await self.log.get_cursor(self.principal.tenant, self.principal.user, self.client_id)
        head = await self.log.head()
        if head == ZERO:  # an empty log: its floor is a cursor that resumes later without a reset
            head = await self.log.floor()
        self._opened = True
        if since is None:
            self._move(head)
            self._saved = head  # an empty answer never moves the stored cursor
            await self._queue_snapshots(sorted(self.channels))
            return refused
        metrics.RESUMES.inc()
        # a cursor at (or past) the head lost nothing, however long the log has been quiet
        if parse_cursor(since) < parse_cursor(await self.log.floor()) and parse_cursor(since) < parse_cursor(head):
            metrics.RESETS.inc()
            self._reset_pending = True
            self._move(head)
            await self._queue_snapshots(sorted(self.channels))
            return refused
        self._move(since)
        self._saved = since
        self._replay = _Replay(self.log, self.principal.tenant, set(self.channels), since, head, self._replay_batch)
        return refused

    @property
    def cut_off(self) -> bool:
        """The client fell more than MAX_BACKLOG events behind: next_batch raises SlowConsumer."""
        return self._slow

    def close(self) -> None:
        self._closed = True
        self.direct = None
        for channel in list(self.channels):
            self.unsubscribe(channel)
        self._wake.set()

    # --- delivery ------------------------------------------------------------------------

    def deliver(self, event: Event) -> bool:
        """Called by the hub for every live event of this session's channels (never blocks).

        True when the event went straight to the client (the caller counts those); otherwise it
        is queued for next_batch().
        """
        if self._slow:
            return False
        if (self._parked and self.direct is not None and not self._snapshots and not self._reset_pending
                and not self._cursor_flush_due()):
            if event.key <= self._position_key:
                return False  # already handed over (the replay can run ahead of the hub)
            if self.direct(event):
                self.position, self._position_key = event.id, event.key
                return True
        if len(self._queue) >= self._max_backlog:
            dropped = len(self._queue) + 1
            if self._replay is not None:
                self._queue.clear()
                self._overflowed = True  # the replay will read these from the log instead
                metrics.DROPPED.labels(transport=self.transport, reason="replay_overflow").inc(dropped)
                return False
            self._slow = True
            self._queue.clear()
            metrics.DROPPED.labels(transport=self.transport, reason="slow_consumer").inc(dropped)
            metrics.SLOW_CONSUMERS.labels(transport=self.transport).inc()
            if self.on_cut_off is not None:
                self.on_cut_off()
        else:
            self._queue.append(event)
        self._parked = False
        self._wake.set()
        return False

    def _cursor_flush_due(self) -> bool:
        """A stored cursor due for its debounced save: the next event takes the queued path, whose
        consumer saves it after sending."""
        return (self.client_id is not None and self.position != self._saved
                and time.monotonic() - self._flushed_at >= self._flush_every)

    async def next_batch(self, timeout: float | None = None) -> Batch:
        """The next events for the client, in id order; an empty batch when `timeout` passes.

        Raises SlowConsumer when the client fell too far behind.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._closed:
            if self._slow:
                raise SlowConsumer(f"more than {self._max_backlog} events waiting; resume from your cursor")
            if self._reset_pending:
                self._reset_pending = False
                return Batch(reset=True)
            if self._snapshots:  # flagged, with their original ids; the cursor does not move
                snapshots, self._snapshots = self._snapshots, []
                self._delivered.inc(len(snapshots))
                return Batch(snapshots)
            if self._replay is not None:
                events = await self._replay.next()
                if events:
                    metrics.REPLAYED.inc(len(events))
                    return self._handed(events)
                if self._overflowed:  # live events were dropped meanwhile: read on to the new head
                    self._overflowed = False
                    self._replay = _Replay(
                        self.log, self.principal.tenant, set(self.channels), self.position or "0-0",
                        await self.log.head(), self._replay_batch,
                    )
                    continue
                self._replay = None
            events = self._drain()
            if events:
                return self._handed(events)
            self._wake.clear()
            if self._closed:  # closed while this call awaited the log: its wake-up was just cleared
                break
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return Batch()
            self._parked = True
            try:
                if remaining is None:
                    await self._wake.wait()
                else:
                    await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                return Batch()
            finally:
                self._parked = False
        return Batch()

    def _drain(self) -> list[Event]:
        events = []
        position, channels = self._position_key, self.channels
        while self._queue:
            event = self._queue.popleft()
            if event.key > position and event.channel in channels:
                events.append(event)
        return events

    def _move(self, cursor: str) -> None:
        self.position = cursor
        self._position_key = parse_cursor(cursor)

    def _handed(self, events: list[Event]) -> Batch:
        self._move(events[-1].id)
        self._delivered.inc(len(events))
        return Batch(events)

    # --- server-side cursor --------------------------------------------------------------

    async def save_cursor(self, *, force: bool = False) -> None:
        """Store the position for this (tenant, user, client_id); debounced unless forced."""
        if not self.client_id or self.position is None or self.position == self._saved:
            return
        if not force and time.monotonic() - self._flushed_at < self._flush_every:
            return
        self._flushed_at = time.monotonic()
        self._saved = self.position
        await self.log.set_cursor(self.principal.tenant, self.principal.user, self.client_id, self.position)

    async def ack(self, cursor: str) -> None:
        """An explicit ack moves the stored cursor to that id (never past what was delivered)."""
        key = parse_cursor(cursor)
        if self.client_id and key <= self._position_key:
            self._saved = cursor
            await self.log.set_cursor(self.principal.tenant, self.principal.user, self.client_id, cursor)
