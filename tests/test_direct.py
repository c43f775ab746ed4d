"""The direct path (app/transports/direct.py): live events written to the socket by the hub.

uvicorn runs in this process with the protocols `python -m app serve` uses, so the writers can be
observed: each test proves the events went the direct way (the writers accepted them) and that
the client received exactly the contract's envelopes, in order; then that a client whose socket
is backed up falls back to the ASGI path and still gets everything once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest
import redis as sync_redis
import uvicorn
import websockets
from httpx_sse import aconnect_sse

from app.main import create_app
from app.settings import Settings
from app.transports import direct
from tests.conftest import IMPORT_TTL, auth, eventually, free_port, service_token, token

USER = token(channels=["repository:*"], ttl=IMPORT_TTL)  # minted at import


class Counted:
    """Wraps a writer class's `write` to count the frames it took and refused."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, cls: type, refuse: Callable[[], bool] = lambda: False) -> None:
        self.taken = self.refused = 0
        original = cls.write

        def write(writer: Any, data: bytes) -> bool:
            if refuse():
                self.refused += 1
                return False
            ok = original(writer, data)
            self.taken += ok
            return ok

        monkeypatch.setattr(cls, "write", write)


@pytest.fixture
async def server(make_settings: Callable[..., Settings], redis_url: str) -> AsyncIterator[str]:
    app = create_app(make_settings(redis_url=redis_url))
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, ws=direct.DirectWebSocketProtocol,
                            http=direct.DirectHttpProtocol, ws_per_message_deflate=False, log_config=None, lifespan="on")
    uv = uvicorn.Server(config)
    task = asyncio.create_task(uv.serve())
    await eventually(lambda: uv.started, timeout=15)
    yield f"127.0.0.1:{port}"
    uv.should_exit = True
    await task


async def publish(base: str, channel: str, count: int) -> list[str]:
    async with httpx.AsyncClient(base_url=f"http://{base}") as http:
        ids = []
        for i in range(count):
            answer = await http.post("/v1/events", headers=auth(service_token()),
                                     json={"tenant": "t1", "channel": channel, "type": "thing.happened", "data": {"i": i}})
            assert answer.status_code == 202, answer.text
            ids.append(answer.json()["id"])
        return ids


async def ws_events(ws: Any, count: int) -> list[dict]:
    got: list[dict] = []
    while len(got) < count:
        frame = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        if "op" not in frame:
            got.append(frame)
    return got


async def ws_probe(ws: Any, base: str) -> None:
    """Publish a probe event and read the socket up to it: the server has sent this client
    everything published so far, so its session waits, parked, for the next live event."""
    [probe] = await publish(base, "repository:r1", 1)
    while True:
        frame = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        if frame.get("id") == probe:
            return
        assert "op" in frame, f"an event before the probe: {frame}"


async def test_websocket_live_events_take_the_direct_path(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    writes = Counted(monkeypatch, direct.DirectWriter)
    async with websockets.connect(f"ws://{server}/v1/ws?access_token={USER}&channels=repository:r1",
                                  compression=None) as ws:
        for _ in range(3):  # subscribed: user:u1, tenant:t1, repository:r1
            assert orjson.loads(await ws.recv())["op"] == "subscribed"
        await ws_probe(ws, server)  # instead of guessing when the session has parked
        before = writes.taken
        sent = await publish(server, "repository:r1", 20)
        got = await ws_events(ws, 20)
    assert [e["id"] for e in got] == sent
    assert got[0]["channel"] == "repository:r1" and got[0]["data"] == {"i": 0} and got[0]["type"] == "thing.happened"
    assert writes.taken - before >= 20


async def test_sse_live_events_take_the_direct_path(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    writes = Counted(monkeypatch, direct.ChunkWriter)
    async with (httpx.AsyncClient(base_url=f"http://{server}", timeout=10) as http,
                aconnect_sse(http, "GET", "/v1/sse?channels=repository:r1", headers=auth(USER)) as source):
        events = source.aiter_sse()

        async def probe_went_direct() -> bool:
            """A probe event, read back; True when the hub wrote it itself (the stream is
            parked: the events that follow go direct too, nothing wakes it)."""
            before = writes.taken
            [probe] = await publish(server, "repository:r1", 1)
            while (await asyncio.wait_for(anext(events), 10)).id != probe:
                pass
            return writes.taken > before

        await eventually(probe_went_direct, timeout=15)
        before = writes.taken
        sent = await publish(server, "repository:r1", 20)
        got = []
        async for sse in events:
            got.append(sse)
            if len(got) == 20:
                break
    assert [e.id for e in got] == sent
    assert orjson.loads(got[0].data)["data"] == {"i": 0} and got[0].event == "thing.happened"
    assert writes.taken - before == 20  # one chunk per event, every one direct


async def test_a_backed_up_socket_falls_back_to_the_queue_and_loses_nothing(
        server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    backed_up = False
    writes = Counted(monkeypatch, direct.DirectWriter, refuse=lambda: backed_up)
    async with websockets.connect(f"ws://{server}/v1/ws?access_token={USER}&channels=repository:r1",
                                  compression=None) as ws:
        for _ in range(3):
            orjson.loads(await ws.recv())
        await ws_probe(ws, server)  # parked, the direct path open
        backed_up = True
        first = await publish(server, "repository:r1", 10)  # refused by the writer: the pump sends them
        got = await ws_events(ws, 10)
        assert writes.refused >= 10
        backed_up = False
        await ws_probe(ws, server)  # everything sent: parked again
        before = writes.taken
        second = await publish(server, "repository:r1", 10)
        got += await ws_events(ws, 10)
    assert [e["id"] for e in got] == first + second
    assert writes.refused >= 10 and writes.taken - before >= 10


class FakeTransport:
    def __init__(self, closing: bool = False) -> None:
        self.writes: list[bytes] = []
        self.closing = closing

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing


def test_held_writes_are_joined_per_socket_in_order_and_only_while_held() -> None:
    held, a, b, gone = direct.HeldWrites(), FakeTransport(), FakeTransport(), FakeTransport()
    held.write(a, b"now")  # not held: written at once
    assert a.writes == [b"now"]
    held.hold()
    for frame in (b"1", b"2", b"3"):
        held.write(a, frame)
    held.write(b, b"x")
    held.write(gone, b"lost")
    gone.closing = True
    assert a.writes == [b"now"] and b.writes == []
    held.release()
    assert a.writes == [b"now", b"123"] and b.writes == [b"x"] and gone.writes == []
    held.write(b, b"after")
    assert b.writes == [b"x", b"after"]


async def test_a_batch_of_events_reaches_each_socket_in_one_write(server: str, monkeypatch: pytest.MonkeyPatch,
                                                                  redis_url: str, prefix: str) -> None:
    """The hub holds a dispatch's writes and joins them per socket: events read from the log in
    one batch reach a WebSocket in fewer writes than events, all of them, in order."""
    joined: list[int] = []
    release = direct.HeldWrites.release

    def counting(self: direct.HeldWrites) -> None:
        joined.extend(len(frames) for frames in (self._held or {}).values())
        release(self)

    monkeypatch.setattr(direct.HeldWrites, "release", counting)
    async with websockets.connect(f"ws://{server}/v1/ws?access_token={USER}&channels=repository:r1",
                                  compression=None) as ws:
        for _ in range(3):
            assert orjson.loads(await ws.recv())["op"] == "subscribed"
        await ws_probe(ws, server)
        worker = sync_redis.Redis.from_url(redis_url)  # 20 entries in one round trip: the ingest appends them together
        with worker.pipeline(transaction=False) as pipe:
            for i in range(20):
                pipe.xadd(f"{prefix}:ingest", {"tenant": "t1", "channel": "repository:r1", "type": "thing.happened",
                                               "data": orjson.dumps({"i": i})})
            pipe.execute()
        worker.close()
        got = await ws_events(ws, 20)
    assert [e["data"]["i"] for e in got] == list(range(20))
    assert [e["id"] for e in got] == sorted((e["id"] for e in got), key=lambda i: tuple(map(int, i.split("-"))))
    assert max(joined) > 1, joined
