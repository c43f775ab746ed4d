"""WebSocket: JSON text frames both ways; the ops, frames and close codes are app.protocol.ws.

Live events normally bypass ASGI: the hub writes each event's frame, encoded once, straight to
the socket through the session's outlet (app/transports/direct.py); the pump task sends the rest
(replay, catch-up after a full buffer, control frames).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse
from starlette.routing import WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect, WebSocketState

from app import faithful, metrics
from app.channels import parse_channels
from app.core.outlet import CloseReason, Outlet
from app.core.session import Session
from app.deps import Services, authenticate
from app.errors import InternalError, ServiceError, TokenExpired
from app.eventlog.base import Event
from app.keepalive import WS_PING
from app.limits import retry_after_header
from app.presence import query
from app.protocol import encode
from app.protocol import ws as protocol
from app.protocol.ws import CloseCode
from app.redis_client import engine_failure
from app.transports import CLIENT_ID_MAX_LENGTH
from app.transports.direct import WS_EXTENSION, DirectWriter
from app.transports.lifecycle import Connection

logger = logging.getLogger(__name__)
router = APIRouter()

SLOW_CLOSE_WAIT = 10.0  # seconds a cut-off client's buffer may take to drain before we abort


def origin_allowed(services: Services, origin: str | None) -> bool:
    allowed = services.settings.allowed_origins
    return origin is None or not allowed or origin in allowed


async def websocket_endpoint(ws: WebSocket) -> None:
    """Accept first, then set up (connection slot, authentication, the session's channels and
    position); whatever fails, at whichever step, the client is told why: a close code and a
    reason it can act on, after an error frame (see _failure), never a dropped socket."""
    services: Services = ws.app.state.services
    slot = False
    try:
        if not origin_allowed(services, ws.headers.get("origin")):
            await ws.close(code=CloseCode.POLICY_VIOLATION)  # before accept: the handshake fails with 403
            return
        query_params = ws.query_params
        await ws.accept()
        try:
            services.connections.acquire()  # MAX_CONNECTIONS, shared with SSE and polling
        except ServiceError as exc:  # too_many_connections: said in a frame, then 1013 Try Again Later
            await _refuse(ws, exc, CloseCode.TRY_AGAIN_LATER)
            return
        slot = True
        try:
            principal = await authenticate(services, ws.headers.get("authorization"), query_params.get("access_token"),
                                           query_params.get("ticket"))
        except ServiceError as exc:
            await _refuse(ws, exc, CloseCode.TRY_AGAIN_LATER if exc.status == 503 else CloseCode.AUTHENTICATION)
            return
        client_id = (query_params.get("client_id") or "")[:CLIENT_ID_MAX_LENGTH] or None
        client = _Connection(ws, services, principal.exp)
        async with Connection(services, principal, transport="ws", client_id=client_id,
                              outlet=client.outlet(),
                              keepalive=partial(client.writer.keepalive, WS_PING) if client.writer is not None else None,
                              ) as session:
            client.session = session
            try:
                await client.run(query_params.get("channels"), query_params.get("since"))
            except Exception as exc:  # told before the connection's clean-up, which may wait on the engine too
                await _fail(ws, exc)
    except Exception as exc:  # e.g. a ticket that could not be redeemed: the engine is slow or away
        await _fail(ws, exc)
    finally:
        if slot:
            services.connections.release()


PATH = "/v1/ws"

# A plain Starlette route: FastAPI's dependency machinery (two exit stacks and its frames, kept
# for the connection's whole life) would cost every idle connection ~4 KB for nothing it uses.
# app.main goes further and sends WebSockets to `websocket_app`, past the middleware and router.
router.routes.append(WebSocketRoute(PATH, websocket_endpoint))


async def websocket_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The endpoint as a bare ASGI app (scope["app"] must be the application)."""
    await websocket_endpoint(WebSocket(scope, receive, send))

FAIL_CLOSE_WAIT = 5.0  # seconds the error frame and close of a failed connection may take before we give up


async def _refuse(ws: WebSocket, exc: ServiceError, code: CloseCode) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError, TimeoutError):
        async with asyncio.timeout(FAIL_CLOSE_WAIT):
            await ws.send_text(protocol.error(exc))
            await ws.close(code=code, reason=exc.code)


def _failure(exc: BaseException) -> tuple[ServiceError, CloseCode] | None:
    """What a connection that failed with `exc` tells its client: the error frame and the close
    code (its reason is the error's code); None when the client is gone (nobody to tell).

    The engine slow, away or this process's pool exhausted: `busy` / `unavailable` with
    `retry_after`, close 1013 (Try Again Later). A named error: its code, and 4001 for a token, 1013
    for a 503, else 4400. Anything else is a bug: logged, `internal_error`, close 1011."""
    if isinstance(exc, WebSocketDisconnect):
        return None
    engine = engine_failure(exc)
    if engine is not None:
        logger.warning("websocket closed 1013 (%s): %s: %s", engine.code, type(exc).__name__, exc)
        return engine, CloseCode.TRY_AGAIN_LATER
    if isinstance(exc, ServiceError):
        if exc.status == 401:
            return exc, CloseCode.AUTHENTICATION
        return exc, CloseCode.TRY_AGAIN_LATER if exc.status == 503 else CloseCode.BAD_REQUEST
    logger.error("websocket connection failed", exc_info=exc)
    return InternalError("the server failed this connection; reconnect with your cursor after a backoff"), \
        CloseCode.INTERNAL_ERROR


async def _fail(ws: WebSocket, exc: BaseException) -> None:
    """Tell the client why its connection failed, whether or not the handshake was accepted yet."""
    failure = _failure(exc)
    if failure is None:
        return
    error, code = failure
    if ws.application_state is WebSocketState.CONNECTING:  # not accepted: answer the handshake instead
        headers = {"Retry-After": retry_after_header(error.retry_after)} if error.retry_after is not None else None
        with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):  # no denial responses: plain 403
            try:
                await ws.send_denial_response(JSONResponse(error.body(), status_code=error.status, headers=headers))
            except RuntimeError:
                await ws.close(code=code, reason=error.code)
        return
    if ws.application_state is WebSocketState.CONNECTED:
        await _refuse(ws, error, code)


class _Connection:
    """One WebSocket client. Two tasks while open: the ASGI task reads client frames, a pump
    task sends what the session hands over when it is not written directly by the hub. Token
    expiry and a slow-consumer cut-off are timers and callbacks, not tasks: an idle connection
    should cost little memory."""

    session: Session

    def __init__(self, ws: WebSocket, services: Services, expires_at: float) -> None:
        self.ws, self.services = ws, services
        self.expires_at = expires_at
        self.writer: DirectWriter | None = ws.scope.get("extensions", {}).get(WS_EXTENSION)
        self._send_lock = asyncio.Lock()
        self._expiry: asyncio.TimerHandle | None = None
        self._closing: asyncio.Task[None] | None = None
        self._main: asyncio.Task[Any] | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._reading = False
        self._aborted = False

    def outlet(self) -> Outlet:
        """What the session may do to this socket: write an event's frame now (uvicorn's direct
        extension; compression off), and close it from the hub's callback."""
        writer = self.writer
        write: Callable[[Event], bool] | None = None
        if writer is not None:
            def write(event: Event) -> bool:
                return writer.write(encode.ws_frame(event))
        return Outlet(write=write, close=self._closed_by_core)

    def _closed_by_core(self, reason: CloseReason) -> None:
        if reason is CloseReason.SLOW_CONSUMER:
            # counted once, by the session that cut it off; a reader that is slow (not gone) gets
            # time to reach the close frame behind its full buffer
            self._begin_close(CloseCode.SLOW_CONSUMER, "slow_consumer", wait=SLOW_CLOSE_WAIT)
        else:
            self._begin_close(CloseCode.INTERNAL_ERROR, "internal_error")

    async def send(self, text: str) -> None:
        async with self._send_lock:
            await self._send_text(text)

    async def _send_text(self, text: str) -> None:
        """`ws.send_text(text)` minus Starlette's two per-frame wrappers once connected: the same
        ASGI message, the same state change and error on a lost socket."""
        ws = self.ws
        if ws.application_state is not WebSocketState.CONNECTED:
            await ws.send_text(text)  # Starlette decides (and raises) as before
            return
        try:
            await ws._send({"type": "websocket.send", "text": text})
        except OSError:
            ws.application_state = WebSocketState.DISCONNECTED
            raise WebSocketDisconnect(code=1006) from None

    async def error(self, exc: ServiceError) -> None:
        await self.send(protocol.error(exc))

    async def run(self, channels_param: str | None, since: str | None) -> None:
        """Set up, then serve until either side closes. What the set-up or an op raises (a bad
        cursor, the engine slow or away, a bug) ends the connection through the endpoint's _fail."""
        refused = await self.session.open(parse_channels(channels_param), since)
        for problem in refused:
            await self.error(problem)
        for channel in self.session.channels:
            await self.send(protocol.subscribed(channel))
        self._main = asyncio.current_task()
        self._arm_expiry()
        self._pump_task = pump = asyncio.create_task(self._pump(), name="ws-pump")
        pump.add_done_callback(self._pump_ended)
        self._reading = True
        try:
            await self._read()
        except asyncio.CancelledError:
            if not self._aborted:
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]  # our own abort (see _close)
        finally:
            self._reading = False
            if self._expiry is not None:
                self._expiry.cancel()
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
            if self._closing is not None and self._closing is not asyncio.current_task():
                await asyncio.gather(self._closing, return_exceptions=True)

    def _pump_ended(self, pump: asyncio.Task[None]) -> None:
        if pump.cancelled() or self._closing is not None:
            return
        exc = pump.exception()
        failure = None if exc is None else _failure(exc)  # logged there; a replay that met a slow engine: 1013
        if failure is not None:
            error, code = failure
            self._begin_close(code, error.code, error)

    def _arm_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        delay = max(self.expires_at - time.time(), 0.0)
        self._expiry = asyncio.get_running_loop().call_later(delay, self._expired)

    def _expired(self) -> None:
        if time.time() < self.expires_at:  # refreshed meanwhile
            self._arm_expiry()
            return
        self._begin_close(CloseCode.AUTHENTICATION, "token_expired",
                          TokenExpired("the token expired; send a fresh one with op refresh before exp"))

    def _begin_close(self, code: CloseCode, reason: str, error: ServiceError | None = None, wait: float = 1.0) -> None:
        """Close from a callback (expiry, cut-off, a failed pump); the first reason wins. The pump
        stops first: nothing may follow the close frame."""
        if self._closing is None:
            if self._pump_task is not None:
                self._pump_task.cancel()
            self._closing = asyncio.create_task(self._close(code, reason, wait, error), name="ws-close")

    async def _close(self, code: CloseCode, reason: str, wait: float = 1.0, error: ServiceError | None = None) -> None:
        """Close even when the client stopped reading: if its write buffer does not drain within
        `wait`, the connection is dropped (and the reading task ends)."""
        if self.ws.application_state == WebSocketState.DISCONNECTED:
            return
        try:
            if error is not None:
                await asyncio.wait_for(self.error(error), wait)
            await asyncio.wait_for(self.ws.close(code=code, reason=reason), wait)
        except (TimeoutError, OSError, RuntimeError, WebSocketDisconnect) as exc:
            logger.info("websocket close %s not delivered (%s); dropping the connection", int(code), type(exc).__name__)
            if self.writer is not None:
                self.writer.abort()  # uvicorn then hands the reading task its disconnect
            elif self._reading and self._main is not None:  # another server: stop reading ourselves
                self._aborted = True
                self._main.cancel()

    async def _pump(self) -> None:
        session, send, writer = self.session, self.send, self.writer
        while True:
            batch = await session.next_batch()
            if batch.reset:
                await send(protocol.RESET)
            for written, event in enumerate(batch.events):
                if writer is None or not writer.write(encode.ws_frame(event)):
                    try:
                        await send(encode.text(event))
                    except BaseException:  # the socket is gone (or the pump cancelled) mid-batch
                        session.unsent(batch, written)
                        raise
            await session.save_cursor()

    async def _read(self) -> None:
        limit = self.services.settings.max_frame_bytes
        rate = self.services.message_rate()  # WS_MESSAGES_PER_SECOND; None: unlimited
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            raw: str | bytes | None = message.get("text") if message.get("text") is not None else message.get("bytes")
            if raw is None:
                continue
            if len(raw) > limit:
                metrics.LIMIT_HITS.labels(limit="frame_size").inc()
                await self.error(protocol.BadFrame(f"frame is {len(raw)} bytes; the limit is {limit}"))
                self._begin_close(CloseCode.FRAME_TOO_LARGE, "frame_too_large")
                return
            refused = rate.check() if rate is not None else None
            if refused is not None:  # not handled; persisting (2x the burst in a row): 1008 policy violation
                if rate is not None and rate.persistent:
                    self._begin_close(CloseCode.POLICY_VIOLATION, "rate_limited", refused)
                    return
                await self.error(refused)
                continue
            try:
                faithful.check_text(raw)  # JSON the service cannot hold as sent: an error frame, the connection stays
                frame = protocol.parse(raw)
                await _HANDLERS[frame.op](self, frame)
            except ServiceError as exc:
                await self.error(exc)

    # --- the ops (CLIENT_OPS), dispatched by _HANDLERS -------------------------------------

    async def _ping(self, frame: protocol.ClientFrame) -> None:
        await self.send(protocol.PONG)

    async def _subscribe(self, frame: protocol.ClientFrame) -> None:
        channel = frame.channel()
        await self.session.subscribe(channel)
        await self.send(protocol.subscribed(channel))

    async def _unsubscribe(self, frame: protocol.ClientFrame) -> None:
        channel = frame.channel()
        self.session.unsubscribe(channel)
        await self.send(protocol.unsubscribed(channel))

    async def _presence(self, frame: protocol.ClientFrame) -> None:
        channel = frame.channel()
        viewers = await query.viewers(self.services.presence, self.services.authorizer, self.session.principal, channel)
        await self.send(protocol.presence(channel, viewers))

    async def _refresh(self, frame: protocol.ClientFrame) -> None:
        principal = await self.services.verifier.verify(frame.token())
        self.session.refresh(principal)  # same sub and tid, or Unauthorized; new `channels` patterns apply from now
        self.expires_at = principal.exp
        self._arm_expiry()
        await self.send(protocol.REFRESHED)

    async def _ack(self, frame: protocol.ClientFrame) -> None:
        await self.session.ack(frame.cursor())


_HANDLERS: dict[str, Callable[[_Connection, protocol.ClientFrame], Awaitable[None]]] = {
    "subscribe": _Connection._subscribe,
    "unsubscribe": _Connection._unsubscribe,
    "ping": _Connection._ping,
    "refresh": _Connection._refresh,
    "ack": _Connection._ack,
    "presence": _Connection._presence,
}
"""One handler per client op; the AsyncAPI test holds this table to protocol.CLIENT_OPS."""


def _ws_doc() -> str:
    client = "\n".join(f"- `{op}`: {text}" for op, text in protocol.CLIENT_OPS.items())
    server = "\n".join(f"- `{op}`: {text}" for op, text in protocol.SERVER_OPS.items())
    closes = "\n".join(f"- {int(code)}: {text}" for code, text in protocol.CLOSE_CODES.items())
    return f"""
Open with a WebSocket handshake (`ws://` / `wss://`); a plain GET answers 426.

Query: `access_token` or `ticket` (or an `Authorization` header), `channels=a,b`, `since=<id>`,
`client_id=<id>`. The connection joins `user:<sub>` and `tenant:<tid>` automatically.

**Client → server** (JSON text frames):

{client}

**Server → client**: event envelopes `{{"id","channel","type","data","ts"[,"snapshot"]}}`, and

{server}

Error codes: `unauthorized`, `token_expired`, `forbidden`, `bad_channel`, `bad_cursor`, `bad_frame`,
`unknown_op`, `too_many_connections`, `too_many_subscriptions` (with `channel`; the connection stays),
`rate_limited` (with `retry_after`; the frame was not handled), `unrepresentable_json` (an integer beyond
64 bits, a lone surrogate, a NUL or nesting deeper than 32 in a frame; the connection stays), `busy` and
`unavailable` (the event log engine busy, slow or away, with `retry_after`; then close 1013), `internal_error`
(a bug; then close 1011).

**Close codes** (an `Origin` not in `CORS_ORIGINS` fails the handshake with 403):

{closes}

The whole message set: `/asyncapi.yaml`.
"""


@router.get("/v1/ws", tags=["transports"], summary="WebSocket endpoint (upgrade required)", description=_ws_doc(),
            status_code=426, responses={426: {"description": "Not a WebSocket handshake.", "content": {
                "application/json": {"example": {
                    "code": "upgrade_required", "message": "open /v1/ws with a WebSocket handshake"}}}}})
async def websocket_documentation() -> JSONResponse:
    return JSONResponse({"code": "upgrade_required", "message": "open /v1/ws with a WebSocket handshake"},
                        status_code=426, headers={"Upgrade": "websocket"})
