"""The server-side cursor of one (tenant, user, client_id): where a client that reconnects without
`since` resumes. Loaded when a connection opens, saved (debounced) as events are handed over,
forced when the connection ends, and moved by explicit acks."""

from __future__ import annotations

import time

from app.eventlog.base import EventLog, parse_cursor


class StoredCursor:
    __slots__ = ("_client_id", "_flush_every", "_flushed_at", "_log", "_tenant", "_user", "saved")

    def __init__(self, log: EventLog, tenant: str, user: str, client_id: str, *, flush_every: float) -> None:
        self._log, self._tenant, self._user, self._client_id = log, tenant, user, client_id
        self._flush_every = flush_every
        self._flushed_at = 0.0
        self.saved: str | None = None  # what the log holds for this client, as far as we know

    async def load(self) -> str | None:
        return await self._log.get_cursor(self._tenant, self._user, self._client_id)

    def due(self, position: str | None) -> bool:
        """The position moved and the debounce period passed: the next handover should save it."""
        return position != self.saved and time.monotonic() - self._flushed_at >= self._flush_every

    async def save(self, position: str | None, *, force: bool = False) -> None:
        if position is None or position == self.saved:
            return
        if not force and time.monotonic() - self._flushed_at < self._flush_every:
            return
        self._flushed_at = time.monotonic()
        self.saved = position
        await self._log.set_cursor(self._tenant, self._user, self._client_id, position)

    async def ack(self, cursor: str, delivered: tuple[int, int]) -> None:
        """Move the stored cursor to `cursor`, if it is not past what was `delivered`."""
        if parse_cursor(cursor) <= delivered:
            self.saved = cursor
            await self._log.set_cursor(self._tenant, self._user, self._client_id, cursor)
