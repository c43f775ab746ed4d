"""Server-Sent Events: the browser's EventSource reconnects by itself and sends Last-Event-ID.

The frames are app.protocol (each event's encoded once per process); live events usually bypass
the stream: with uvicorn's direct extension the hub writes each event's frame to the response
itself, through the session's outlet (app/transports/direct.py).
"""

from __future__ import annotations

import time
import types
from collections.abc import AsyncIterator, Callable, Generator
from functools import partial
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Query, Request
from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.types import Message, Send

from app.channels import parse_channels
from app.core.outlet import Outlet
from app.core.session import DeliveryFailed, Session, SlowConsumer
from app.deps import ConnectionSlotDep, ServicesDep, StreamDep
from app.drain import Drain
from app.eventlog.base import Event
from app.keepalive import SSE_PING
from app.protocol import encode
from app.protocol.sse import chunk, error_frame
from app.redis_client import engine_failure
from app.transports import CLIENT_ID_MAX_LENGTH, open_or_raise
from app.transports.direct import HTTP_EXTENSION, ChunkWriter
from app.transports.lifecycle import Connection

router = APIRouter(tags=["transports"])

class _Resume:
    """Awaits the rest of a coroutine that was already stepped once and is waiting on `pending`."""

    __slots__ = ("coro", "pending")

    def __init__(self, coro: types.CoroutineType[Any, Any, Any], pending: Any) -> None:
        self.coro, self.pending = coro, pending

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self.coro, self.pending
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # a cancellation (or anything thrown in) goes to the coroutine
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


class _EventSource(EventSourceResponse):
    """sse-starlette's response with a per-send timeout that costs nothing when the send does not wait.

    The stock `_send_with_timeout` enters an anyio cancel scope (a timer armed and disarmed) for
    every chunk: the profile of a fan-out put half of an SSE delivery's time there. A send that
    completes without waiting cannot time out, so the send is stepped once first and the scope is
    entered only when it waits (a client not reading: the transport is paused). Same timeout,
    same SendTimeoutError, same cancellation.
    """

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        if self.send_timeout is None:
            await send(message)
            return
        coro = send(message)
        if type(coro) is not types.CoroutineType:  # not a coroutine: the stock behaviour
            with anyio.move_on_after(self.send_timeout) as cancel_scope:
                await coro
        else:
            try:
                pending = coro.send(None)
            except StopIteration:
                return  # sent without waiting
            with anyio.move_on_after(self.send_timeout) as cancel_scope:
                await _Resume(coro, pending)
        if cancel_scope.cancel_called:
            raise SendTimeoutError()


@router.get(
    "/v1/sse",
    summary="Server-Sent Events stream",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": (
                "`text/event-stream`. Each event: `id: <id>`, `event: <type>`, `data: <envelope JSON>`. "
                "`event: reset` (data `{}`) when the cursor is older than the log's history; "
                "`event: error` with `{\"code\": \"token_expired\" | \"slow_consumer\" | \"unavailable\", ...}` "
                "before the stream ends. "
                "A process that is shutting down (SIGTERM) ends its streams: reconnect with `Last-Event-ID`. "
                "Keep-alive comments every 15 s."
            ),
            "content": {"text/event-stream": {"example": (
                'id: 1764310000000-0\nevent: analysis.progress\ndata: {"id":"1764310000000-0","channel":"analysis:a1",'
                '"type":"analysis.progress","data":{"analysisId":"a1","progress":42},"ts":"2026-11-28T06:00:00.000Z"}\n\n')}},
        },
        400: {"description": "Bad channel name or cursor."},
        401: {"description": "Missing, invalid or expired token."},
        403: {"description": "A requested channel is not allowed."},
    },
)
async def sse(
    request: Request,
    services: ServicesDep,
    slot: ConnectionSlotDep,  # MAX_CONNECTIONS: held until the response ends, and the connection with it
    principal: StreamDep,
    channels: Annotated[str | None, Query(description="Comma-separated channels besides user:<sub> and tenant:<tid>.")] = None,
    since: Annotated[str | None, Query(description="Resume after this id (Last-Event-ID wins when both are sent).")] = None,
    client_id: Annotated[str | None, Query(max_length=CLIENT_ID_MAX_LENGTH,
                                           description="Resume from this client's server-side cursor.")] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> EventSourceResponse:
    writer: ChunkWriter | None = request.scope.get("extensions", {}).get(HTTP_EXTENSION)
    write: Callable[[Event], bool] | None = None
    if writer is not None:
        def write(event: Event) -> bool:
            return writer.write(encode.sse_event(event))
    # with the direct write path, keep-alives come from the process's wheel, not a task per stream
    connection = Connection(services, principal, transport="sse", client_id=client_id, outlet=Outlet(write=write),
                            keepalive=partial(writer.keepalive, SSE_PING) if writer is not None else None)
    # the stream outlives this function: the connection ends with the request, however it ends
    # (also when the response never streamed), not with a frame kept for it
    slot.ends_with(connection)
    # the browser re-sends the original URL on reconnect, so its Last-Event-ID is the newer cursor
    await open_or_raise(connection.session, parse_channels(channels), last_event_id or since)
    return _EventSource(
        _stream(connection.session, principal.exp, services.drain),
        ping=0 if writer is not None else services.settings.sse_ping_seconds,
        send_timeout=services.settings.sse_send_timeout,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _stream(session: Session, expires_at: float, drain: Drain) -> AsyncIterator[bytes]:
    """Yields what the session hands over through next_batch, until the token expires, the client
    falls behind, or the process drains (SIGTERM: closing the session wakes the wait, the stream
    ends and the client resumes elsewhere)."""
    with drain.listening(session.close):
        while not drain.active:
            remaining = expires_at - time.time()
            if remaining <= 0:
                yield error_frame("token_expired", "the token expired; reconnect with a fresh one")
                return
            try:
                batch = await session.next_batch(remaining)
            except (SlowConsumer, DeliveryFailed) as exc:
                yield error_frame(exc.code, exc.message)
                return
            except Exception as exc:  # a replay read met the engine slow or away: say so and end
                yield _engine_failed(exc)
                return
            body = chunk(batch.events, batch.reset)
            if body:
                yield body
                try:
                    await session.save_cursor()
                except Exception as exc:
                    yield _engine_failed(exc)
                    return


def _engine_failed(exc: Exception) -> bytes:
    """`event: error` with `busy` or `unavailable` for an engine failure (the client resumes from
    its Last-Event-ID after a backoff); anything else is a bug and propagates."""
    failure = engine_failure(exc)
    if failure is None:
        raise exc
    return error_frame(failure.code, failure.message)
