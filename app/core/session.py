"""The subscription core: what one client connection sees, whatever its transport.

A session registers its channels with the hub first, then replays history from the log up to
the head it read after registering; live events that arrive meanwhile wait in its queue and are
released only past the replay's last id. So a resume that races live events neither skips nor
duplicates one. Memory is bounded: while replaying, an overflowing queue is dropped and the
replay simply goes on reading the log; while live, an overflowing queue cuts the client off
(it resumes with its cursor).

The parts: `Subscriptions` (its base: which channels, authorized and counted in presence), `Replay`
(history in id order), `StoredCursor` (a client_id's server-side cursor) and the transport's
`Outlet` (write now, close); the session itself is the delivery state between them.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

from app import metrics
from app.auth import Principal
from app.channels import Authorizer, joined_channels
from app.core.cursor import StoredCursor
from app.core.hub import Hub
from app.core.outlet import QUEUED, CloseReason, Outlet
from app.core.replay import Replay
from app.core.subscriptions import Membership, PresenceId, Subscriptions
from app.errors import ServiceError, Unauthorized, Unavailable
from app.eventlog.base import ZERO, Event, EventLog, parse_cursor
from app.presence.tracker import PresenceTracker
from app.rules import namespace

_CATCH_UP_SECONDS = 0.5  # how long a resume waits for the hub to reach the head it read


class SlowConsumer(ServiceError):
    status, code = 429, "slow_consumer"


class DeliveryFailed(Unavailable):
    """The hub could not hand this connection an event (see the log): reconnect with the cursor."""


@dataclass(slots=True)
class Batch:
    events: list[Event] = field(default_factory=list)
    reset: bool = False
    after: str | None = None  # the position before these events (see Session.unsent)


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection settings: MAX_BACKLOG, REPLAY_BATCH, MAX_SUBSCRIPTIONS (0: unlimited)."""

    max_backlog: int
    replay_batch: int
    max_subscriptions: int = 0


class Session(Subscriptions):
    """One client connection's view of the log (slots: a process holds one per connection)."""

    __slots__ = (
        "_close",
        "_closed",
        "_cursor",
        "_delivered",
        "_failed",
        "_limits",
        "_log",
        "_opened",
        "_overflowed",
        "_parked",
        "_position_key",
        "_queue",
        "_replay",
        "_reset_pending",
        "_resnapshot",
        "_slow",
        "_snapshots",
        "_state_namespaces",
        "_waiter",
        "_woken",
        "_write",
        "label",
        "position",
    )

    def __init__(
        self,
        *,
        log: EventLog,
        membership: Membership,
        principal: Principal,
        label: str,
        limits: Limits,
        outlet: Outlet = QUEUED,
        cursor: StoredCursor | None = None,
        state_namespaces: frozenset[str] = frozenset(),
        presence_id: PresenceId | None = None,
    ) -> None:
        super().__init__(principal, membership, presence_id or PresenceId.fresh())
        self._log = log
        self.label = label  # the transport's name, for metrics only
        self._limits = limits
        self._write = outlet.write  # the outlet's parts, kept apart (one object less per connection); None once closed
        self._close = outlet.close
        self._cursor = cursor
        self._delivered = metrics.DELIVERED.labels(transport=label)  # looked up once, not per batch
        self.position: str | None = None  # the last id handed to the client (the cursor)
        self._position_key: tuple[int, int] = (0, 0)
        # made on first use: most connections are idle, and an empty deque is ~600 bytes
        self._queue: deque[Event] | None = None
        self._woken = False  # an asyncio.Event, minus its own deque of waiters: one future, made to wait
        self._waiter: asyncio.Future[None] | None = None
        self._replay: Replay | None = None
        self._overflowed = False
        self._reset_pending = False
        self._resnapshot = False  # a reset while live: the state channels' snapshots follow it
        self._slow = False
        self._failed = False
        self._parked = False
        self._closed = False
        self._opened = False
        self._state_namespaces = state_namespaces
        self._snapshots: list[Event] = []

    def refresh(self, principal: Principal) -> None:
        """A fresh token for the same user and tenant: its `channels` patterns apply from now."""
        if (principal.user, principal.tenant) != (self.principal.user, self.principal.tenant):
            raise Unauthorized("a refreshed token must carry the same sub and tid")
        self.principal = principal

    # --- subscriptions -------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        """Authorize and join one channel; live from now on (plus history when replaying)."""
        if not await self.admit(channel):
            return
        if self._replay is not None:
            self._replay.add(channel, await self._log.head(self._log.partition(self.tenant)))
        elif self._opened:  # joined without a cursor: its live state comes first
            await self._queue_snapshots([channel])
            if self._snapshots:
                self._wake()
        await self.announce(channel)

    def unsubscribe(self, channel: str) -> None:
        if self.leave(channel) and self._replay is not None:
            self._replay.remove(channel)

    async def _queue_snapshots(self, channels: list[str]) -> None:
        for channel in channels:
            if namespace(channel) in self._state_namespaces:
                self._snapshots += await self._log.snapshot(self.tenant, channel)

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
        if since is None and self._cursor is not None:
            since = await self._cursor.load()
        hub = self._membership.hub
        position = hub.position_of(self.tenant)
        self._opened = True
        if since is None and position is not None and position != ZERO:
            # where this process's fan-out stands: the session is registered, so every later event
            # reaches it live (no head read: at a connection storm's rate that was most of a
            # fresh set-up's Redis cost)
            await self._start_at(position)
            return refused
        # a resume reads the head (what was published before it is due) and the floor, in a read
        # shared with the resumes around it
        head, floor = await hub.bounds_of(self.tenant).read()
        if head == ZERO:  # an empty log: its floor is a cursor that resumes later without a reset
            head = floor
        if since is None:
            await self._start_at(head)
            return refused
        metrics.RESUMES.inc()
        # a cursor at (or past) the head lost nothing, however long the log has been quiet
        if parse_cursor(since) < parse_cursor(floor) and parse_cursor(since) < parse_cursor(head):
            metrics.RESETS.inc()
            self._reset_pending = True
            self._move(head)
            await self._queue_snapshots(sorted(self.channels))
            return refused
        self._resume(since, head)
        # this process's fan-out is usually a few ms behind the head: once it is there, the replay
        # reads the recent window (no Redis, the live events' encodings), else the log
        if hub.recent.capacity:
            await hub.reached(head, _CATCH_UP_SECONDS, self.tenant)
        return refused

    async def _start_at(self, head: str) -> None:
        """No cursor: live from `head`, the state channels' snapshots first."""
        self._move(head)
        if self._cursor is not None:
            self._cursor.saved = head  # an empty answer never moves the stored cursor
        await self._queue_snapshots(sorted(self.channels))

    def _resume(self, since: str, until: str) -> None:
        self._move(since)
        if self._cursor is not None:
            self._cursor.saved = since
        self._replay = self._replay_to(since, until)

    def _replay_to(self, after: str, until: str) -> Replay:
        return Replay(self._log, self.tenant, set(self.channels), after, until, self._limits.replay_batch,
                      recent=self._membership.hub.recent)

    @property
    def cut_off(self) -> bool:
        """The client fell more than MAX_BACKLOG events behind: next_batch raises SlowConsumer."""
        return self._slow

    def close(self) -> None:
        """Leave every channel and wake the consumer (idempotent)."""
        self._closed = True
        self._write = None
        for channel in list(self.channels):
            self.unsubscribe(channel)
        self._wake()

    def fail(self) -> None:
        """Handing this session an event raised (the hub calls this and drops it): close it, and
        tell the transport, whose client resumes from its cursor. next_batch raises DeliveryFailed."""
        if self._failed:
            return
        self._failed = True
        self.close()
        if self._close is not None:
            self._close(CloseReason.FAILED)

    def reset(self) -> None:
        """The hub found the log may have lost events (a failover, a Redis that lost its data):
        the client gets `reset` next, then its state channels' live state, then what follows.
        Nothing already queued is dropped (every event handed to it is still its due)."""
        if self._closed or self._reset_pending:
            return
        self._reset_pending = self._resnapshot = True
        self._wake()

    # --- delivery ------------------------------------------------------------------------

    def deliver(self, event: Event) -> bool:
        """Called by the hub for every live event of this session's channels (never blocks).

        True when the event went straight to the client (the caller counts those); otherwise it
        is queued for next_batch().
        """
        if self._slow or self._closed:
            return False
        write = self._write
        if (self._parked and write is not None and not self._snapshots and not self._reset_pending
                and not (self._cursor is not None and self._cursor.due(self.position))):
            # a stored cursor due for its debounced save takes the queued path: its consumer saves it
            if event.key <= self._position_key:
                return False  # already handed over (the replay can run ahead of the hub)
            if write(event):
                self.position, self._position_key = event.id, event.key
                return True
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        if len(queue) >= self._limits.max_backlog:
            self._overflow()
        else:
            queue.append(event)
        self._parked = False
        self._wake()
        return False

    def _overflow(self) -> None:
        dropped = len(self._queue or ()) + 1
        self._queue = None
        if self._replay is not None:
            self._overflowed = True  # the replay will read these from the log instead
            metrics.DROPPED.labels(transport=self.label, reason="replay_overflow").inc(dropped)
            return
        self._slow = True
        metrics.DROPPED.labels(transport=self.label, reason="slow_consumer").inc(dropped)
        metrics.SLOW_CONSUMERS.labels(transport=self.label).inc()
        if self._close is not None:
            self._close(CloseReason.SLOW_CONSUMER)

    async def next_batch(self, timeout: float | None = None) -> Batch:
        """The next events for the client, in id order; an empty batch when `timeout` passes or
        the session is closed.

        Raises SlowConsumer when the client fell too far behind, DeliveryFailed when the hub
        dropped it.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._failed:
                raise DeliveryFailed("delivery to this connection failed; reconnect with your cursor")
            if self._closed:
                return Batch()
            if self._slow:
                raise SlowConsumer(f"more than {self._limits.max_backlog} events waiting; resume from your cursor")
            if self._reset_pending:
                if self._resnapshot:
                    await self._queue_snapshots(sorted(self.channels))
                    self._resnapshot = False
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
                    self._replay = self._replay_to(self.position or ZERO,
                                                  await self._log.head(self._log.partition(self.tenant)))
                    continue
                self._replay = None
            events = self._drain()
            if events:
                return self._handed(events)
            self._woken = False
            if self._closed:  # closed while this call awaited the log: its wake-up was just cleared
                continue
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return Batch()
            self._parked = True
            try:
                if remaining is None:
                    await self._woken_up()
                else:
                    await asyncio.wait_for(self._woken_up(), remaining)
            except TimeoutError:
                return Batch()
            finally:
                self._parked = False

    def _drain(self) -> list[Event]:
        queue, self._queue = self._queue, None
        if not queue:
            return []
        position, channels = self._position_key, self.channels
        return [event for event in queue if event.key > position and event.channel in channels]

    def _wake(self) -> None:
        self._woken = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _woken_up(self) -> None:
        if self._woken:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _move(self, cursor: str) -> None:
        self.position = cursor
        self._position_key = parse_cursor(cursor)

    def _handed(self, events: list[Event]) -> Batch:
        batch = Batch(events, after=self.position)
        self._move(events[-1].id)
        self._delivered.inc(len(events))
        return batch

    def unsent(self, batch: Batch, written: int) -> None:
        """The transport wrote only the first `written` events of `batch` before its connection
        failed: the position goes back to the last one written, so the cursor stored at close
        (client_id) does not claim events the client never got."""
        if written < len(batch.events):
            cursor = batch.events[written - 1].id if written else batch.after
            if cursor is not None:
                self._move(cursor)

    # --- server-side cursor --------------------------------------------------------------

    async def save_cursor(self, *, force: bool = False) -> None:
        """Store the position for this client_id; debounced unless forced."""
        if self._cursor is not None:
            await self._cursor.save(self.position, force=force)

    async def ack(self, cursor: str) -> None:
        """An explicit ack moves the stored cursor to that id (never past what was delivered)."""
        parse_cursor(cursor)
        if self._cursor is not None:
            await self._cursor.ack(cursor, self._position_key)


class SessionFactory:
    """Makes this process's sessions with its log, hub, authorizer, presence and limits; each
    transport says what it offers (`outlet`) and how the connection counts in presence."""

    def __init__(self, *, log: EventLog, hub: Hub, authorizer: Authorizer, limits: Limits,
                 cursor_flush_seconds: float = 0.5, state_namespaces: frozenset[str] = frozenset(),
                 presence: PresenceTracker | None = None) -> None:
        self._log, self._limits = log, limits
        self._membership = Membership(hub, authorizer, limits.max_subscriptions, presence)
        self._flush_every = cursor_flush_seconds
        self._state_namespaces = state_namespaces

    def create(self, principal: Principal, *, label: str, outlet: Outlet = QUEUED, client_id: str | None = None,
               presence_id: PresenceId | None = None) -> Session:
        cursor = (StoredCursor(self._log, principal.tenant, principal.user, client_id, flush_every=self._flush_every)
                  if client_id else None)
        return Session(log=self._log, membership=self._membership, principal=principal, label=label,
                       limits=self._limits, outlet=outlet, cursor=cursor, state_namespaces=self._state_namespaces,
                       presence_id=presence_id)
