"""The transactional outbox: an inbox change, its event and its pushes commit together or not at all.

Appending to the log inside the change's transaction told every tab of changes whose commit then
failed; appending after the commit loses the event when the process dies in between. So the
transaction also writes an outbox row (the event's data with its exact counts, and the push jobs),
and the row is published after the commit with `outbox:<row key>` (random) as its idempotency key:

- at once by the writer itself: its own rows when its inbox had none pending before them
  (`Outbox.publish_rows`, no query; their deletion batched in the background), else that inbox's
  pending rows in id order (`Outbox.publish_inbox`); so the caller is answered once its event is
  in the log (read-your-writes, the usual latency);
- otherwise by the `Relay`: one process at a time (a lease row) publishes, in id order, the rows
  writers left behind — when Redis was away, the process was killed between commit and publish,
  or a batch was cut short.

Exactly once and in commit order per inbox: the writers of one inbox are serialized
(store.lock_inbox), so its rows' ids follow its commits; every publisher appends a snapshot of
pending rows in id order and deletes a row only after it is in the log; so whoever first appends
row b has appended (or found already appended) every earlier row of that inbox, and a repeated
append is answered with the first id. Pushes keep the job ids fixed when the row was written; the
queue ignores a job id it already has.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import metrics
from app.eventlog.base import Draft, EventLog
from app.notifications.models import Lease, OutboxEntry
from app.push.queue.base import PushJob, PushQueue
from app.retry import Backoff
from app.sql import insert, rows_changed, utcnow
from app.tracing import NO_PARENT, Parent, Tracing

logger = logging.getLogger(__name__)

E = OutboxEntry
IDEMPOTENCY_PREFIX = "outbox:"
LEASE_NAME = "outbox-relay"
BATCH = 200

# Chores the relay's holder runs on each turn (the snooze clock): each returns how many seconds
# until it next has work (None: nothing scheduled), so the relay never sleeps past it.
Chore = Callable[[], Awaitable[float | None]]


async def add(db: AsyncSession, tenant: str, channel: str, draft: Draft | None,
              pushes: Sequence[PushJob] = (), parent: Parent = NO_PARENT) -> OutboxEntry:
    """Write an event of (tenant, channel) and its pushes to the outbox, inside the caller's
    transaction; no draft: pushes alone (they keep their place in the channel's order); `parent`:
    the caller's trace context (app.tracing.parent), for the publish span whoever publishes it.
    Returns the row as written (not attached to the session), for its writer to publish after the
    commit."""
    values: dict[str, Any] = {
        "key": str(uuid.uuid4()), "tenant": tenant, "channel": channel,
        "type": draft.type if draft else "", "data": draft.data.decode() if draft else "",
        "pushes": [asdict(job) for job in pushes] or None, "created_at": utcnow(),
        "traceparent": parent[0], "tracestate": parent[1]}
    row_id = await db.scalar(insert(db, E).values(**values).returning(E.id))
    return E(id=row_id, **values)


async def pending(db: AsyncSession, tenant: str, channel: str) -> bool:
    """Whether (tenant, channel) has rows not yet published: asked by a writer under the inbox's
    lock before it writes its own, so that, if none, it may publish just those after its commit."""
    return await db.scalar(select(E.id).where(E.tenant == tenant, E.channel == channel).limit(1)) is not None


class Outbox:
    """Publishes committed outbox rows: each once, in id order, then deletes them."""

    def __init__(self, log: EventLog, queue: PushQueue, sessionmaker: async_sessionmaker[AsyncSession], *,
                 tracing: Tracing | None = None) -> None:
        self.log = log
        self.queue = queue
        self.sessionmaker = sessionmaker
        self.tracing = tracing  # TRACING: a publish span per event, a child of its row's caller
        self._published: list[int] = []  # ids published by writers, deleted in the background
        self._deleter: asyncio.Task[None] | None = None

    async def publish_rows(self, rows: Sequence[OutboxEntry]) -> None:
        """Right after a writer's commit, when its inbox had nothing pending before: its own rows,
        with no query. The answer need not wait for their deletion, which is batched in the
        background (rows it misses are published again by the relay, which adds nothing)."""
        try:
            await self._send(rows)
        except Exception as exc:  # the commit stands; the relay publishes the rows later
            _deferred(exc, rows[0].channel if rows else "?")
            return
        self._published.extend(row.id for row in rows)
        if self._deleter is None or self._deleter.done():
            self._deleter = asyncio.create_task(self._delete_published(), name="outbox-delete")

    async def publish_inbox(self, tenant: str, channel: str) -> None:
        """Right after a writer's commit, when its inbox had rows pending before its own: that
        inbox's pending rows (one batch; the rest of a long backlog is the relay's), in id order. A
        failure is left to the relay (the change is stored; its event follows when the log is back).

        On a session of its own, not the writer's: a database error here rolls the publish's
        transaction back, and a rollback expires every instance its session holds, the changed row
        the writer answers with among them; reading it then is a lazy load, which an async session
        cannot do (a 500 for a change that committed)."""
        try:
            async with self.sessionmaker() as own:
                await self._publish(own, select(E).where(E.tenant == tenant, E.channel == channel))
        except Exception as exc:  # the commit stands; the relay publishes the row later
            _deferred(exc, channel)

    async def publish_pending(self, db: AsyncSession, *, older_than: float) -> int:
        """The relay's turn: the oldest pending rows of every inbox; how many were published.

        Only rows up to the newest one older than `older_than` seconds (younger ones are their
        writers' to publish): a prefix in id order, so no inbox's row goes before an earlier one.
        """
        last = select(func.max(E.id)).where(E.created_at < utcnow() - timedelta(seconds=older_than)).scalar_subquery()
        return await self._publish(db, select(E).where(E.id <= last))

    async def close(self) -> None:
        """Delete what writers published (at shutdown); whatever is left, the next relay republishes."""
        if self._deleter is not None:
            await asyncio.gather(self._deleter, return_exceptions=True)

    async def _publish(self, db: AsyncSession, query: Any) -> int:
        async with db.begin():
            rows = list(await db.scalars(query.order_by(E.id).limit(BATCH)))
        if not rows:
            return 0
        await self._send(rows)
        async with db.begin():
            await db.execute(delete(E).where(E.id.in_([row.id for row in rows])))
        return len(rows)

    async def _send(self, rows: Sequence[OutboxEntry]) -> None:
        """Append the rows' events (in order, each with its key) and queue their pushes."""
        events = [row for row in rows if row.type]
        items = [(Draft(row.tenant, row.channel, row.type, row.data.encode()), f"{IDEMPOTENCY_PREFIX}{row.key}")
                 for row in events]
        if self.tracing is None:
            outcomes = await self.log.append_many(items)
        else:
            outcomes = await self.tracing.append_many(self.log, items, source="outbox",
                                                      parents=[(row.traceparent, row.tracestate) for row in events])
        for row, outcome in zip(events, outcomes, strict=True):
            if not isinstance(outcome, tuple):  # untyped events cannot conflict; said loudly if one ever does
                logger.error("outbox: row %s (%s on %s) refused by the log: %s", row.id, row.type, row.channel, outcome)
        jobs = [PushJob(**job) for row in rows for job in row.pushes or ()]
        if jobs:
            await self.queue.put(jobs)
        metrics.OUTBOX_PUBLISHED.inc(len(rows))

    async def _delete_published(self) -> None:
        while self._published:
            ids, self._published = self._published[:BATCH * 5], self._published[BATCH * 5:]
            try:
                async with self.sessionmaker() as db, db.begin():
                    await db.execute(delete(E).where(E.id.in_(ids)))
            except Exception as exc:  # they stay, and the relay publishes them again: nothing is added
                metrics.OUTBOX_RELAY_ERRORS.inc()
                logger.warning("outbox: deleting %d published rows failed (%s: %s); the relay republishes them",
                               len(ids), type(exc).__name__, exc)


def _deferred(exc: Exception, channel: str) -> None:
    metrics.OUTBOX_DEFERRED.inc()
    logger.warning("outbox: %s: %s; the relay publishes %s's event later", type(exc).__name__, exc, channel)


class Relay:
    """One per process; whichever holds the lease publishes what writers left behind (rows older
    than `grace_seconds`: a writer publishes its own within milliseconds) and runs the chores,
    every `poll_seconds`."""

    def __init__(self, outbox: Outbox, sessionmaker: async_sessionmaker[AsyncSession], *, poll_seconds: float,
                 lease_seconds: float, grace_seconds: float = 1.0, chores: Sequence[Chore] = ()) -> None:
        self.outbox = outbox
        self.sessionmaker = sessionmaker
        self.poll_seconds = poll_seconds
        self.lease_seconds = lease_seconds
        self.grace_seconds = grace_seconds
        self.chores = tuple(chores)
        self.holder = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._renewed = float("-inf")  # monotonic time of the last successful renewal
        self._task: asyncio.Task[None] | None = None

    @property
    def leading(self) -> bool:
        return time.monotonic() - self._renewed < self.lease_seconds

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.leading:  # let another process take over at once rather than when the lease runs out
            try:
                async with self.sessionmaker() as db, db.begin():
                    await db.execute(delete(Lease).where(Lease.name == LEASE_NAME, Lease.holder == self.holder))
            except Exception as exc:
                logger.warning("outbox relay: could not give up the lease (%s); it expires by itself", exc)

    async def _run(self) -> None:
        backoff = Backoff()
        while True:
            wait = self.poll_seconds
            try:
                async with self.sessionmaker() as db:
                    if await self._hold_lease(db):
                        if await self.outbox.publish_pending(db, older_than=self.grace_seconds) == BATCH:
                            wait = 0.0  # more left behind: go on at once
                        for chore in self.chores:
                            due = await chore()
                            if due is not None:
                                wait = min(wait, max(due, 0.0))
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                metrics.OUTBOX_RELAY_ERRORS.inc()
                logger.warning("outbox relay: %s: %s; retrying in %.1f s", type(exc).__name__, exc, backoff.delay)
                await backoff.wait()
                continue
            await asyncio.sleep(wait)

    async def _hold_lease(self, db: AsyncSession) -> bool:
        """Take or renew the lease (a renewal at most every third of it); whether we hold it."""
        if time.monotonic() - self._renewed < self.lease_seconds / 3:
            return True
        started = time.monotonic()
        now = utcnow()
        until = now + timedelta(seconds=self.lease_seconds)
        async with db.begin():
            taken = await rows_changed(db, update(Lease).where(
                Lease.name == LEASE_NAME, or_(Lease.holder == self.holder, Lease.expires_at < now),
            ).values(holder=self.holder, expires_at=until))
            if not taken:
                inserted = await db.scalar(insert(db, Lease).values(name=LEASE_NAME, holder=self.holder, expires_at=until)
                                           .on_conflict_do_nothing().returning(Lease.name))
                taken = inserted is not None
        self._renewed = started if taken else float("-inf")
        return bool(taken)
