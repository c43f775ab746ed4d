"""Thin adapters from the subscription core (app.core.session) to each wire protocol."""

from __future__ import annotations

from app.core.session import Session
from app.errors import ServiceError


async def open_or_raise(session: Session, channels: list[str], since: str | None) -> None:
    """For SSE and polling a refused channel refuses the whole request (WebSocket reports each)."""
    failures = await session.open(channels, since)
    if failures:
        raise failures[0]


__all__ = ["open_or_raise", "ServiceError"]
