"""Fan-out in one process: one task tails the log and hands each event to the local sessions of
its (tenant, channel). Every process tails the same log, so no sticky sessions are needed."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from app import metrics
from app.eventlog.base import Event, EventLog

if TYPE_CHECKING:
    from app.core.session import Session

log = logging.getLogger(__name__)


class Hub:
    def __init__(self, event_log: EventLog) -> None:
        self.log = event_log
        self._routes: dict[tuple[str, str], set[Session]] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, session: Session, channel: str) -> None:
        self._routes.setdefault((session.principal.tenant, channel), set()).add(session)
        metrics.SUBSCRIPTIONS.inc()

    def remove(self, session: Session, channel: str) -> None:
        key = (session.principal.tenant, channel)
        sessions = self._routes.get(key)
        if sessions is not None and session in sessions:
            sessions.discard(session)
            metrics.SUBSCRIPTIONS.dec()
            if not sessions:
                del self._routes[key]

    def subscribers(self, tenant: str, channel: str) -> int:
        return len(self._routes.get((tenant, channel), ()))

    async def start(self) -> None:
        head = await self.log.head()
        self._task = asyncio.create_task(self._run(head), name="hub-fanout")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass  # the cancellation we asked for

    async def _run(self, after: str) -> None:
        while True:
            try:
                async for batch in self.log.tail(after):
                    self._dispatch(batch)
                    after = batch[-1].id
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("fan-out failed; restarting from %s", after)
                await asyncio.sleep(0.5)

    def _dispatch(self, batch: list[Event]) -> None:
        now = time.time()
        routes = self._routes
        sent: dict[str, int] = {}  # events written straight to a client, by transport
        for event in batch:
            sessions = routes.get((event.tenant, event.channel))
            metrics.LATENCY.observe(max(now - event.key[0] / 1000, 0.0))
            if sessions:
                for session in tuple(sessions):
                    if session.deliver(event):
                        sent[session.transport] = sent.get(session.transport, 0) + 1
        for transport, count in sent.items():
            metrics.DELIVERED.labels(transport=transport).inc(count)
