"""One connection's life, the same on every transport: a connection slot (MAX_CONNECTIONS), its
session made with what the transport offers, counted in `realtime_connections`, and, however the
connection ends (closed by either side, failed, cancelled, or a stream that never started), the
session closed and its stored cursor saved."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from app import metrics
from app.auth import Principal
from app.core.outlet import QUEUED, Outlet
from app.core.session import Session
from app.core.subscriptions import PresenceId
from app.deps import Services

logger = logging.getLogger(__name__)


@asynccontextmanager
async def connection(services: Services, principal: Principal, *, transport: str, client_id: str | None,
                     outlet: Outlet = QUEUED, presence_id: PresenceId | None = None) -> AsyncIterator[Session]:
    """The session of one connection (its slot is taken by the caller: a WebSocket must refuse
    with a close frame, an HTTP stream with a 503, before authentication)."""
    session = services.sessions.create(principal, label=transport, outlet=outlet, client_id=client_id,
                                       presence_id=presence_id)
    gauge = metrics.CONNECTIONS.labels(transport=transport)
    gauge.inc()
    try:
        yield session
    finally:
        session.close()
        gauge.dec()
        with anyio.CancelScope(shield=True):  # a disconnect cancels us; the cursor still gets saved
            try:
                await session.save_cursor(force=True)
            except Exception as exc:  # the engine is away: the client resumes from its own cursor
                logger.warning("%s cursor not saved at close: %s: %s", transport, type(exc).__name__, exc)
