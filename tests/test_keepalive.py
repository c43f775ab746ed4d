"""One timer pings every connection once per interval, spread over the interval's ticks."""

from __future__ import annotations

import asyncio
import base64
import os
from collections import Counter
from typing import Any

import httpx
import pytest

from app.keepalive import Keepalive
from tests.conftest import service_token, token


def test_each_connection_is_pinged_once_per_interval_and_the_slots_are_even() -> None:
    wheel = Keepalive(interval=10, tick=1)
    pinged: Counter[int] = Counter()
    handles = [wheel.add(lambda i=i: pinged.update([i])) for i in range(1000)]
    sizes = []
    for tick in range(10):
        before = sum(pinged.values())
        wheel.sweep(tick)
        sizes.append(sum(pinged.values()) - before)
    assert pinged == Counter(range(1000))  # everyone once, nobody twice
    assert max(sizes) - min(sizes) <= 1, sizes  # the work is spread over the interval
    for h in handles[:500]:
        wheel.discard(h)
    pinged.clear()
    for tick in range(10):
        wheel.sweep(tick)
    assert pinged == Counter(range(500, 1000))
    assert len(wheel) == 500


def test_a_ping_that_raises_is_dropped_and_the_others_still_get_theirs() -> None:
    wheel = Keepalive(interval=1, tick=1)
    got: list[int] = []

    def broken() -> None:
        raise RuntimeError("socket gone")

    wheel.add(lambda: got.append(1))
    wheel.add(broken)
    wheel.add(lambda: got.append(3))
    wheel.sweep(0)
    assert got == [1, 3] and len(wheel) == 2
    wheel.sweep(0)
    assert got == [1, 3, 1, 3]


async def test_the_running_wheel_pings_on_its_own() -> None:
    wheel = Keepalive(interval=0.2, tick=0.05)
    pinged = asyncio.Event()
    wheel.add(pinged.set)
    await wheel.start()
    try:
        await asyncio.wait_for(pinged.wait(), 2)
    finally:
        await wheel.stop()


@pytest.mark.parametrize("interval", [0, -1])
async def test_an_interval_of_zero_never_starts_a_timer(interval: float) -> None:
    wheel = Keepalive(interval=interval)
    await wheel.start()
    assert wheel._task is None
    await wheel.stop()


# --- through real sockets: the wheel's frames, not a per-connection timer's ----------------------


async def _read_for(reader: asyncio.StreamReader, seconds: float) -> bytes:
    got = b""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while (left := end - loop.time()) > 0:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), left)
        except TimeoutError:
            break
        if not chunk:
            break
        got += chunk
    return got


async def _raw_websocket(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket handshake by hand, so the test reads the server's frames byte for byte."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {token()}\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def test_websocket_and_sse_pings_come_from_the_wheel(live_servers: Any) -> None:
    server = live_servers(redis=False, WS_PING_SECONDS="1", SSE_PING_SECONDS="1")
    auth = f"Authorization: Bearer {token()}\r\n"

    reader, writer = await _raw_websocket(server.port)
    frames = await _read_for(reader, 3.5)
    writer.close()
    # server frames are unmasked: a ping with no payload is exactly these two bytes (uvicorn's carry 4)
    assert frames.count(b"\x89\x00") >= 2, frames
    assert b"\x89\x04" not in frames, frames

    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(f"GET /v1/sse HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n".encode())
    stream = await _read_for(reader, 3.5)
    writer.close()
    assert stream.startswith(b"HTTP/1.1 200"), stream[:200]
    assert stream.count(b": ping\n\n") >= 2, stream
    assert b": ping - " not in stream, stream  # sse-starlette's own ping task did not run


async def test_a_connection_written_to_since_its_last_turn_is_not_pinged(live_servers: Any) -> None:
    """Any frame does a ping's work; under traffic a ping per connection per interval was a socket
    write of its own, as costly as a delivery. Idle again, the pings come back."""
    server = live_servers(redis=False, WS_PING_SECONDS="1", SSE_PING_SECONDS="1")
    auth = f"Authorization: Bearer {token()}\r\n"
    ws_reader, ws_writer = await _raw_websocket(server.port)
    sse_reader, sse_writer = await asyncio.open_connection("127.0.0.1", server.port)
    sse_writer.write(f"GET /v1/sse HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n".encode())
    assert (await asyncio.wait_for(sse_reader.readuntil(b"\r\n\r\n"), 10)).startswith(b"HTTP/1.1 200")
    await _read_for(ws_reader, 1.5)  # the subscribed frames, and a first turn
    await _read_for(sse_reader, 0.1)

    async def publish_for(seconds: float) -> int:
        sent = 0
        async with httpx.AsyncClient(trust_env=False) as http:
            end = asyncio.get_running_loop().time() + seconds
            while asyncio.get_running_loop().time() < end:
                body = {"tenant": "t1", "channel": "user:u1", "type": "test.busy", "data": {"n": sent}}
                response = await http.post(f"{server.url}/v1/events", json=body,
                                           headers={"Authorization": f"Bearer {service_token()}"})
                assert response.status_code == 202, response.text
                sent += 1
                await asyncio.sleep(0.2)  # five events per interval
        return sent

    busy_ws, busy_sse, sent = await asyncio.gather(_read_for(ws_reader, 4.6), _read_for(sse_reader, 4.6), publish_for(4))
    assert busy_ws.count(b"\"type\":\"test.busy\"") == busy_sse.count(b"\"type\":\"test.busy\"") == sent > 10
    assert b"\x89\x00" not in busy_ws  # a ping is these two bytes, which no text frame of JSON holds
    assert b": ping\n\n" not in busy_sse

    idle_ws, idle_sse = await asyncio.gather(_read_for(ws_reader, 3.5), _read_for(sse_reader, 3.5))
    ws_writer.close()
    sse_writer.close()
    assert idle_ws.count(b"\x89\x00") >= 2, idle_ws
    assert idle_sse.count(b": ping\n\n") >= 2, idle_sse
