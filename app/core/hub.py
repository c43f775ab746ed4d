"""Fan-out in one process: one task tails the log and hands each event to the local subscribers of
its (tenant, channel). Every process tails the same log, so no sticky sessions are needed.

Each subscriber is isolated (as python-websockets' `broadcast()` isolates connections): one whose
delivery raises is told to fail and dropped, and every other subscriber still gets the event,
exactly once.

A partitioned log (REDIS_PARTITIONS) is tailed as one stream of batches, each of one partition; the
hub keeps where it stands in each (`position_of(tenant)`), and head and floor are read per
partition. The recent window is off then (its one start position assumes one order).

When the log says it may have lost entries (HistoryLost: a Redis failover, a Redis that lost its
data), every subscriber is told to reset (its client hears `reset`, never silence) and the tail
goes on from where dispatch stood.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Protocol

from app import metrics
from app.core.bounds import SharedBounds
from app.core.recent import RecentEvents
from app.eventlog.base import Event, EventLog, HistoryLost, parse_cursor

if TYPE_CHECKING:
    from app.tracing import Tracing

logger = logging.getLogger(__name__)


class Subscriber(Protocol):
    """What the hub needs of a session."""

    @property
    def tenant(self) -> str: ...

    @property
    def label(self) -> str:
        """Its transport's name, for the delivery metrics."""
        ...

    def deliver(self, event: Event) -> bool:
        """Take a live event without blocking; True when it was written to the client at once."""
        ...

    def fail(self) -> None:
        """Its delivery raised: end it (the client resumes with its cursor)."""
        ...

    def reset(self) -> None:
        """The log may have lost events owed to it: tell its client `reset`, then go on live."""
        ...


class WriteHold(Protocol):
    """What the transports offer the hub (app.transports.direct.HELD): writes to sockets made
    between `hold` and `release` may be joined per socket, then written at `release`."""

    def hold(self) -> None: ...

    def release(self) -> None: ...


class Hub:
    def __init__(self, event_log: EventLog, *, recent_events: int = 0, writes: WriteHold | None = None,
                 tracing: Tracing | None = None) -> None:
        self._log = event_log
        self._writes = writes
        self._tracing = tracing  # TRACING: a deliver span per event (of a traced publish) per batch dispatched
        self._routes: dict[tuple[str, str], set[Subscriber]] = {}
        self._task: asyncio.Task[None] | None = None
        self._after: list[str] = [""] * event_log.partitions  # per partition, the last event dispatched
        # REPLAY_MEMORY_EVENTS: what replays read from memory (one partition only)
        self.recent = RecentEvents(recent_events if event_log.partitions == 1 else 0)
        # resumes waiting for `reached`: (partition, cursor, waiter)
        self._waiters: list[tuple[int, tuple[int, int], asyncio.Future[None]]] = []
        # head and floor for resumes, per partition: one read for all who ask at once
        self._bounds = [SharedBounds(event_log, partition) for partition in range(event_log.partitions)]
        self.bounds = self._bounds[0]

    def add(self, subscriber: Subscriber, channel: str) -> None:
        self._routes.setdefault((subscriber.tenant, channel), set()).add(subscriber)
        metrics.SUBSCRIPTIONS.inc()

    def remove(self, subscriber: Subscriber, channel: str) -> None:
        key = (subscriber.tenant, channel)
        subscribers = self._routes.get(key)
        if subscribers is not None and subscriber in subscribers:
            subscribers.discard(subscriber)
            metrics.SUBSCRIPTIONS.dec()
            if not subscribers:
                del self._routes[key]

    def subscribers(self, tenant: str, channel: str) -> int:
        return len(self._routes.get((tenant, channel), ()))

    @property
    def position(self) -> str | None:
        """Partition 0's `position_of` (the only one by default)."""
        return self._position(0)

    def position_of(self, tenant: str) -> str | None:
        """The last event of `tenant`'s partition dispatched, while tailing (None before start or
        once stopped): a subscriber added now gets every later event live, and none up to here, so
        a connection can start here instead of reading the log's head."""
        return self._position(self._log.partition(tenant))

    def _position(self, partition: int) -> str | None:
        if self._task is None or self._task.done():
            return None
        return self._after[partition]

    def bounds_of(self, tenant: str) -> SharedBounds:
        return self._bounds[self._log.partition(tenant)]

    async def reached(self, cursor: str, timeout: float, tenant: str | None = None) -> bool:
        """Wait (at most `timeout`) until this hub has dispatched everything up to `cursor` (of
        `tenant`'s partition): a resume can then read its history from the recent window. False
        when not running or not in time."""
        if self._task is None or self._task.done():
            return False
        partition = 0 if tenant is None else self._log.partition(tenant)
        key = parse_cursor(cursor)
        if key <= parse_cursor(self._after[partition]):
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((partition, key, waiter))
        try:
            await asyncio.wait_for(waiter, timeout)  # cancelled on a timeout: _wake_waiters drops it
        except TimeoutError:
            return False
        return True

    async def start(self) -> None:
        self._after = await self._log.heads()
        self.recent.start(self._after[0])
        self._task = asyncio.create_task(self._run(), name="hub-fanout")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                async for batch in self._log.tail(self._after):
                    self._dispatch(batch)
            except asyncio.CancelledError:
                raise
            except HistoryLost as exc:  # nothing dispatched is taken back; what may be missing is said
                self._history_lost(exc)
            except Exception:  # the log's tail failed (an engine outage): resume where dispatch stopped
                logger.exception("fan-out failed; restarting from %s", self._after)
                await asyncio.sleep(0.5)

    def _dispatch(self, batch: list[Event]) -> None:
        tracing = self._tracing
        started = tracing.clock() if tracing is not None else 0
        if self._writes is None:
            self._deliver(batch)
        else:
            self._writes.hold()
            try:
                self._deliver(batch)
            finally:
                self._writes.release()
        if tracing is not None:  # once the batch is written: its spans end there
            tracing.delivered(batch, started, self.subscribers)

    def _deliver(self, batch: list[Event]) -> None:
        if not batch:
            return
        now = time.time()
        partition = self._log.partition(batch[0].tenant) if len(self._after) > 1 else 0  # a batch is one partition's
        after = self._after
        routes, remember = self._routes, self.recent.add
        sent: dict[str, int] = {}  # events written straight to a client, by transport
        for event in batch:
            subscribers = routes.get((event.tenant, event.channel))
            metrics.LATENCY.observe(max(now - event.ms / 1000, 0.0))
            if subscribers:
                for subscriber in tuple(subscribers):
                    try:
                        if subscriber.deliver(event):
                            sent[subscriber.label] = sent.get(subscriber.label, 0) + 1
                    except Exception:
                        self._drop(subscriber, event)
            remember(event)
            after[partition] = event.id
        for label, count in sent.items():
            metrics.DELIVERED.labels(transport=label).inc(count)
        if self._waiters:
            self._wake_waiters()

    def _history_lost(self, exc: HistoryLost) -> None:
        subscribers = {subscriber for subscribers in self._routes.values() for subscriber in subscribers}
        logger.warning("%s: telling %d connections to reset; tailing on from %s", exc, len(subscribers), self._after)
        self.recent.start(self._after[0])  # the window may hold events the log no longer has
        for subscriber in subscribers:
            try:
                subscriber.reset()
            except Exception:
                logger.exception("resetting a %s subscriber raised", subscriber.label)

    def _wake_waiters(self) -> None:
        positions = [parse_cursor(after) for after in self._after]
        waiting = []
        for partition, key, waiter in self._waiters:
            if waiter.done():
                continue
            if key <= positions[partition]:
                waiter.set_result(None)
            else:
                waiting.append((partition, key, waiter))
        self._waiters = waiting

    def _drop(self, subscriber: Subscriber, event: Event) -> None:
        logger.exception("delivering %s to a %s subscriber failed; closing that connection", event.id, subscriber.label)
        metrics.DELIVERY_FAILURES.labels(transport=subscriber.label).inc()
        try:
            subscriber.fail()
        except Exception:
            logger.exception("failing a %s subscriber raised too", subscriber.label)
        finally:
            for key, subscribers in list(self._routes.items()):  # whatever fail() did, it gets nothing more
                if subscriber in subscribers:
                    subscribers.discard(subscriber)
                    metrics.SUBSCRIPTIONS.dec()
                    if not subscribers:
                        del self._routes[key]
