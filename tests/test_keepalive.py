"""One timer pings every connection once per interval, spread over the interval's ticks."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from app.keepalive import Keepalive
from tests.conftest import service_token, token
from tests.live_support import WAIT


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
# Each connection is read by a task of its own from the moment it opens, and every frame is kept
# with the time its last byte was read. A test waits for what it expects (within WAIT) rather than
# reading for a fixed window, so a slow machine makes it slower, never wrong.

INTERVAL = 1.0  # the servers' WS_PING_SECONDS and SSE_PING_SECONDS here


@dataclass(frozen=True)
class Frame:
    at: float  # the loop's time when the frame's last byte was read
    ping: bool
    body: bytes  # a WebSocket frame's payload; an SSE event's (or comment's) lines

    def event(self) -> dict[str, Any] | None:
        """The envelope a delivered frame carries (None for a ping, or a frame without one)."""
        if self.ping:
            return None
        if self.body.startswith(b"{"):
            return json.loads(self.body)
        data = [line[6:] for line in self.body.split(b"\n") if line.startswith(b"data: ")]
        return json.loads(data[0]) if data and data[0].startswith(b"{") else None


class _WebSocketFrames:
    """A server's frames: unmasked, so a header is 2 bytes and 2 or 8 of extended length."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[tuple[bool, bytes]]:
        self._buf += data
        frames = []
        while len(self._buf) >= 2:
            opcode, length, start = self._buf[0] & 0x0F, self._buf[1] & 0x7F, 2
            assert not self._buf[1] & 0x80, "a server's frame is never masked"
            if length >= 126:
                start = 4 if length == 126 else 10
                if len(self._buf) < start:
                    break
                length = int.from_bytes(self._buf[2:start], "big")
            if len(self._buf) < start + length:
                break
            # a ping of the wheel's has no payload (WS_PING, b"\x89\x00"); uvicorn's carry 4 bytes
            frames.append((opcode == 0x9, self._buf[start:start + length]))
            self._buf = self._buf[start + length:]
        return frames


class _EventStreamFrames:
    """An SSE response's body after its head: chunked transfer encoding, then events (or comments)
    that each end with a blank line."""

    def __init__(self) -> None:
        self._buf = b""
        self._body = b""

    def feed(self, data: bytes) -> list[tuple[bool, bytes]]:
        self._buf += data
        while (eol := self._buf.find(b"\r\n")) >= 0:
            size = int(self._buf[:eol].split(b";")[0], 16)
            if len(self._buf) < eol + 2 + size + 2:
                break
            self._body += self._buf[eol + 2:eol + 2 + size]
            self._buf = self._buf[eol + 2 + size + 2:]
        *events, self._body = self._body.replace(b"\r\n", b"\n").split(b"\n\n")
        # the wheel's comment is exactly SSE_PING (": ping\n\n"); sse-starlette's is ": ping - <time>"
        return [(event == b": ping", event) for event in events]


class _Connection:
    """Reads one connection's frames as they come, each stamped with the time it arrived."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 frames: _WebSocketFrames | _EventStreamFrames) -> None:
        self.frames: list[Frame] = []
        self.raw = b""
        self._writer = writer
        self._arrived = asyncio.Event()
        self._closed = False
        self._task = asyncio.create_task(self._read(reader, frames))

    async def _read(self, reader: asyncio.StreamReader, frames: _WebSocketFrames | _EventStreamFrames) -> None:
        loop = asyncio.get_running_loop()
        try:
            while chunk := await reader.read(65536):
                at = loop.time()
                self.raw += chunk
                self.frames += [Frame(at, ping, body) for ping, body in frames.feed(chunk)]
                self._arrived.set()
        finally:
            self._closed = True
            self._arrived.set()

    def pings(self) -> int:
        return sum(frame.ping for frame in self.frames)

    async def until(self, done: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        """Wait until `done()`, which the frames read so far decide; fail after `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not done():
            if self._closed:  # the server closed it, or a frame did not parse (the task's error)
                error = self._task.exception() if self._task.done() and not self._task.cancelled() else None
                raise AssertionError(f"the connection closed before {what}: {self.raw!r}") from error
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), max(deadline - loop.time(), 0))
            except TimeoutError:
                raise AssertionError(f"{what} not within {timeout} s: {self.raw!r}") from None

    async def close(self) -> None:
        self._writer.close()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def _websocket(port: int) -> _Connection:
    """A WebSocket handshake by hand, so the test reads the server's frames byte for byte."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {token()}\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    assert head.startswith(b"HTTP/1.1 101"), head
    assert b"sec-websocket-extensions" not in head.lower(), head  # no compression: frames as written
    return _Connection(reader, writer, _WebSocketFrames())


async def _event_stream(port: int) -> _Connection:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /v1/sse HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token()}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"transfer-encoding: chunked" in head.lower(), head
    return _Connection(reader, writer, _EventStreamFrames())


async def test_websocket_and_sse_pings_come_from_the_wheel(live_servers: Any) -> None:
    server = live_servers(redis=False, WS_PING_SECONDS=str(INTERVAL), SSE_PING_SECONDS=str(INTERVAL))

    ws = await _websocket(server.port)
    try:
        await ws.until(lambda: ws.pings() >= 2, "two WebSocket pings")
    finally:
        await ws.close()
    # server frames are unmasked: a ping with no payload is exactly these two bytes (uvicorn's carry 4)
    assert all(frame.body == b"" for frame in ws.frames if frame.ping), ws.frames
    assert b"\x89\x04" not in ws.raw, ws.raw

    sse = await _event_stream(server.port)
    try:
        await sse.until(lambda: sse.pings() >= 2, "two SSE pings")
    finally:
        await sse.close()
    assert b": ping - " not in sse.raw, sse.raw  # sse-starlette's own ping task did not run


PUBLISHES = 20  # more than 10, five an interval
# A turn the server runs late (its loop busy or the process waiting for a core) may be the one that
# skips a connection written to just before it, and the next turn, on time, then pings that much
# less than an interval after the write: a ping this much sooner is still the server keeping its word.
LATE = INTERVAL / 4


def _busy(connection: _Connection) -> list[tuple[int, int]]:
    """(index in the connection's frames, n) of each test.busy event delivered to it."""
    return [(i, event["data"]["n"]) for i, frame in enumerate(connection.frames)
            if (event := frame.event()) is not None and event.get("type") == "test.busy"]


def _pings_after_deliveries(connection: _Connection, published: dict[int, float]) -> list[tuple[int, float]]:
    """(n, seconds) for each ping that came after an event: n is the latest-published event
    delivered before the ping, seconds how long after its publishing the ping was read."""
    found, latest = [], None
    busy = dict(_busy(connection))
    for i, frame in enumerate(connection.frames):
        if i in busy:
            latest = max(busy[i], latest if latest is not None else -1)
        elif frame.ping and latest is not None:
            found.append((latest, frame.at - published[latest]))
    return found


async def test_a_connection_written_to_since_its_last_turn_is_not_pinged(live_servers: Any) -> None:
    """Any frame does a ping's work; under traffic a ping per connection per interval was a socket
    write of its own, as costly as a delivery. Idle again, the pings come back.

    Checked as timing, not as "no ping while publishing" (which held only while the publisher kept
    up its pace): a ping comes only after a whole turn with no write, so never less than an
    interval after a delivered frame. The frame's time is taken as when its event was published
    (before the server could write it), the ping's as when it was read (after the server wrote
    it): a loaded machine only widens the gap, so a ping sooner than an interval after a delivery
    (less LATE) went to a connection the server had written to since its last turn."""
    server = live_servers(redis=False, WS_PING_SECONDS=str(INTERVAL), SSE_PING_SECONDS=str(INTERVAL))
    ws, sse = await _websocket(server.port), await _event_stream(server.port)  # the SSE head: subscribed
    loop = asyncio.get_running_loop()
    published: dict[int, float] = {}  # n -> the loop's time just before its event was published
    try:
        await ws.until(lambda: any(not frame.ping for frame in ws.frames), "the subscribed frames")
        async with httpx.AsyncClient(trust_env=False, timeout=WAIT) as http:
            for n in range(PUBLISHES):
                body = {"tenant": "t1", "channel": "user:u1", "type": "test.busy", "data": {"n": n}}
                published[n] = loop.time()
                response = await http.post(f"{server.url}/v1/events", json=body,
                                           headers={"Authorization": f"Bearer {service_token()}"})
                assert response.status_code == 202, response.text
                await asyncio.sleep(INTERVAL / 5)  # five events an interval
        for c in (ws, sse):  # each event reaches both connections, once
            await c.until(lambda c=c: len(_busy(c)) >= PUBLISHES, f"all {PUBLISHES} events")
            assert sorted(n for _, n in _busy(c)) == list(range(PUBLISHES)), c.raw
        # idle again, the pings come back
        for c in (ws, sse):
            await c.until(lambda c=c: sum(f.ping for f in c.frames[_busy(c)[-1][0]:]) >= 2, "two pings after the last event")
    finally:
        await asyncio.gather(ws.close(), sse.close())

    for c in (ws, sse):
        soon = [(n, round(seconds, 3)) for n, seconds in _pings_after_deliveries(c, published) if seconds < INTERVAL - LATE]
        assert not soon, f"pinged this soon after event n was published, (n, s): {soon}; {c.raw!r}"
