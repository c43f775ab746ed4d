"""WS_COMPRESSION: permessage-deflate on `python -m app serve` (README: off by default; when a
client negotiates it, events take the ASGI path and are compressed).

The client here records, for every data frame it receives, whether the frame came compressed
(RSV1 set, RFC 7692). An uncompressed frame is legal on a deflate connection, so a client would
decode an event written past the extension just fine; only the RSV1 bit shows which path it took.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import httpx
import pytest
from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode

from tests.conftest import LiveServer, service_token, token
from tests.live_support import WAIT, WS


class _Recording(Extension):
    """permessage-deflate as negotiated, noting the RSV1 bit of each received data frame."""

    def __init__(self, inner: Extension, seen: list[bool]) -> None:
        self.inner, self.seen, self.name = inner, seen, inner.name

    def decode(self, frame: Frame, *, max_size: int | None = None) -> Frame:
        if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
            self.seen.append(frame.rsv1)
        return self.inner.decode(frame, max_size=max_size)

    def encode(self, frame: Frame) -> Frame:
        return self.inner.encode(frame)


class RecordingDeflate(ClientPerMessageDeflateFactory):
    """Offers permessage-deflate like websockets' default client; `compressed` lists, per received
    data frame, whether it was compressed (empty when the server did not negotiate the extension)."""

    def __init__(self) -> None:
        super().__init__()
        self.compressed: list[bool] = []
        self.negotiated = False

    def process_response_params(self, params: Sequence[Any], accepted_extensions: Sequence[Extension]) -> Extension:
        self.negotiated = True
        return _Recording(super().process_response_params(params, accepted_extensions), self.compressed)


@pytest.fixture
async def http() -> Any:
    async with httpx.AsyncClient(timeout=httpx.Timeout(WAIT * 2, connect=5.0), trust_env=False) as client:
        yield client


async def publish_some(http: httpx.AsyncClient, server: LiveServer) -> list[tuple[str, dict]]:
    """Small events and a large, very compressible one, on user:u1."""
    sent = []
    for data in [{"n": n} for n in range(10)] + [{"big": "progress " * 4000}, {"n": "last"}]:
        body = {"tenant": "t1", "channel": "user:u1", "type": "test.event", "data": data}
        response = await http.post(f"{server.url}/v1/events", json=body, headers={"Authorization": f"Bearer {service_token()}"})
        assert response.status_code == 202, response.text
        sent.append((response.json()["id"], data))
    return sent


def extensions_header(ws: WS) -> str:
    return ws.conn.response.headers.get("Sec-WebSocket-Extensions", "") if ws.conn.response else ""


def offering(*extensions: RecordingDeflate) -> dict[str, Any]:
    """websockets' connect() options: offer exactly these extensions (none: no compression at all)."""
    return {"compression": None, "extensions": list(extensions) or None}  # [] would send an empty header


async def test_with_ws_compression_events_come_compressed(live_servers: Callable[..., LiveServer],
                                                          http: httpx.AsyncClient) -> None:
    server = live_servers(redis=False, WS_COMPRESSION="true")
    deflate = RecordingDeflate()
    async with await WS.connect(server.ws_url, token("u1", "t1"), connect_kwargs=offering(deflate)) as ws, \
            await WS.connect(server.ws_url, token("u1", "t1"), connect_kwargs=offering()) as plain:
        assert deflate.negotiated and "permessage-deflate" in extensions_header(ws), extensions_header(ws)
        assert extensions_header(plain) == ""  # a client that offers nothing gets nothing
        for client in (ws, plain):
            await client.subscribed({"user:u1", "tenant:t1"})
        control_frames = len(deflate.compressed)

        sent = await publish_some(http, server)
        for client in (ws, plain):  # both get every event intact, in order
            received = await client.events(len(sent))
            assert [(e["id"], e["data"]) for e in received] == sent
        # every event frame to the deflate client was compressed: none was written past the extension
        assert len(deflate.compressed) == control_frames + len(sent)
        assert all(deflate.compressed), deflate.compressed


async def test_without_ws_compression_nothing_is_negotiated(live_servers: Callable[..., LiveServer],
                                                            http: httpx.AsyncClient) -> None:
    server = live_servers(redis=False)  # WS_COMPRESSION defaults to false
    deflate = RecordingDeflate()
    async with await WS.connect(server.ws_url, token("u1", "t1"), connect_kwargs=offering(deflate)) as ws:
        assert not deflate.negotiated and extensions_header(ws) == ""
        await ws.subscribed({"user:u1", "tenant:t1"})
        sent = await publish_some(http, server)
        assert [(e["id"], e["data"]) for e in await ws.events(len(sent))] == sent
        assert deflate.compressed == []  # no extension: no frame went through it
