"""Thin adapters from the subscription core (app.core.session) to each wire protocol."""

from __future__ import annotations

from app.core.session import Session
from app.errors import ServiceError

CLIENT_ID_MAX_LENGTH = 128  # a client_id longer than this: 422 on SSE and polling, cut to it on WebSocket


async def open_or_raise(session: Session, channels: list[str], since: str | None) -> None:
    """For SSE and polling a refused channel refuses the whole request (WebSocket reports each)."""
    failures = await session.open(channels, since)
    if failures:
        raise failures[0]


# The operator-set limits an SSE or long-poll request can hit (app.limits), documented on both
# routes (app.main includes their routers with these). 422 replaces FastAPI's generic
# validation entry, so it names both codes.
LIMIT_RESPONSES: dict[int | str, dict[str, object]] = {
    422: {"description": "`invalid_request`: the query does not match the schema; or `too_many_subscriptions`: "
                         "more channels than MAX_SUBSCRIPTIONS (user: and tenant: count). Ask for fewer channels.",
          "content": {"application/json": {"example": {
              "code": "too_many_subscriptions", "channel": "repository:r9",
              "message": "a connection holds at most 200 channels (user: and tenant: included); unsubscribe from one first"}}}},
    503: {"description": "`too_many_connections`: this process holds MAX_CONNECTIONS already; retry after "
                         "`Retry-After` seconds (possibly on another process). Also `unavailable` when the engine is down.",
          "headers": {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}},
          "content": {"application/json": {"example": {
              "code": "too_many_connections", "retry_after": 5,
              "message": "this server holds its maximum of 50000 connections; retry shortly"}}}},
}

__all__ = ["CLIENT_ID_MAX_LENGTH", "LIMIT_RESPONSES", "ServiceError", "open_or_raise"]
