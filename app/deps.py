"""The service's parts, built once per process, and the FastAPI dependencies that hand them out."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Protocol

from fastapi import Depends, Header, Query
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from py_vapid import Vapid
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.requests import HTTPConnection

from app import metrics
from app.auth import Principal, TicketStore, TokenVerifier
from app.channels import Authorizer
from app.core.hub import Hub
from app.core.session import Limits, SessionFactory
from app.db import ping as ping_database
from app.drain import Drain
from app.errors import Busy, Forbidden, RateLimited, Unauthorized, Unavailable
from app.eventlog.base import EventLog
from app.keepalive import Keepalive
from app.limits import ConnectionSlots, MessageRate, RateLimiter
from app.notifications.outbox import Outbox
from app.presence.tracker import PresenceTracker
from app.push.queue.base import PushQueue
from app.settings import Settings
from app.tracing import Tracing

logger = logging.getLogger(__name__)

# SQLSTATE classes that mean "no usable database" rather than a bad query: connection exception,
# insufficient resources, operator intervention (shutting down, starting up), no such database.
_UNAVAILABLE_SQLSTATES = ("08", "53", "57P", "3D000")
# a transaction the database rolled back because of a concurrent one (serialization failure,
# deadlock): nothing was changed, and the same request again normally succeeds
_RETRY_SQLSTATES = ("40001", "40P01")


@dataclass
class Services:
    settings: Settings
    log: EventLog
    hub: Hub
    verifier: TokenVerifier
    authorizer: Authorizer
    tickets: TicketStore
    engine: AsyncEngine
    db: async_sessionmaker[AsyncSession]  # database sessions (get_db); `sessions` below are real-time ones
    vapid: Vapid
    push_queue: PushQueue
    outbox: Outbox  # publishes inbox events after their commit
    presence: PresenceTracker
    connections: ConnectionSlots  # MAX_CONNECTIONS, shared by the three transports
    publish_rate: RateLimiter | None  # PUBLISH_PER_SECOND per token; None: unlimited
    tracing: Tracing | None = None  # TRACING: publish spans (app/tracing.py); None: off
    drain: Drain = field(default_factory=Drain)  # set at SIGTERM: polls answer, streams end, /readyz 503
    sessions: SessionFactory = field(init=False)  # every transport's sessions, made with these parts
    keepalive: dict[str, Keepalive] = field(init=False)  # one wheel per transport that pings: WS_PING_SECONDS, SSE_PING_SECONDS

    def __post_init__(self) -> None:
        s = self.settings
        self.sessions = SessionFactory(
            log=self.log, hub=self.hub, authorizer=self.authorizer, presence=self.presence,
            limits=Limits(max_backlog=s.max_backlog, replay_batch=s.replay_batch, max_subscriptions=s.max_subscriptions),
            cursor_flush_seconds=s.cursor_flush_seconds, state_namespaces=s.state_namespace_set,
        )
        self.keepalive = {"ws": Keepalive(s.ws_ping_seconds), "sse": Keepalive(s.sse_ping_seconds)}

    def message_rate(self) -> MessageRate | None:
        """A fresh per-WebSocket client frame limiter (None when WS_MESSAGES_PER_SECOND is 0)."""
        s = self.settings
        return MessageRate(s.ws_messages_per_second, s.ws_message_burst) if s.ws_messages_per_second else None

    async def db_ping(self) -> None:
        await ping_database(self.engine)

async def get_services(conn: HTTPConnection) -> Services:
    """Async, like every dependency here: FastAPI runs a plain `def` dependency in its thread pool,
    a thread hand-off on every request (and a queue behind 40 threads under load)."""
    return conn.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def database_retry(exc: BaseException) -> bool:
    return isinstance(exc, sa_exc.DBAPIError) and (getattr(exc.orig, "sqlstate", None) or "") in _RETRY_SQLSTATES


def database_unreachable(exc: BaseException) -> bool:
    """A lost or refusing database (503 material), as opposed to a bug in a query (500)."""
    if isinstance(exc, (OSError, TimeoutError, sa_exc.TimeoutError, sa_exc.OperationalError, sa_exc.InterfaceError)):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        sqlstate = getattr(exc.orig, "sqlstate", None) or ""
        return exc.connection_invalidated or sqlstate.startswith(_UNAVAILABLE_SQLSTATES)
    return False


async def get_db(services: ServicesDep) -> AsyncIterator[AsyncSession]:
    """One database session per request. The one place where a database that is down becomes
    503 `unavailable`; the real-time routes never ask for the database, so they keep working."""
    async with services.db() as db:
        try:
            yield db
        except Exception as exc:
            if database_unreachable(exc):
                logger.warning("database unavailable: %s: %s", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
                raise Unavailable("the database is unavailable; try again shortly") from exc
            if database_retry(exc):
                raise Busy("the database rolled this change back for a concurrent one; nothing changed, retry",
                           retry_after=0.1) from exc
            raise


DbDep = Annotated[AsyncSession, Depends(get_db)]

# The W3C trace context of a request that publishes (POST /v1/events, every inbox change): with
# TRACING on, the publish span of its event is that context's child (app/tracing.py).
TraceparentHeader = Annotated[str | None, Header(
    description="W3C trace context: with TRACING on, the publish span of the event this request causes is its child, "
                "whichever process publishes it, and every delivery's span links to that (ignored otherwise, or when "
                "invalid).")]
TracestateHeader = Annotated[str | None, Header(description="W3C trace context's vendor part.")]
_bearer = HTTPBearer(auto_error=False, description="A JWT with `sub`, `tid` and `exp` claims.")


async def bearer_principal(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("send Authorization: Bearer <jwt>")
    return await services.verifier.verify(credentials.credentials)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None for any other header, or none."""
    scheme, _, token = (authorization or "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


async def authenticate(services: Services, authorization: str | None, access_token: str | None, ticket: str | None) -> Principal:
    """Header first, then `access_token`, then a one-time `ticket` (browsers' EventSource and
    WebSocket cannot set headers)."""
    token = bearer_token(authorization)
    if token is not None:
        return await services.verifier.verify(token)
    if access_token:
        return await services.verifier.verify(access_token)
    if ticket:
        return await services.tickets.redeem(ticket)
    raise Unauthorized("send Authorization: Bearer <jwt>, ?access_token= or ?ticket=")


async def stream_principal(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    access_token: Annotated[str | None, Query(description="JWT, for clients that cannot set headers.")] = None,
    ticket: Annotated[str | None, Query(description="One-time ticket from POST /v1/tickets.")] = None,
) -> Principal:
    header = f"{credentials.scheme} {credentials.credentials}" if credentials else None
    return await authenticate(services, header, access_token, ticket)


async def publisher_principal(services: ServicesDep, principal: Annotated[Principal, Depends(bearer_principal)]) -> Principal:
    """A service token, within its publish rate. The bucket is keyed by the token's tenant and subject
    (not a `jti`, which this service does not read): every token minted for one service shares one
    budget, so minting fresh tokens does not reset it."""
    if not principal.can_publish:
        raise Forbidden("publishing needs a service token (scope 'publish')")
    if services.publish_rate is not None:
        wait = services.publish_rate.take(f"{principal.tenant}\x00{principal.user}")
        if wait > 0:
            metrics.LIMIT_HITS.labels(limit="publish_rate").inc()
            raise RateLimited(f"more than {services.settings.publish_per_second:g} publishes per second with this token",
                              retry_after=wait)
    return principal


class Closable(Protocol):
    async def close(self) -> None: ...


class Slot:
    """One of the process's MAX_CONNECTIONS, held by a request; `ends_with` hands it what must be
    closed when the request ends (an SSE stream's connection, which outlives its endpoint)."""

    __slots__ = ("_end",)

    def __init__(self) -> None:
        self._end: Closable | None = None

    def ends_with(self, end: Closable) -> None:
        self._end = end


async def connection_slot(services: ServicesDep) -> AsyncIterator[Slot]:
    """Holds one of the process's MAX_CONNECTIONS for a request's whole life: FastAPI leaves this
    dependency after the response is sent, however it ends, so an SSE stream counts until it ends
    and a long-poll while it waits, and a stream that never started (client gone first) still ends
    its connection and gives its slot back."""
    services.connections.acquire()
    slot = Slot()
    try:
        yield slot
    finally:
        try:
            if slot._end is not None:
                await slot._end.close()
        finally:
            services.connections.release()


BearerDep = Annotated[Principal, Depends(bearer_principal)]
StreamDep = Annotated[Principal, Depends(stream_principal)]
PublisherDep = Annotated[Principal, Depends(publisher_principal)]
ConnectionSlotDep = Annotated[Slot, Depends(connection_slot)]
