"""Long-polling: one request, one batch. The client sends back the `cursor` it got as `since`."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.routing import Route

from app.auth import Principal
from app.channels import parse_channels
from app.core.session import Batch, Session
from app.core.subscriptions import PresenceId
from app.deps import ConnectionSlotDep, Services, ServicesDep, StreamDep, authenticate
from app.drain import Drain
from app.eventlog.base import ZERO
from app.protocol.encode import poll_answer
from app.transports import CLIENT_ID_MAX_LENGTH, open_or_raise
from app.transports.lifecycle import Connection

router = APIRouter(tags=["transports"])
PATH = "/v1/poll"


async def _next_unless_draining(drain: Drain, session: Session, wait: float) -> Batch:
    """The next batch, or an empty one as soon as the process starts draining (SIGTERM): the client
    polls again with its cursor, on another process. A timeout scope cuts the wait short wherever
    next_batch is (nothing is handed over by a cancelled read, so the cursor stays exact)."""
    scope = asyncio.timeout(None)
    try:
        async with scope:
            with drain.listening(lambda: scope.reschedule(0)):
                return await session.next_batch(wait)
    except TimeoutError:
        if not scope.expired():
            raise
        return Batch()


@router.get(
    "/v1/poll",
    summary="Long-poll for events",
    responses={
        200: {
            "description": "Events in id order (possibly none after `timeout`), the cursor to send next, and whether "
                           "history was lost. "
                           "A process that is shutting down (SIGTERM) answers a waiting poll at once, often empty: poll "
                           "again with `cursor` (the load balancer sends it to another process; nothing is lost).",
            "content": {"application/json": {"example": {
                "events": [{"id": "1764310000000-0", "channel": "analysis:a1", "type": "analysis.progress",
                            "data": {"analysisId": "a1", "progress": 42}, "ts": "2026-11-28T06:00:00.000Z"}],
                "cursor": "1764310000000-0", "reset": False}}},
        },
        400: {"description": "Bad channel name or cursor."},
        401: {"description": "Missing, invalid or expired token."},
        403: {"description": "A requested channel is not allowed."},
    },
)
async def poll(
    services: ServicesDep,
    _slot: ConnectionSlotDep,  # MAX_CONNECTIONS: held until the response ends
    principal: StreamDep,
    channels: Annotated[str | None, Query(description="Comma-separated channels besides user:<sub> and tenant:<tid>.")] = None,
    since: Annotated[str | None, Query(description="The cursor of the previous answer.")] = None,
    timeout: Annotated[float | None, Query(ge=0, description="Seconds to wait when nothing is pending (default 25).")] = None,
    client_id: Annotated[str | None, Query(max_length=CLIENT_ID_MAX_LENGTH,
                                           description="Resume from this client's server-side cursor.")] = None,
) -> Response:
    """The documented route (OpenAPI); requests are served by `poll_request` below, with the same
    parameters, order of checks and errors, and this same answer."""
    return await _answer(services, principal, channels, since, timeout, client_id)


async def _answer(services: Services, principal: Principal, channels: str | None, since: str | None,
                  timeout: float | None, client_id: str | None) -> Response:
    wait = min(services.settings.poll_default_timeout if timeout is None else timeout, services.settings.poll_max_timeout)
    # a long-polling client spans many requests: in presence it keeps one id per client_id and
    # leaves by expiry alone
    presence_id = PresenceId(f"poll-{client_id or 'default'}", sticky=True)
    async with Connection(services, principal, transport="poll", client_id=client_id, presence_id=presence_id) as session:
        await open_or_raise(session, parse_channels(channels), since)
        if services.drain.active:  # this process is going away: answer with what is waiting, at once
            wait = 0
        batch = await _next_unless_draining(services.drain, session, wait)
        reset = batch.reset
        if reset:  # continue from the head at once (live-state snapshots come first there)
            batch = await session.next_batch(0)
        await session.save_cursor(force=True)  # before answering: the next poll may ask for it
        body = poll_answer(batch.events, session.position or ZERO, reset)
    return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})


async def poll_request(request: Request) -> Response:
    """GET /v1/poll as a plain Starlette route, ahead of the documented one: FastAPI's dependency
    solving (pydantic over each parameter, an exit stack per request) was a third of a poll's CPU
    at scale, and a long-poll is one request per delivery. The same steps as the dependencies:
    the connection slot, then the principal, then the parameters (422 invalid_request)."""
    services: Services = request.app.state.services
    services.connections.acquire()  # MAX_CONNECTIONS: held until the answer is made
    try:
        query = request.query_params
        principal = await authenticate(services, request.headers.get("authorization"), query.get("access_token"),
                                       query.get("ticket"))
        timeout, client_id = _timeout(query.get("timeout")), query.get("client_id")
        if client_id is not None and len(client_id) > CLIENT_ID_MAX_LENGTH:
            raise _invalid("client_id", client_id, "string_too_long",
                           f"String should have at most {CLIENT_ID_MAX_LENGTH} characters", {"max_length": CLIENT_ID_MAX_LENGTH})
        return await _answer(services, principal, query.get("channels"), query.get("since"), timeout, client_id)
    finally:
        services.connections.release()


def _timeout(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise _invalid("timeout", value, "float_parsing", "Input should be a valid number, unable to parse string as a number",
                       None) from None
    if not seconds >= 0:  # NaN too
        raise _invalid("timeout", value, "greater_than_equal", "Input should be greater than or equal to 0", {"ge": 0})
    return seconds


def _invalid(name: str, value: str, kind: str, message: str, ctx: dict[str, int] | None) -> RequestValidationError:
    """The error FastAPI's validation would raise for this query parameter (app.main maps it to 422)."""
    error: dict[str, object] = {"type": kind, "loc": ("query", name), "msg": message, "input": value}
    if ctx is not None:
        error["ctx"] = ctx
    return RequestValidationError([error])


router.routes.insert(0, Route(PATH, poll_request, methods=["GET"]))  # app.main serves it more directly still
