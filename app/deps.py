"""The service's parts, built once per process, and the FastAPI dependencies that hand them out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from sqlalchemy.ext.asyncio import AsyncEngine

from app import db
from app.auth import Principal, TicketStore, TokenVerifier
from app.channels import Authorizer
from app.core.hub import Hub
from app.core.session import Session
from app.errors import Forbidden, Unauthorized
from app.eventlog.base import EventLog
from app.presence.tracker import PresenceTracker
from app.settings import Settings


@dataclass
class Services:
    settings: Settings
    log: EventLog
    hub: Hub
    verifier: TokenVerifier
    authorizer: Authorizer
    tickets: TicketStore
    engine: AsyncEngine
    presence: PresenceTracker

    async def db_ping(self) -> None:
        await db.ping(self.engine)

    def session(self, principal: Principal, transport: str, client_id: str | None = None) -> Session:
        s = self.settings
        return Session(
            log=self.log,
            hub=self.hub,
            authorizer=self.authorizer,
            principal=principal,
            transport=transport,
            client_id=client_id,
            max_backlog=s.max_backlog,
            replay_batch=s.replay_batch,
            cursor_flush_seconds=s.cursor_flush_seconds,
            state_namespaces=s.state_namespace_set,
            presence=self.presence,
            presence_sticky=transport == "poll",
        )


def get_services(conn: HTTPConnection) -> Services:
    return conn.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]
_bearer = HTTPBearer(auto_error=False, description="A JWT with `sub`, `tid` and `exp` claims.")


async def bearer_principal(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("send Authorization: Bearer <jwt>")
    return await services.verifier.verify(credentials.credentials)


async def authenticate(services: Services, authorization: str | None, access_token: str | None, ticket: str | None) -> Principal:
    """Header first, then `access_token`, then a one-time `ticket` (browsers' EventSource and
    WebSocket cannot set headers)."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return await services.verifier.verify(token.strip())
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


async def publisher_principal(principal: Annotated[Principal, Depends(bearer_principal)]) -> Principal:
    if not principal.can_publish:
        raise Forbidden("publishing needs a service token (scope 'publish')")
    return principal


BearerDep = Annotated[Principal, Depends(bearer_principal)]
StreamDep = Annotated[Principal, Depends(stream_principal)]
PublisherDep = Annotated[Principal, Depends(publisher_principal)]
