"""One connection's life, the same on every transport: its session made with what the transport
offers, counted in `realtime_connections`, and, however the connection ends (closed by either
side, failed, cancelled, or a stream that never started), the session closed and its stored cursor
saved. (The connection slot, MAX_CONNECTIONS, is taken before: a WebSocket refuses with a close
frame, an HTTP stream with a 503, before authentication.)

A class rather than a generator-based context manager: an SSE stream's life begins in its
endpoint and ends after its response (handed to the request's connection slot, app.deps.Slot),
and an idle connection should not keep generator frames.
"""

from __future__ import annotations

import logging
from types import TracebackType

import anyio

from app import metrics
from app.auth import Principal
from app.core.outlet import QUEUED, Outlet
from app.core.session import Session
from app.core.subscriptions import PresenceId
from app.deps import Services
from app.keepalive import Ping

logger = logging.getLogger(__name__)


class Connection:
    """`async with Connection(...) as session:`, or `close()` from wherever the connection ends."""

    __slots__ = ("_closed", "_gauge", "_keepalive", "session")

    def __init__(self, services: Services, principal: Principal, *, transport: str, client_id: str | None,
                 outlet: Outlet = QUEUED, presence_id: PresenceId | None = None, keepalive: Ping | None = None) -> None:
        """`keepalive` writes the transport's keep-alive straight to the socket (the direct write
        path); the process's wheel for the transport calls it (app.keepalive)."""
        self.session: Session = services.sessions.create(principal, label=transport, outlet=outlet, client_id=client_id,
                                                         presence_id=presence_id)
        self._gauge = metrics.CONNECTIONS.labels(transport=transport)
        self._gauge.inc()
        self._closed = False
        wheel = services.keepalive.get(transport)
        self._keepalive = (wheel, wheel.add(keepalive)) if wheel is not None and keepalive is not None else None

    async def close(self) -> None:
        """Idempotent; runs to its end even while the caller is being cancelled (a disconnect)."""
        if self._closed:
            return
        self._closed = True
        if self._keepalive is not None:
            wheel, handle = self._keepalive
            wheel.discard(handle)
        session = self.session
        session.close()
        self._gauge.dec()
        with anyio.CancelScope(shield=True):
            try:
                await session.save_cursor(force=True)
            except Exception as exc:  # the engine is away: the client resumes from its own cursor
                logger.warning("%s cursor not saved at close: %s: %s", session.label, type(exc).__name__, exc)

    async def __aenter__(self) -> Session:
        return self.session

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()
