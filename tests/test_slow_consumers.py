"""Slow consumers end to end, through real sockets whose client stops reading (issue 11's test gaps).

The clients here are raw sockets with a small receive buffer, so TCP pushes back on the server as
soon as the client stops reading: the server writes events straight to the socket until its write
buffer is over the high-water mark, then queues them; past MAX_BACKLOG queued events the client is
cut off. A WebSocket client then gets close code 4008 behind the data it was sent (if it reads
again within the server's grace), an SSE client an `event: error` with code `slow_consumer` before
the stream ends; an SSE client that accepts nothing for SSE_SEND_TIMEOUT has its stream ended.

The framing is done by the protocol libraries' sans-I/O parts (websockets' ClientProtocol, h11),
over sockets the tests read only when they choose to. Every wait is for a condition with a
generous deadline: nothing here asserts on timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import h11
import httpx
import pytest
from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.uri import parse_uri

from tests.conftest import LiveServer, auth, eventually, service_token, token

WAIT = 15.0  # the longest one condition may take before the test fails (never a timing assertion)
RCVBUF = 4096  # the client's socket receive buffer (the kernel doubles it): TCP pushes back at once
PAD = "x" * 32768  # events big enough that a hundred or so fill every buffer on the way


def id_key(event_id: str) -> tuple[int, int]:
    ms, seq = event_id.split("-")
    return int(ms), int(seq)


async def metric(http: httpx.AsyncClient, server: LiveServer, sample: str) -> float:
    """One Prometheus sample, e.g. 'realtime_connections{transport="sse"}' (0 when absent)."""
    text = (await http.get(f"{server.url}/metrics")).text
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def raw_socket(server: LiveServer, rcvbuf: int | None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connecting: it sets the window
    sock.setblocking(False)
    await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port)), WAIT)
    return sock


async def recv(sock: socket.socket) -> bytes:
    try:
        return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 65536), WAIT)
    except TimeoutError:
        raise AssertionError(f"nothing received within {WAIT}s") from None
    except ConnectionResetError:
        return b""


class RawWebSocket:
    """A WebSocket client that reads its socket only when asked to."""

    def __init__(self, sock: socket.socket, protocol: ClientProtocol) -> None:
        self.sock, self.protocol = sock, protocol
        self.texts: list[str] = []  # text frames received and not taken yet
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.eof = False

    @classmethod
    async def open(cls, server: LiveServer, tok: str, rcvbuf: int | None = RCVBUF, **params: str) -> RawWebSocket:
        sock = await raw_socket(server, rcvbuf)
        protocol = ClientProtocol(parse_uri(f"{server.ws_url}/v1/ws?{urlencode({'access_token': tok, **params})}"))
        protocol.send_request(protocol.connect())
        client = cls(sock, protocol)
        await client._flush()
        while protocol.handshake_exc is None and protocol.state.name == "CONNECTING":
            await client._read_some()
        assert protocol.handshake_exc is None, protocol.handshake_exc
        return client

    async def _flush(self) -> None:
        for data in self.protocol.data_to_send():  # handshake, pongs, the close reply
            if data:
                with contextlib.suppress(OSError):  # the server is gone already
                    await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def _read_some(self) -> None:
        data = await recv(self.sock)
        if data:
            self.protocol.receive_data(data)
        else:
            self.eof = True
            self.protocol.receive_eof()
        for event in self.protocol.events_received():
            if getattr(event, "opcode", None) is Opcode.TEXT:
                self.texts.append(event.data.decode())
            elif getattr(event, "opcode", None) is Opcode.CLOSE and self.protocol.close_rcvd is not None:
                self.close_code, self.close_reason = self.protocol.close_rcvd.code, self.protocol.close_rcvd.reason
        await self._flush()

    async def next_json(self) -> dict:
        while not self.texts:
            assert not self.eof, "the connection ended"
            await self._read_some()
        return json.loads(self.texts.pop(0))

    async def read_until_closed(self) -> list[dict]:
        """Everything up to the end of the connection (the close code is in `close_code`)."""
        while not self.eof:
            await self._read_some()
        frames, self.texts = [json.loads(text) for text in self.texts], []
        return frames

    def close(self) -> None:
        self.sock.close()


class RawSSE:
    """An SSE client (HTTP/1.1 over a raw socket, h11 for the framing) that reads only when asked."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.conn = h11.Connection(our_role=h11.CLIENT)
        self.status: int | None = None
        self.messages: list[dict[str, str]] = []  # the complete SSE messages so far (comments left out)
        self._partial = b""
        self.ended = False  # the response's last chunk came
        self.eof = False  # the server closed the connection

    @classmethod
    async def open(cls, server: LiveServer, tok: str, rcvbuf: int | None = RCVBUF, **headers: str) -> RawSSE:
        client = cls(await raw_socket(server, rcvbuf))
        request = h11.Request(method="GET", target="/v1/sse", headers=[
            ("Host", f"127.0.0.1:{server.port}"), ("Accept", "text/event-stream"), *auth(tok).items(),
            *headers.items()])
        data = client.conn.send(request) + client.conn.send(h11.EndOfMessage())
        await asyncio.get_running_loop().sock_sendall(client.sock, data)
        while client.status is None:
            await client._read_some()
        return client

    async def _read_some(self) -> None:
        data = await recv(self.sock)
        if not data:
            self.eof = True
        self.conn.receive_data(data)
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            if isinstance(event, h11.Response):
                self.status = event.status_code
            elif isinstance(event, h11.Data):
                self._parse(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self.ended = True
            elif isinstance(event, h11.ConnectionClosed):
                break

    def _parse(self, data: bytes) -> None:
        """Complete messages (fields by name) into `messages`; lines may end in CRLF (sse-starlette's
        pings) or LF (the events)."""
        data = self._partial + data
        held = b"\r" if data.endswith(b"\r") else b""  # maybe half of a CRLF
        blocks = data[: len(data) - len(held)].replace(b"\r\n", b"\n").split(b"\n\n")
        self._partial = blocks.pop() + held  # incomplete (or empty)
        for block in blocks:
            fields: dict[str, str] = {}
            for line in block.decode().split("\n"):
                if line and not line.startswith(":"):
                    name, _, value = line.partition(":")
                    fields[name] = value[1:] if value.startswith(" ") else value
            if fields:
                self.messages.append(fields)

    async def until(self, check: Callable[[], bool]) -> None:
        while not check():
            assert not self.eof, "the connection ended"
            await self._read_some()

    async def read_until_closed(self) -> None:
        while not self.eof:
            await self._read_some()

    def close(self) -> None:
        self.sock.close()


class Publisher:
    """Publishes padded events to one channel (a few at a time) until told to stop; leaving the
    block stops it too (a failed test leaves nothing publishing)."""

    def __init__(self, http: httpx.AsyncClient, server: LiveServer, channel: str, concurrency: int = 8) -> None:
        self.http, self.server, self.channel = http, server, channel
        self.ids: list[str] = []
        self._stop = asyncio.Event()
        self._seq = 0
        self._tasks = [asyncio.create_task(self._run()) for _ in range(concurrency)]

    async def _run(self) -> None:
        while not self._stop.is_set() and self._seq < 5000:  # a bound: a server that never cuts off fails
            self._seq += 1
            response = await self.http.post(f"{self.server.url}/v1/events", headers=auth(service_token()), json={
                "tenant": "t1", "channel": self.channel, "type": "slow.test", "data": {"seq": self._seq, "pad": PAD}})
            assert response.status_code == 202, response.text
            self.ids.append(response.json()["id"])

    async def stop(self) -> list[str]:
        """Stop; every id published, in the log's order."""
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return sorted(self.ids, key=id_key)

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.fixture
async def http() -> Any:
    async with httpx.AsyncClient(timeout=httpx.Timeout(WAIT * 2, connect=5.0), trust_env=False) as client:
        yield client


async def ws_events_from(http: httpx.AsyncClient, server: LiveServer, tok: str, since: str, n: int) -> list[str]:
    """A fresh (reading) WebSocket resumed from `since`: the ids of its next n events."""
    client = await RawWebSocket.open(server, tok, rcvbuf=None, since=since)
    try:
        ids: list[str] = []
        while len(ids) < n:
            frame = await client.next_json()
            if "id" in frame:
                ids.append(frame["id"])
        return ids
    finally:
        client.close()


async def test_websocket_client_that_stops_reading_gets_4008_behind_its_data_and_resumes_without_loss(
        live_servers: Callable[..., LiveServer], redis_url: str, http: httpx.AsyncClient) -> None:
    server = live_servers(MAX_BACKLOG="10")
    tok = token("u1", "t1")
    slow = 'realtime_slow_consumers_total{transport="ws"}'
    client = await RawWebSocket.open(server, tok)
    try:
        subscribed = {(await client.next_json())["channel"] for _ in range(2)}
        assert subscribed == {"user:u1", "tenant:t1"}
        start = (await http.get(f"{server.url}/v1/poll", params={"timeout": 0}, headers=auth(tok))).json()["cursor"]

        # the client reads nothing from here on, until the server has cut it off
        async with Publisher(http, server, "user:u1") as publisher:
            await eventually(lambda: metric(http, server, slow), timeout=WAIT * 2, interval=0.05)
            ids = await publisher.stop()
        # reading again now, with room to read fast (the server waits SLOW_CLOSE_WAIT, 10 s, for its
        # buffer to drain): all that was sent before the cut-off, in order, then the close frame, 4008
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        frames = await client.read_until_closed()
    finally:
        client.close()

    assert (client.close_code, client.close_reason) == (4008, "slow_consumer")
    assert all("op" not in frame for frame in frames), [f for f in frames if "op" in f]
    got = [frame["id"] for frame in frames]
    assert got == ids[: len(got)]  # in order, no gap, no repeat
    assert len(got) < len(ids), "the client was never cut off"
    assert await metric(http, server, slow) == 1  # counted once

    # resuming with the last id it got: everything else, in order, once
    assert got + await ws_events_from(http, server, tok, got[-1] if got else start, len(ids) - len(got)) == ids


def sse_events(messages: list[dict[str, str]]) -> list[str]:
    """The ids of the event messages (each one's `id:` field and envelope agree)."""
    ids = []
    for message in messages:
        assert "id" in message and json.loads(message["data"])["id"] == message["id"], message
        ids.append(message["id"])
    return ids


async def sse_events_from(server: LiveServer, tok: str, last_event_id: str, n: int) -> list[str]:
    """A fresh (reading) stream resumed with Last-Event-ID: the ids of its next n events."""
    client = await RawSSE.open(server, tok, rcvbuf=None, **{"Last-Event-ID": last_event_id})
    try:
        assert client.status == 200
        await client.until(lambda: len(client.messages) >= n)
        return sse_events(client.messages[:n])
    finally:
        client.close()


async def test_sse_client_that_falls_behind_gets_a_slow_consumer_error_before_the_stream_ends(
        live_servers: Callable[..., LiveServer], redis_url: str, http: httpx.AsyncClient) -> None:
    server = live_servers(MAX_BACKLOG="10")
    tok = token("u1", "t1")
    slow = 'realtime_slow_consumers_total{transport="sse"}'
    start = (await http.get(f"{server.url}/v1/poll", params={"timeout": 0}, headers=auth(tok))).json()["cursor"]
    client = await RawSSE.open(server, tok)
    try:
        assert client.status == 200  # the stream's session is open and subscribed

        # the client reads nothing from here on, until the server has cut it off
        async with Publisher(http, server, "user:u1") as publisher:
            await eventually(lambda: metric(http, server, slow), timeout=WAIT * 2, interval=0.05)
            ids = await publisher.stop()
        # reading again: what was sent, then the error, then the response's end
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        await client.until(lambda: client.ended)  # the response ends (its last chunk): the stream is over
        messages = client.messages
    finally:
        client.close()

    *events, last = messages
    assert last.get("event") == "error" and "id" not in last, last
    assert json.loads(last["data"])["code"] == "slow_consumer", last
    got = sse_events(events)
    assert got == ids[: len(got)]  # in order, no gap, no repeat
    assert len(got) < len(ids), "the client was never cut off"
    assert await metric(http, server, slow) == 1  # counted once

    # a browser reconnects with Last-Event-ID: everything else, in order, once
    assert got + await sse_events_from(server, tok, got[-1] if got else start, len(ids) - len(got)) == ids


async def test_sse_stream_whose_client_accepts_nothing_is_ended_after_sse_send_timeout(
        live_servers: Callable[..., LiveServer], redis_url: str, http: httpx.AsyncClient) -> None:
    """Through sse-starlette's real response (not the override called directly): a library change
    that stopped applying the timeout, or a fast path that skipped it, leaves the stream open."""
    server = live_servers(SSE_SEND_TIMEOUT="2")  # MAX_BACKLOG stays 10,000: no cut-off, only the timeout
    tok = token("u1", "t1")
    streams = 'realtime_connections{transport="sse"}'
    client = await RawSSE.open(server, tok)
    try:
        assert client.status == 200
        assert await metric(http, server, streams) == 1

        # the client never reads again; its buffers fill, then a send waits for it, and gives up
        async def stream_ended() -> bool:
            return await metric(http, server, streams) == 0

        async with Publisher(http, server, "user:u1") as publisher:
            await eventually(stream_ended, timeout=WAIT * 2, interval=0.05)
            await publisher.stop()
        assert await metric(http, server, 'realtime_slow_consumers_total{transport="sse"}') == 0  # not a cut-off

        # the server dropped the connection: what it had sent, then the end of the socket, without
        # the response's last chunk (the stream was abandoned, not finished)
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        with pytest.raises(h11.RemoteProtocolError):
            await client.read_until_closed()
        assert client.eof and not client.ended
        assert client.messages and all(message.get("event") == "slow.test" for message in client.messages)
    finally:
        client.close()
