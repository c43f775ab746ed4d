"""uvicorn's protocols plus one ASGI extension each: write an event, encoded once, straight to
the socket.

Fan-out sends the same event to thousands of connections. Through ASGI each copy costs a task
wake-up, Starlette's and uvicorn's send chain and a fresh framing; the benchmark's profile put
that at two thirds of a delivery. An event's WebSocket frame (server frames are unmasked,
compression is off) and its Server-Sent Events text are the same bytes for every connection, so
the hub's delivery writes them here, synchronously. A writer says when it cannot (the connection
is closing, or its write buffer is over the high-water mark): the transport then falls back to
the ASGI path, which waits for the buffer to drain, so a slow reader still cannot grow our memory.

`python -m app serve` selects these protocols when `incompatibility()` finds what they read in the
installed uvicorn (pyproject.toml bounds its version too); under any other server, or with an
uvicorn that changed, the extensions are absent and the transports simply use ASGI. Which path a
process uses is logged at start-up and exported as `realtime_write_path`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from abc import ABC, abstractmethod

import uvicorn
from uvicorn._types import ASGISendEvent
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

from app import metrics

logger = logging.getLogger(__name__)

WS_EXTENSION = "forge.websocket.direct"
HTTP_EXTENSION = "forge.http.direct"

# What the writers below read and call on uvicorn's objects (private API, hence the check).
_USES: dict[type, tuple[str, ...]] = {
    WebSocketsSansIOProtocol: ("handshake_complete", "close_sent", "disconnected", "writable", "transport", "conn",
                               "response", "request", "scope"),
    RequestResponseCycle: ("response_started", "response_complete", "chunked_encoding", "disconnected", "flow",
                           "transport"),
    HttpToolsProtocol: ("cycle",),
    FlowControl: ("write_paused",),
}
_HOOKS: dict[type, tuple[str, ...]] = {
    WebSocketsSansIOProtocol: ("handle_connect", "send"),
    HttpToolsProtocol: ("on_headers_complete",),
}


def incompatibility() -> str | None:
    """Why the direct writers cannot be trusted with the installed uvicorn, or None: every method
    they override exists and every attribute they read is assigned in its source."""
    for cls, hooks in _HOOKS.items():
        for name in hooks:
            if not callable(getattr(cls, name, None)):
                return f"uvicorn {uvicorn.__version__}: {cls.__name__}.{name} is gone"
    for cls, names in _USES.items():
        source = inspect.getsource(cls)
        for name in names:
            if not re.search(rf"self\.{name}\b\s*(:[^=]*)?=", source):
                return f"uvicorn {uvicorn.__version__}: {cls.__name__} no longer sets {name}"
    return None


def record_write_path(direct: bool, why: str) -> None:
    """Log and export which way live events reach sockets in this process."""
    path = "direct" if direct else "asgi"
    for transport in ("ws", "sse"):
        metrics.WRITE_PATH.labels(transport=transport, path=path).set(1)
        metrics.WRITE_PATH.labels(transport=transport, path="asgi" if direct else "direct").set(0)
    if direct:
        logger.info("write path: direct (%s)", why)
    else:
        logger.warning("write path: asgi (%s)", why)


class HeldWrites:
    """While the hub dispatches one batch of events, the frames for each socket are held and then
    written as one: under load a batch holds many events of the same channels, and a `send()` per
    frame per socket was the biggest single cost of a delivery (a quarter of the loop at 14,000
    connections). Outside a dispatch (pings, the pump's writes) nothing is held. Nothing awaits
    between `hold` and `release`, so no connection changes state in between; a transport closed
    by then is skipped (what it would have been sent is discarded with it anyway)."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held: dict[asyncio.WriteTransport, list[bytes]] | None = None

    def hold(self) -> None:
        self._held = {}

    def release(self) -> None:
        held, self._held = self._held, None
        for transport, frames in (held or {}).items():
            if not transport.is_closing():
                transport.write(frames[0] if len(frames) == 1 else b"".join(frames))

    def write(self, transport: asyncio.WriteTransport, data: bytes) -> None:
        held = self._held
        if held is None:
            transport.write(data)
        elif transport in held:
            held[transport].append(data)
        else:
            held[transport] = [data]


HELD = HeldWrites()  # one per process: the hub holds it around each dispatch (app.main)


class _KeptAlive(ABC):
    """A direct writer's keep-alive: the wheel (app.keepalive) calls `keepalive` once per interval,
    and it writes only if nothing was written since the last turn, as any frame keeps proxies and
    the kernel's view of the peer as fresh as a ping."""

    __slots__ = ("_wrote",)

    def __init__(self) -> None:
        self._wrote = False  # since the last keep-alive turn; `write` sets it

    @abstractmethod
    def write(self, data: bytes) -> bool: ...

    def keepalive(self, ping: bytes) -> None:
        if not self._wrote:
            self.write(ping)
        self._wrote = False


class DirectWriter(_KeptAlive):
    """Writes whole frames to one connection's transport, when the connection can take them."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: WebSocketsSansIOProtocol) -> None:
        super().__init__()
        self._protocol = protocol

    def write(self, frame: bytes) -> bool:
        """Write `frame` now; False (nothing written) if the socket is closing or backed up."""
        p = self._protocol
        if (not p.handshake_complete or p.close_sent or p.disconnected or not p.writable.is_set()
                or p.transport.is_closing()):  # the client's close frame came: nothing written now is read
            return False
        HELD.write(p.transport, frame)
        self._wrote = True
        return True

    def abort(self) -> None:
        """Drop the connection now, buffered data and all: for a client that stopped reading."""
        self._protocol.transport.abort()


class DirectWebSocketProtocol(WebSocketsSansIOProtocol):
    """Offers `scope["extensions"]["forge.websocket.direct"]`: a DirectWriter for the connection."""

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        # the ASGI task is created but has not run yet, so it sees the extension in its scope
        # (with permessage-deflate negotiated, events take the ASGI path and are compressed)
        if self.response.status_code == 101 and not self.conn.extensions:
            # uvicorn types an extension's value as a dict (asgiref's shape); this one is an object
            self.scope["extensions"][WS_EXTENSION] = DirectWriter(self)  # type: ignore[assignment]

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # the handshake's request and response (headers and all) are not read again: an idle
            # connection should not keep them (~3 KB each)
            del self.request, self.response


class ChunkWriter(_KeptAlive):
    """Writes body chunks of one streaming HTTP response (chunked transfer encoding) directly,
    once the application has started it and until it ends."""

    __slots__ = ("_cycle",)

    def __init__(self, cycle: RequestResponseCycle) -> None:
        super().__init__()
        self._cycle = cycle

    def write(self, body: bytes) -> bool:
        """Write `body` as one chunk now; False (nothing written) when the response is not
        streaming yet or any more, or the connection is backed up or gone."""
        c = self._cycle
        if (not c.response_started or c.response_complete or not c.chunked_encoding or c.disconnected
                or c.flow.write_paused or not body):
            return False
        HELD.write(c.transport, b"%x\r\n%b\r\n" % (len(body), body))
        self._wrote = True
        return True


class DirectHttpProtocol(HttpToolsProtocol):
    """Offers `scope["extensions"]["forge.http.direct"]`: a ChunkWriter for the request's response."""

    def on_headers_complete(self) -> None:
        cycle = self.cycle
        super().on_headers_complete()
        if self.cycle is not cycle and self.cycle is not None:  # a new request (not an upgrade)
            # its ASGI task is created (or queued behind a pipelined one) but has not run yet
            # an extension's value typed as a dict (asgiref's shape), as above; this one is an object
            self.cycle.scope.setdefault("extensions", {})[HTTP_EXTENSION] = ChunkWriter(self.cycle)  # type: ignore[assignment]
