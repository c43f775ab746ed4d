"""WebSocket: JSON text frames both ways, ops per CONTRACT.md section 5.

Close codes: 4001 authentication (bad or expired token), 4400 bad request (bad cursor),
4008 slow consumer (resume with your cursor), 1009 frame too large.
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
from starlette.websockets import WebSocketDisconnect, WebSocketState

from app import metrics
from app.api.presence import presence_of
from app.auth import Principal
from app.channels import check_channel, parse_channels
from app.core.session import Session
from app.deps import Services, authenticate
from app.errors import BadChannel, ServiceError, TokenExpired, Unauthorized

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


@router.websocket("/v1/ws")
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


async def _refuse(ws: WebSocket, exc: ServiceError, code: int) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await ws.send_text(orjson.dumps({"op": "error", **exc.body()}).decode())
        await ws.close(code=code, reason=exc.code)


class _Connection:
    def __init__(self, ws: WebSocket, session: Session, services: Services, principal: Principal) -> None:
        self.ws, self.session, self.services, self.principal = ws, session, services, principal
        self.expires_at = principal.exp
        self._send_lock = asyncio.Lock()
        self._token_changed = asyncio.Event()

    async def send(self, text: str) -> None:
        async with self._send_lock:
            await self._send_text(text)

    async def _send_text(self, text: str) -> None:
        """`ws.send_text(text)` minus Starlette's two per-frame wrappers once connected (the hot path
        of every delivery): the same ASGI message, the same state change and error on a lost socket."""
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
        tasks = {
            asyncio.create_task(self._pump(), name="ws-pump"): None,
            asyncio.create_task(self._read(), name="ws-read"): None,
            asyncio.create_task(self._expiry(), name="ws-expiry"): CLOSE_AUTH,
            asyncio.create_task(self.session.cut_off.wait(), name="ws-cutoff"): CLOSE_SLOW,
        }
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        finished = done.pop()
        close_code = tasks[finished]
        if finished.exception() is not None and not isinstance(finished.exception(), WebSocketDisconnect):
            log.error("websocket connection failed", exc_info=finished.exception())
        if close_code == CLOSE_SLOW:  # counted once, by the session that cut it off
            # its write buffer is full: give a reader that is slow (not gone) time to reach the close
            await self._close(CLOSE_SLOW, "slow_consumer", wait=SLOW_CLOSE_WAIT)
        elif close_code == CLOSE_AUTH:
            with contextlib.suppress(Exception):
                expired = TokenExpired("the token expired; send a fresh one with op refresh before exp")
                await asyncio.wait_for(self.error(expired), 1.0)
            await self._close(CLOSE_AUTH, "token_expired")

    async def _close(self, code: int, reason: str, wait: float = 1.0) -> None:
        """Close even when the client stopped reading (the write buffer may never drain)."""
        if self.ws.application_state == WebSocketState.DISCONNECTED:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(code=code, reason=reason), wait)

    async def _pump(self) -> None:
        session, send = self.session, self.send
        while True:
            batch = await session.next_batch()
            if batch.reset:
                await send(_RESET)
            for event in batch.events:
                await send(event.text)
            await session.save_cursor()

    async def _expiry(self) -> None:
        while True:
            self._token_changed.clear()
            remaining = self.expires_at - time.time()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._token_changed.wait(), remaining)

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
                await self._close(CLOSE_TOO_LARGE, "frame_too_large")
                return
            refused = rate.check() if rate is not None else None
            if refused is not None:  # not handled; persisting (2x the burst in a row): 1008 policy violation
                await self.error(refused)
                if rate is not None and rate.persistent:
                    await self._close(1008, "rate_limited")
                    return
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
        self._token_changed.set()
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
`forbidden`, `bad_channel`, `bad_cursor`, `bad_frame`, `unknown_op`.

**Close codes**: 4001 token missing/invalid/expired, 4400 bad request, 4008 slow consumer
(resume with `since`), 1009 frame too large; an `Origin` not in `CORS_ORIGINS` fails the
handshake with 403.
"""


@router.get("/v1/ws", tags=["transports"], summary="WebSocket endpoint (upgrade required)", description=_WS_DOC,
            status_code=426, responses={426: {"description": "Not a WebSocket handshake.", "content": {
                "application/json": {"example": {"code": "upgrade_required", "message": "open /v1/ws with a WebSocket handshake"}}}}})
async def websocket_documentation() -> JSONResponse:
    return JSONResponse({"code": "upgrade_required", "message": "open /v1/ws with a WebSocket handshake"},
                        status_code=426, headers={"Upgrade": "websocket"})
