"""uvicorn's sans-I/O WebSocket protocol, plus one ASGI extension: write a pre-framed message
straight to the socket.

Fan-out sends the same event to thousands of sockets. Through ASGI each copy costs a task
wake-up, Starlette's and uvicorn's send chain and a fresh frame encoding; the benchmark's
profile put that at two thirds of a delivery. The frame of an event is the same bytes for every
socket (server frames are unmasked, compression is off), so the hub encodes it once and writes it
here. The extension says when it cannot (the socket is closing, or its write buffer is over the
high-water mark): the caller then falls back to the ASGI path, which waits for the buffer to
drain, so a slow reader still cannot grow our memory.

`python -m app serve` selects this protocol; under any other server the extension is absent and
the transport simply uses ASGI.
"""

from __future__ import annotations

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

EXTENSION = "forge.websocket.direct"


class DirectWriter:
    """Writes whole frames to one connection's transport, when the connection can take them."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: WebSocketsSansIOProtocol) -> None:
        self._protocol = protocol

    def write(self, frame: bytes) -> bool:
        """Write `frame` now; False (nothing written) if the socket is closing or backed up."""
        p = self._protocol
        if not p.handshake_complete or p.close_sent or p.disconnected or not p.writable.is_set():
            return False
        p.transport.write(frame)
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
            self.scope["extensions"][EXTENSION] = DirectWriter(self)  # type: ignore[index]

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # the handshake's request and response (headers and all) are not read again: an idle
            # connection should not keep them (~3 KB each)
            del self.request, self.response
