"""This process's side of presence: joins and leaves of local sessions, heartbeats for them, and
the sweep that announces users whose process died (any process may do it; Lua decides once)."""

from __future__ import annotations

import asyncio
import logging
import uuid

import orjson

from app.eventlog.base import Draft, EventLog
from app.presence.base import Change, Member, Presence
from app.rules import namespace

logger = logging.getLogger(__name__)

class PresenceTracker:
    """Joins and leaves go out in batches: every change asked while the previous batch was on its
    way is sent in the next one (one pipeline, then one pipeline of announcements), in the order
    asked, so a connection's leave never overtakes its join and a burst of connects or a
    reconnect storm holds one Redis connection, not one per change."""

    def __init__(self, presence: Presence, log: EventLog, *, namespaces: frozenset[str], heartbeat_seconds: float) -> None:
        self.presence = presence
        self.namespaces = namespaces
        self._log = log
        self._heartbeat_seconds = heartbeat_seconds
        self._local: dict[Member, None] = {}
        self._changes: list[tuple[Change, asyncio.Future[None] | None]] = []  # waiting for the next batch
        self._sending: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None

    def tracks(self, channel: str) -> bool:
        return namespace(channel) in self.namespaces

    @staticmethod
    def new_connection_id() -> str:
        return uuid.uuid4().hex[:16]

    async def join(self, tenant: str, channel: str, user: str, connection: str) -> None:
        """Counted (and, for the user's first connection, announced) when this returns; raises
        what the engine raised."""
        member = (tenant, channel, user, connection)
        self._local[member] = None
        done = asyncio.get_running_loop().create_future()
        self._change((True, member), done)
        await done

    def leave(self, tenant: str, channel: str, user: str, connection: str) -> None:
        """Synchronous for callers tearing down a connection: the leave goes with the next batch."""
        member = (tenant, channel, user, connection)
        if member not in self._local:
            return
        del self._local[member]
        self._change((False, member), None)

    def release(self, tenant: str, channel: str, user: str, connection: str) -> None:
        """Stop heartbeating a connection without leaving: it leaves when it expires."""
        self._local.pop((tenant, channel, user, connection), None)

    def _change(self, change: Change, done: asyncio.Future[None] | None) -> None:
        self._changes.append((change, done))
        if self._sending is None:
            self._sending = asyncio.get_running_loop().create_task(self._send(), name="presence-changes")

    async def _send(self) -> None:
        try:
            while self._changes:
                batch, self._changes = self._changes, []
                await self._send_batch(batch)
        finally:
            self._sending = None

    async def _send_batch(self, batch: list[tuple[Change, asyncio.Future[None] | None]]) -> None:
        changes = [change for change, _ in batch]
        try:
            moments = await self.presence.apply(changes)
            await self._log.append_many([
                _announcement(tenant, channel, "presence.join" if joining else "presence.leave", user)
                for (joining, (tenant, channel, user, _)), moment in zip(changes, moments, strict=True) if moment])
        except Exception as exc:  # the engine is slow or away: joins fail (their connections are told), leaves expire
            # one line per batch, no traceback: in a storm a traceback per change is what starves the loop
            logger.warning("presence: %d changes not made (%s: %s); leaves will expire", len(batch), type(exc).__name__, exc)
            for _, done in batch:
                if done is not None and not done.done():
                    done.set_exception(exc)
            return
        for _, done in batch:
            if done is not None and not done.done():
                done.set_result(None)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="presence")

    async def stop(self) -> None:
        """Leave for every local connection (a clean shutdown announces its users' leaves)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for member in list(self._local):
            self.leave(*member)
        if self._sending is not None:
            await asyncio.wait([self._sending], timeout=5)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_seconds)
            try:
                await self.presence.heartbeat(list(self._local))
                left = await self.presence.expire()  # users of processes that died: announced once, here
                await self._log.append_many([_announcement(tenant, channel, "presence.leave", user)
                                             for tenant, channel, user in left])
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("presence heartbeat failed; retrying")


def _announcement(tenant: str, channel: str, type_: str, user: str) -> tuple[Draft, None]:
    """presence.join / presence.leave go through the log like any event: every process, every
    transport, and resumes see them (an append_many item: no idempotency key)."""
    return Draft(tenant, channel, type_, orjson.dumps({"user_id": user})), None
