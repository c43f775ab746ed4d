"""WebSocket: JSON text frames both ways, ops per CONTRACT.md section 5.

Close codes: 4001 authentication (bad or expired token), 4400 bad request (bad cursor),
4008 slow consumer (resume with your cursor), 1009 frame too large, 1008 client frames over the
rate limit, 1013 the process is at MAX_CONNECTIONS (try again later), 1012 the process drains.

Live events normally bypass ASGI: the hub writes each event's frame, encoded once, straight to
the socket (app.transports.direct.py); the pump task sends the rest (replay, catch-up after a
full buffer, control frames).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocketDisconnect, WebSocketState

from app import metrics
from app.api.presence import presence_of
from app.auth import Principal
from app.channels import check_channel, parse_channels
from app.core.session import Session
from app.deps import Services, authenticate
from app.errors import BadChannel, ServiceError, TokenExpired, Unauthorized
from app.transports.direct import WS_EXTENSION, DirectWriter

log = logging.getLogger(__name__)
router = APIRouter()

CLOSE_AUTH = 4001
CLOSE_BAD_REQUEST = 4400
CLOSE_SLOW = 4008
CLOSE_TOO_LARGE = 1009
SLOW_CLOSE_WAIT = 10.0  # seconds a cut-off client's buffer may take to drain before we abort
_PONG = '{"op":"pong"}'
_RESET = '{"op":"reset"}'


class _BadFrame(ServiceError):
    code = "bad_frame"


class _UnknownOp(ServiceError):
    code = "unknown_op"


def origin_allowed(services: Services, origin: str | None) -> bool:
    allowed = services.settings.allowed_origins
    return origin is None or not allowed or origin in allowed


async def websocket_endpoint(ws: WebSocket) -> None:
    services: Services = ws.app.state.services
    if not origin_allowed(services, ws.headers.get("origin")):
        await ws.close(code=1008)  # before accept: the handshake fails with 403
        return
    query = ws.query_params
    await ws.accept()
    try:
        services.connections.acquire()  # MAX_CONNECTIONS, shared with SSE and polling
    except ServiceError as exc:  # too_many_connections: said in a frame, then 1013 Try Again Later
        await _refuse(ws, exc, 1013)
        return
    try:
        try:
            principal = await authenticate(services, ws.headers.get("authorization"), query.get("access_token"), query.get("ticket"))
        except ServiceError as exc:
            await _refuse(ws, exc, CLOSE_AUTH)
            return
        client_id = query.get("client_id")
        session = services.session(principal, "ws", client_id[:128] if client_id else None)
        connection = _Connection(ws, session, services, principal)
        metrics.CONNECTIONS.labels(transport="ws").inc()
        try:
            await connection.run(query.get("channels"), query.get("since"))
        finally:
            metrics.CONNECTIONS.labels(transport="ws").dec()
            session.close()
            await session.save_cursor(force=True)
    finally:
        services.connections.release()


# A plain Starlette route: FastAPI's dependency machinery (two exit stacks and its frames, kept
# for the connection's whole life) would cost every idle connection ~4 KB for nothing it uses.
router.routes.append(WebSocketRoute("/v1/ws", websocket_endpoint))


async def _refuse(ws: WebSocket, exc: ServiceError, code: int) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await ws.send_text(orjson.dumps({"op": "error", **exc.body()}).decode())
        await ws.close(code=code, reason=exc.code)


class _Connection:
    """One WebSocket client. Two tasks while open: the ASGI task reads client frames, a pump
    task sends what the session hands over when it is not written directly by the hub. Token
    expiry and a slow-consumer cut-off are timers and callbacks, not tasks: an idle connection
    should cost little memory."""

    def __init__(self, ws: WebSocket, session: Session, services: Services, principal: Principal) -> None:
        self.ws, self.session, self.services, self.principal = ws, session, services, principal
        self.expires_at = principal.exp
        self.writer: DirectWriter | None = ws.scope.get("extensions", {}).get(WS_EXTENSION)
        self._send_lock = asyncio.Lock()
        self._expiry: asyncio.TimerHandle | None = None
        self._closing: asyncio.Task[None] | None = None
        self._main: asyncio.Task[Any] | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._reading = False
        self._aborted = False

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
        await self.send(orjson.dumps({"op": "error", **exc.body()}).decode())

    async def run(self, channels_param: str | None, since: str | None) -> None:
        try:
            channels = parse_channels(channels_param)
            refused = await self.session.open(channels, since)
        except ServiceError as exc:
            await _refuse(self.ws, exc, CLOSE_BAD_REQUEST)
            return
        for exc in refused:
            await self.error(exc)
        for channel in self.session.channels:
            await self.send(orjson.dumps({"op": "subscribed", "channel": channel}).decode())
        self._main = asyncio.current_task()
        writer = self.writer
        if writer is not None:  # the session's direct path: the event's frame, encoded once, to the socket
            self.session.direct = lambda event: writer.write(event.frame)
        # counted once, by the session that cut it off; a reader that is slow (not gone) gets
        # time to reach the close frame behind its full buffer
        self.session.on_cut_off = lambda: self._begin_close(CLOSE_SLOW, "slow_consumer", wait=SLOW_CLOSE_WAIT)
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
        if exc is not None and not isinstance(exc, WebSocketDisconnect):
            log.error("websocket delivery failed", exc_info=exc)
            self._begin_close(1011, "internal_error")

    def _arm_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        delay = max(self.expires_at - time.time(), 0.0)
        self._expiry = asyncio.get_running_loop().call_later(delay, self._expired)

    def _expired(self) -> None:
        if time.time() < self.expires_at:  # refreshed meanwhile
            self._arm_expiry()
            return
        self._begin_close(CLOSE_AUTH, "token_expired",
                          TokenExpired("the token expired; send a fresh one with op refresh before exp"))

    def _begin_close(self, code: int, reason: str, error: ServiceError | None = None, wait: float = 1.0) -> None:
        """Close from a callback (expiry, cut-off, a failed pump); the first reason wins. The pump
        stops first: nothing may follow the close frame."""
        if self._closing is None:
            if self._pump_task is not None:
                self._pump_task.cancel()
            self._closing = asyncio.create_task(self._close(code, reason, wait, error), name="ws-close")

    async def _close(self, code: int, reason: str, wait: float = 1.0, error: ServiceError | None = None) -> None:
        """Close even when the client stopped reading: if its write buffer does not drain within
        `wait`, the connection is dropped (and the reading task ends)."""
        if self.ws.application_state == WebSocketState.DISCONNECTED:
            return
        try:
            if error is not None:
                await asyncio.wait_for(self.error(error), wait)
            await asyncio.wait_for(self.ws.close(code=code, reason=reason), wait)
        except (TimeoutError, OSError, RuntimeError, WebSocketDisconnect) as exc:
            log.info("websocket close %s not delivered (%s); dropping the connection", code, type(exc).__name__)
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
                await send(_RESET)
            for event in batch.events:
                if writer is None or not writer.write(event.frame):
                    await send(event.text)
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
                await self.error(_BadFrame(f"frame is {len(raw)} bytes; the limit is {limit}"))
                self._begin_close(CLOSE_TOO_LARGE, "frame_too_large")
                return
            refused = rate.check() if rate is not None else None
            if refused is not None:  # not handled; persisting (2x the burst in a row): 1008 policy violation
                if rate is not None and rate.persistent:
                    self._begin_close(1008, "rate_limited", refused)
                    return
                await self.error(refused)
                continue
            try:
                await self._handle(raw)
            except ServiceError as exc:
                await self.error(exc)

    async def _handle(self, raw: str | bytes) -> None:
        try:
            frame: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise _BadFrame("frames must be JSON objects") from None
        if not isinstance(frame, dict) or not isinstance(frame.get("op"), str):
            raise _BadFrame('frames must be JSON objects with an "op"')
        op = frame["op"]
        if op == "ping":
            await self.send(_PONG)
        elif op in ("subscribe", "unsubscribe"):
            channel = frame.get("channel")
            if not isinstance(channel, str):
                raise BadChannel('"channel" must be a string')
            check_channel(channel)
            if op == "subscribe":
                await self.session.subscribe(channel)
                await self.send(orjson.dumps({"op": "subscribed", "channel": channel}).decode())
            else:
                self.session.unsubscribe(channel)
                await self.send(orjson.dumps({"op": "unsubscribed", "channel": channel}).decode())
        elif op == "presence":
            channel = frame.get("channel")
            if not isinstance(channel, str):
                raise BadChannel('"channel" must be a string')
            answer = await presence_of(self.services, self.principal, channel)
            await self.send(orjson.dumps({"op": "presence", **answer.model_dump()}).decode())
        elif op == "refresh":
            await self._refresh(frame.get("token"))
        elif op == "ack":
            cursor = frame.get("id")
            if not isinstance(cursor, str):
                raise _BadFrame('"id" must be a cursor string')
            await self.session.ack(cursor)
        else:
            raise _UnknownOp(f"unknown op {str(op)[:32]!r}")

    async def _refresh(self, token: Any) -> None:
        if not isinstance(token, str):
            raise _BadFrame('"token" must be a JWT string')
        principal = await self.services.verifier.verify(token)
        if (principal.user, principal.tenant) != (self.principal.user, self.principal.tenant):
            raise Unauthorized("a refreshed token must carry the same sub and tid")
        self.expires_at = principal.exp
        self.principal = self.session.principal = principal  # new `channels` patterns apply from now
        self._arm_expiry()
        await self.send('{"op":"refreshed"}')



_WS_DOC = """
Open with a WebSocket handshake (`ws://` / `wss://`); a plain GET answers 426.

Query: `access_token` or `ticket` (or an `Authorization` header), `channels=a,b`, `since=<id>`,
`client_id=<id>`. The connection joins `user:<sub>` and `tenant:<tid>` automatically.

**Client → server** (JSON text frames): `{"op":"subscribe","channel":C}`,
`{"op":"unsubscribe","channel":C}`, `{"op":"ping"}`, `{"op":"refresh","token":T}`,
`{"op":"ack","id":I}`, `{"op":"presence","channel":C}`.

**Server → client**: event envelopes `{"id","channel","type","data","ts"[,"snapshot"]}`;
`{"op":"subscribed","channel":C}`, `{"op":"unsubscribed","channel":C}`, `{"op":"pong"}`,
`{"op":"refreshed"}`, `{"op":"presence","channel":C,"users":[{"user_id","connections","since"}]}`, `{"op":"reset"}` (history lost: refetch, then live continues),
`{"op":"error","code","message"[,"channel"]}` with codes `unauthorized`, `token_expired`,
`forbidden`, `bad_channel`, `bad_cursor`, `bad_frame`, `unknown_op`, `too_many_connections`,
`too_many_subscriptions` (with `channel`; the connection stays), `rate_limited` (with
`retry_after`; the frame was not handled).

**Close codes**: 4001 token missing/invalid/expired, 4400 bad request, 4008 slow consumer
(resume with `since`), 1009 frame too large, 1008 client frames over WS_MESSAGES_PER_SECOND
(persistently), 1013 the process is at MAX_CONNECTIONS (try again later), 1012 the process is
draining (reconnect: another process resumes you); an `Origin` not in `CORS_ORIGINS` fails the
handshake with 403. The whole message set: `/asyncapi.yaml`.
"""


@router.get("/v1/ws", tags=["transports"], summary="WebSocket endpoint (upgrade required)", description=_WS_DOC,
            status_code=426, responses={426: {"description": "Not a WebSocket handshake.", "content": {
                "application/json": {"example": {"code": "upgrade_required", "message": "open /v1/ws with a WebSocket handshake"}}}}})
async def websocket_documentation() -> JSONResponse:
    return JSONResponse({"code": "upgrade_required", "message": "open /v1/ws with a WebSocket handshake"},
                        status_code=426, headers={"Upgrade": "websocket"})
