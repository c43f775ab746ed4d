"""This process's side of presence: joins and leaves of local sessions, heartbeats for them, and
the sweep that announces users whose process died (any process may do it; Lua decides once)."""

from __future__ import annotations

import asyncio
import logging
import uuid

import orjson

from app.eventlog.base import Draft, EventLog
from app.presence.base import Presence
from app.rules import namespace

logger = logging.getLogger(__name__)

class PresenceTracker:
    def __init__(self, presence: Presence, log: EventLog, *, namespaces: frozenset[str], heartbeat_seconds: float) -> None:
        self.presence = presence
        self.namespaces = namespaces
        self._log = log
        self._heartbeat_seconds = heartbeat_seconds
        self._local: dict[tuple[str, str, str, str], None] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None

    async def _announce(self, tenant: str, channel: str, type_: str, user: str) -> None:
        """presence.join / presence.leave go through the log like any event: every process, every
        transport, and resumes see them."""
        await self._log.append(Draft(tenant, channel, type_, orjson.dumps({"user_id": user})))

    def tracks(self, channel: str) -> bool:
        return namespace(channel) in self.namespaces

    @staticmethod
    def new_connection_id() -> str:
        return uuid.uuid4().hex[:16]

    async def join(self, tenant: str, channel: str, user: str, connection: str) -> None:
        self._local[(tenant, channel, user, connection)] = None
        if await self.presence.join(tenant, channel, user, connection):
            await self._announce(tenant, channel, "presence.join", user)

    def leave(self, tenant: str, channel: str, user: str, connection: str) -> None:
        """Synchronous for callers tearing down a connection; the work runs as a tracked task."""
        key = (tenant, channel, user, connection)
        if key not in self._local:
            return
        del self._local[key]
        task = asyncio.get_running_loop().create_task(self._leave(tenant, channel, user, connection))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def release(self, tenant: str, channel: str, user: str, connection: str) -> None:
        """Stop heartbeating a connection without leaving: it leaves when it expires."""
        self._local.pop((tenant, channel, user, connection), None)

    async def _leave(self, tenant: str, channel: str, user: str, connection: str) -> None:
        try:
            if await self.presence.leave(tenant, channel, user, connection):
                await self._announce(tenant, channel, "presence.leave", user)
        except Exception:  # the heartbeat stops for it, so the sweep announces the leave later
            logger.exception("presence leave failed for %s; it will expire", channel)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="presence")

    async def stop(self) -> None:
        """Leave for every local connection (a clean shutdown announces its users' leaves)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for member in list(self._local):
            self.leave(*member)
        if self._pending:
            await asyncio.wait(self._pending, timeout=5)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_seconds)
            try:
                await self.presence.heartbeat(list(self._local))
                for tenant, channel, user in await self.presence.expire():
                    await self._announce(tenant, channel, "presence.leave", user)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("presence heartbeat failed; retrying")

