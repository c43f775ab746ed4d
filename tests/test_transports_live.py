"""End-to-end through real sockets: `python -m app serve` subprocesses (conftest's `live_servers`),
the local Redis, and real WebSocket / Server-Sent Events / long-polling clients.

Nothing here asserts on timings: every wait is for a condition, with a generous deadline that only
turns a hang into a failure.

Server processes take seconds to start, so the tests that need the default configuration share two
module-scoped servers (`shared`: one Redis key prefix, one log); each of those tests reads only the
window of the log it wrote itself (a `since` it took, or a live stream it opened). Tests that need
another configuration start their own through conftest's `live_servers` (their own prefix).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlencode

import httpx
import jwt
import pytest
import redis as sync_redis
from forge_publisher import publish as worker_publish
from httpx_sse import aconnect_sse
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import IMPORT_TTL, TEST_SECRET, LiveServer, auth, delete_prefix, eventually, free_port, service_token, token

WAIT = 15.0  # the longest one condition may take before the test fails (never a timing assertion)
ENVELOPE_KEYS = {"id", "channel", "type", "data", "ts"}
TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
REPO = ["repository:*"]  # the `channels` claim most tests' users carry


def is_presence(envelope: dict) -> bool:
    """Presence joins/leaves (CONTRACT section 9) ride on repository channels; these tests, about
    transports, let them pass by and look at the events they published themselves."""
    return str(envelope.get("type", "")).startswith("presence.")


def published(events: list[dict]) -> list[dict]:
    return [e for e in events if not is_presence(e)]


# --------------------------------------------------------------------------------------------
# small clients
# --------------------------------------------------------------------------------------------

_service_tokens: dict[str, str] = {}


def _service(tenant: str) -> str:
    """A service token per tenant, kept for the session (other modules publish with it too), so
    it must outlive the suite."""
    if tenant not in _service_tokens:
        _service_tokens[tenant] = service_token(tenant, ttl=IMPORT_TTL)
    return _service_tokens[tenant]


def id_key(event_id: str) -> tuple[int, int]:
    """Test-side ordering of ids (`<ms>-<seq>`), only to sort ids published concurrently."""
    ms, seq = event_id.split("-")
    return int(ms), int(seq)


async def publish(http: httpx.AsyncClient, server: Any, channel: str, data: dict | None = None, *,
                  tenant: str = "t1", type_: str = "test.event") -> str:
    response = await http.post(
        f"{server.url}/v1/events",
        json={"tenant": tenant, "channel": channel, "type": type_, "data": data if data is not None else {}},
        headers=auth(_service(tenant)),
    )
    assert response.status_code == 202, response.text
    return response.json()["id"]


async def publish_bulk(http: httpx.AsyncClient, server: Any, channel: str, datas: list[dict], *,
                       tenant: str = "t1", concurrency: int = 16) -> list[str]:
    """Publish concurrently; the ids come back in data order (not necessarily id order)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(data: dict) -> str:
        async with gate:
            return await publish(http, server, channel, data, tenant=tenant)

    return list(await asyncio.gather(*(one(d) for d in datas)))


def check_envelope(envelope: dict, event_id: str, channel: str, data: dict, type_: str = "test.event") -> None:
    assert set(envelope) == ENVELOPE_KEYS, envelope
    assert envelope["id"] == event_id
    assert envelope["channel"] == channel
    assert envelope["type"] == type_
    assert envelope["data"] == data
    assert TS.match(envelope["ts"]), envelope["ts"]
    ts = datetime.strptime(envelope["ts"], "%Y-%m-%dT%H:%M:%S.%f%z")
    assert abs(ts - datetime.now(UTC)) < timedelta(minutes=5), envelope["ts"]  # a UTC wall clock, not a counter


async def metric(http: httpx.AsyncClient, server: Any, sample: str) -> float:
    """One Prometheus sample, e.g. 'realtime_connections{transport="poll"}' (0 when absent)."""
    text = (await http.get(f"{server.url}/metrics")).text
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def _polls_above(http: httpx.AsyncClient, server: Any, before: float) -> bool:
    return await metric(http, server, 'realtime_connections{transport="poll"}') > before


class Closed:
    """The end of a WebSocket stream, with the close code the client saw."""

    def __init__(self, code: int | None) -> None:
        self.code = code

    def __repr__(self) -> str:
        return f"Closed({self.code})"


class WS:
    """A WebSocket client whose JSON frames are read in the background into a queue."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.frames: asyncio.Queue[Any] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.conn:
                self.frames.put_nowait(json.loads(raw))
        except ConnectionClosed:
            pass
        finally:
            self.frames.put_nowait(Closed(self.conn.close_code))

    async def next(self, timeout: float = WAIT) -> Any:
        try:
            return await asyncio.wait_for(self.frames.get(), timeout)
        except TimeoutError:
            raise AssertionError(f"no WebSocket frame within {timeout}s") from None

    async def send(self, frame: Any) -> None:
        await self.conn.send(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))

    async def expect(self, op: str) -> dict:
        frame = await self.next()
        assert isinstance(frame, dict) and frame.get("op") == op, f"expected op {op!r}, got {frame!r}"
        return frame

    async def events(self, n: int) -> list[dict]:
        """The next n frames, each of which must be an event envelope (presence events skipped)."""
        out: list[dict] = []
        while len(out) < n:
            frame = await self.next()
            assert isinstance(frame, dict) and "op" not in frame, f"after {len(out)} of {n} events: {frame!r}"
            if not is_presence(frame):
                out.append(frame)
        return out

    async def until_closed(self) -> tuple[list[Any], int | None]:
        frames: list[Any] = []
        while True:
            frame = await self.next()
            if isinstance(frame, Closed):
                return frames, frame.code
            frames.append(frame)

    async def aclose(self) -> None:
        await self.conn.close()
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)

    async def __aenter__(self) -> WS:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _url(base: str, path: str, params: dict[str, Any]) -> str:
    query = {k: v for k, v in params.items() if v is not None}
    return f"{base}{path}" + (f"?{urlencode(query)}" if query else "")


async def ws_connect(server: Any, tok: str | None = None, *, query_token: bool = False, origin: str | None = None,
                     **params: Any) -> WS:
    """Connect (no waiting for `subscribed`); the token goes in the header unless `query_token`."""
    headers = {}
    if tok is not None and query_token:
        params["access_token"] = tok
    elif tok is not None:
        headers = auth(tok)
    conn = await connect(_url(server.ws_url, "/v1/ws", params), additional_headers=headers, origin=origin,
                         proxy=None, open_timeout=WAIT)
    return WS(conn)


async def ws_open(server: Any, sub: str = "u1", tid: str = "t1", *, channels: Iterable[str] = (), tok: str | None = None,
                  query_token: bool = False, **params: Any) -> WS:
    """Connected and subscribed to user:<sub>, tenant:<tid> and `channels`: live from here on."""
    channels = list(channels)
    if tok is None and "ticket" not in params:
        tok = token(sub, tid, channels=REPO)
    ws = await ws_connect(server, tok, query_token=query_token, channels=",".join(channels) or None, **params)
    expected, seen = {f"user:{sub}", f"tenant:{tid}", *channels}, set()
    while seen != expected:
        frame = await ws.next()
        assert isinstance(frame, dict) and frame.get("op") == "subscribed", f"expected subscribed, got {frame!r}"
        seen.add(frame["channel"])
    return ws


END = object()  # an SSE stream that ended


class SSE:
    """An SSE client (httpx-sse); events are read in the background into a queue."""

    def __init__(self, http: httpx.AsyncClient, server: Any, tok: str | None = None, *,
                 headers: dict[str, str] | None = None, query_token: bool = False, **params: Any) -> None:
        self.headers = dict(headers or {})
        if tok is not None and query_token:
            params["access_token"] = tok
        elif tok is not None:
            self.headers.update(auth(tok))
        self.http, self.url = http, _url(server.url, "/v1/sse", params)
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SSE:
        self._cm = aconnect_sse(self.http, "GET", self.url, headers=self.headers)
        source = await self._cm.__aenter__()
        self.response = source.response
        if self.response.status_code == 200:
            self.reader = asyncio.create_task(self._read(source))
        else:
            await self.response.aread()
        return self

    async def _read(self, source: Any) -> None:
        try:
            async for sse in source.aiter_sse():
                self.queue.put_nowait(sse)
        finally:
            self.queue.put_nowait(END)

    async def __aexit__(self, *exc: object) -> None:
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)
        await self._cm.__aexit__(None, None, None)

    async def next(self, timeout: float = WAIT) -> Any:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            raise AssertionError(f"no SSE event within {timeout}s") from None

    async def events(self, n: int) -> list[dict]:
        """The next n SSE events, each an envelope whose `id:` and `event:` fields match it
        (presence events skipped)."""
        out: list[dict] = []
        while len(out) < n:
            sse = await self.next()
            assert sse is not END, f"stream ended after {len(out)} of {n} events"
            envelope = json.loads(sse.data)
            assert sse.event == envelope.get("type") and sse.id == envelope.get("id"), (sse, envelope)
            if not is_presence(envelope):
                out.append(envelope)
        return out


async def poll(http: httpx.AsyncClient, server: Any, tok: str, **params: Any) -> httpx.Response:
    return await http.get(_url(server.url, "/v1/poll", params), headers=auth(tok))


async def poll_ok(http: httpx.AsyncClient, server: Any, tok: str, **params: Any) -> dict:
    response = await poll(http, server, tok, **params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"events", "cursor", "reset"}, body
    if body["events"]:
        assert body["cursor"] == body["events"][-1]["id"], body
    return body


async def poll_until(http: httpx.AsyncClient, server: Any, tok: str, since: str, n: int, **params: Any) -> tuple[list[dict], str]:
    """Long-poll from `since` until n events (not counting presence) arrived; returns them and
    the last cursor."""
    events: list[dict] = []
    deadline = time.monotonic() + WAIT
    while len(events) < n:
        assert time.monotonic() < deadline, f"only {len(events)} of {n} events"
        body = await poll_ok(http, server, tok, since=since, timeout=WAIT, **params)
        assert body["reset"] is False, body
        events += published(body["events"])
        since = body["cursor"]
    return events, since


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture
async def http() -> Any:
    async with httpx.AsyncClient(timeout=httpx.Timeout(WAIT * 2, connect=5.0), trust_env=False) as client:
        yield client


class Shared(NamedTuple):
    a: LiveServer
    b: LiveServer
    prefix: str


@contextmanager
def two_servers(tmp_path_factory: pytest.TempPathFactory, **engine_env: str) -> Iterator[Shared]:
    """Two default-configured server processes on one log (`engine_env`: REDIS_URL and the like),
    under a key prefix of their own, started like conftest's `live_servers` does."""
    prefix = f"test{uuid.uuid4().hex[:10]}"
    data_dir: Path = tmp_path_factory.mktemp("shared-servers")
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update({"DATA_DIR": str(data_dir), "JWT_SECRET": TEST_SECRET, "REDIS_PREFIX": prefix, **engine_env})
    servers: list[LiveServer] = []
    try:
        for _ in range(2):
            servers.append(LiveServer(env, free_port()).start())
        yield Shared(servers[0], servers[1], prefix)
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Shared]:
    """Two server processes on the local Redis, for this module's tests; their keys are deleted afterwards."""
    prefix = ""
    try:
        with two_servers(tmp_path_factory, REDIS_URL=redis_url) as servers:
            prefix = servers.prefix
            yield servers
    finally:  # once both have stopped
        if prefix:
            delete_prefix(redis_url, prefix)


@pytest.fixture
def pair(shared: Shared) -> tuple[LiveServer, LiveServer]:
    """Two server processes sharing one Redis log."""
    return shared.a, shared.b


@pytest.fixture
def server(shared: Shared) -> LiveServer:
    """One Redis-backed server with the default configuration."""
    return shared.a


# --------------------------------------------------------------------------------------------
# 1. one event, three transports, one envelope
# --------------------------------------------------------------------------------------------


async def test_each_transport_delivers_the_contract_envelope(server: Any, http: httpx.AsyncClient) -> None:
    tok = token("u1", "t1", channels=REPO)
    data = {"analysisId": "a1", "progress": 42, "text": "héllo ✓", "nested": {"list": [1, 2, None]}}
    cursor = (await poll_ok(http, server, tok, channels="repository:r1", timeout=0))["cursor"]
    async with await ws_open(server, channels=["repository:r1"], tok=tok) as ws, \
            SSE(http, server, tok, channels="repository:r1") as sse:
        assert sse.response.status_code == 200
        assert sse.response.headers["content-type"].startswith("text/event-stream")
        assert sse.response.headers["cache-control"] == "no-cache"
        assert sse.response.headers["x-accel-buffering"] == "no"
        polled = asyncio.create_task(poll_until(http, server, tok, cursor, 1, channels="repository:r1"))

        event_id = await publish(http, server, "repository:r1", data)

        [frame] = await ws.events(1)
        check_envelope(frame, event_id, "repository:r1", data)

        raw = await sse.next()
        while raw is not END and raw.event.startswith("presence."):
            raw = await sse.next()
        assert raw is not END and (raw.id, raw.event) == (event_id, "test.event"), raw
        envelope = json.loads(raw.data)
        check_envelope(envelope, event_id, "repository:r1", data)
        assert envelope == frame

        events, _ = await polled
        assert events == [frame]


# --------------------------------------------------------------------------------------------
# 2. disconnect, publish through both processes, resume on the other one
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["ws", "sse", "poll"])
async def test_resume_on_another_process_loses_nothing(transport: str, pair: tuple[Any, Any], http: httpx.AsyncClient) -> None:
    a, b = pair
    tok = token("u1", "t1")
    user = "user:u1"

    async def publish_seq(start: int, count: int, servers: list[Any]) -> list[str]:
        return [await publish(http, servers[i % len(servers)], user, {"seq": start + i}) for i in range(count)]

    # a client on A sees three events, then goes away
    if transport == "ws":
        async with await ws_open(a, tok=tok) as ws:
            seen = await publish_seq(0, 3, [a])
            assert [e["id"] for e in await ws.events(3)] == seen
    elif transport == "sse":
        async with SSE(http, a, tok) as sse:
            assert sse.response.status_code == 200
            seen = await publish_seq(0, 3, [a])
            assert [e["id"] for e in await sse.events(3)] == seen
    else:
        start = (await poll_ok(http, a, tok, timeout=0))["cursor"]
        seen = await publish_seq(0, 3, [a])
        events, _ = await poll_until(http, a, tok, start, 3)
        assert [e["id"] for e in events] == seen

    missed = await publish_seq(3, 10, [a, b])  # alternately through A and B
    last = seen[-1]

    # it comes back on B with its last id: exactly the missed events, in order, then live ones
    if transport == "ws":
        async with await ws_open(b, tok=tok, since=last) as ws:
            replayed = await ws.events(10)
            live = await publish_seq(13, 2, [a, b])
            received = replayed + await ws.events(2)
    elif transport == "sse":
        # Last-Event-ID (what a browser sends on reconnect) wins over the URL's stale `since`
        async with SSE(http, b, tok, headers={"Last-Event-ID": last}, since=seen[0]) as sse:
            assert sse.response.status_code == 200
            replayed = await sse.events(10)
            live = await publish_seq(13, 2, [a, b])
            received = replayed + await sse.events(2)
    else:
        replayed, cursor = await poll_until(http, b, tok, last, 10)
        assert cursor == missed[-1]
        waiting = asyncio.create_task(poll_until(http, b, tok, cursor, 2))
        live = await publish_seq(13, 2, [a, b])
        later, cursor = await waiting
        assert cursor == live[-1]
        received = replayed + later

    assert [e["id"] for e in received] == missed + live
    assert [e["data"]["seq"] for e in received] == list(range(3, 15))


async def test_sse_last_event_id_header_alone_resumes(server: Any, http: httpx.AsyncClient) -> None:
    tok = token("u1", "t1")
    first = await publish(http, server, "user:u1", {"n": 1})
    second = await publish(http, server, "user:u1", {"n": 2})
    async with SSE(http, server, tok, headers={"Last-Event-ID": first}) as sse:
        assert [e["id"] for e in await sse.events(1)] == [second]


# --------------------------------------------------------------------------------------------
# 3. published through A, delivered live by B
# --------------------------------------------------------------------------------------------


async def test_event_published_through_one_process_reaches_live_clients_of_another(
        pair: tuple[Any, Any], http: httpx.AsyncClient) -> None:
    a, b = pair
    tok = token("u1", "t1", channels=REPO)
    async with await ws_open(b, tok=tok, channels=["repository:r1"]) as ws, \
            SSE(http, b, tok, channels="repository:r1") as sse:
        assert sse.response.status_code == 200
        # a long-poll parked on B (its `since` makes the answer the same should it open late)
        cursor = (await poll_ok(http, b, tok, channels="repository:r1", timeout=0))["cursor"]
        before = await metric(http, b, 'realtime_connections{transport="poll"}')
        waiting = asyncio.create_task(poll_until(http, b, tok, cursor, 1, channels="repository:r1"))
        await eventually(lambda: _polls_above(http, b, before), timeout=WAIT)

        event_id = await publish(http, a, "repository:r1", {"via": "A"})

        [frame] = await ws.events(1)
        check_envelope(frame, event_id, "repository:r1", {"via": "A"})
        assert await sse.events(1) == [frame]
        events, _ = await waiting
        assert events == [frame]


# --------------------------------------------------------------------------------------------
# 4. the server-side cursor of (tenant, user, client_id)
# --------------------------------------------------------------------------------------------


async def test_client_id_resumes_from_the_server_side_cursor_across_processes(
        shared: Shared, http: httpx.AsyncClient, redis_url: str) -> None:
    a, b, prefix = shared
    tok = token("u1", "t1", channels=REPO)
    store = sync_redis.Redis.from_url(redis_url)

    def stored(client_id: str) -> str | None:
        value = store.hget(f"{prefix}:cursor:t1:u1", client_id)
        return value.decode() if value else None

    try:
        # a WebSocket on A with client_id c1 (nothing stored yet: live head) gets e1, e2 and leaves
        async with await ws_open(a, tok=tok, client_id="c1") as ws:
            e1 = await publish(http, a, "user:u1", {"n": 1})
            e2 = await publish(http, a, "user:u1", {"n": 2})
            assert [e["id"] for e in await ws.events(2)] == [e1, e2]
        await eventually(lambda: stored("c1") == e2, timeout=WAIT)  # saved when the socket closed

        e3 = await publish(http, b, "user:u1", {"n": 3})
        r1 = await publish(http, a, "repository:r1", {"n": "r1"})  # newer than e3, on a channel not asked for below

        # no `since`: a poll on B resumes after e2 (and moves the cursor to what it delivered)
        body = await poll_ok(http, b, tok, client_id="c1", timeout=0)
        assert ([e["id"] for e in body["events"]], body["cursor"], body["reset"]) == ([e3], e3, False)
        assert stored("c1") == e3
        # `since` wins over the stored cursor
        body = await poll_ok(http, a, tok, client_id="c1", since=e1, timeout=0)
        assert [e["id"] for e in body["events"]] == [e2, e3]

        # an answer with nothing in it does not move the cursor (not even to the log's head, r1)
        body = await poll_ok(http, a, tok, client_id="c1", timeout=0)
        assert (body["events"], body["cursor"]) == ([], e3)
        assert stored("c1") == e3

        # so an SSE stream on B that now also asks for repository:r1 still gets r1 first
        async with SSE(http, b, tok, client_id="c1", channels="repository:r1") as sse:
            assert sse.response.status_code == 200
            assert [e["id"] for e in await sse.events(1)] == [r1]
            e4 = await publish(http, a, "user:u1", {"n": 4})
            assert [e["id"] for e in await sse.events(1)] == [e4]
        # saved on close: e4, or a presence event of repository:r1 delivered after it
        await eventually(lambda: id_key(stored("c1") or "0-0") >= id_key(e4), timeout=WAIT)

        # another client_id of the same user is independent: nothing stored, it starts at the head
        body = await poll_ok(http, b, tok, client_id="c2", timeout=0)
        assert body["events"] == [] and id_key(body["cursor"]) >= id_key(e4), body
        assert stored("c2") is None
        # and the same client_id of another user is another cursor: u2 has none, so it starts at
        # the head (were cursors keyed by client_id alone, it would resume after e4 and get u2's event)
        await publish(http, a, "user:u2", {"n": "u2"})
        other = await poll_ok(http, a, token("u2", "t1"), client_id="c1", timeout=0)
        assert other["events"] == []
    finally:
        store.close()


# --------------------------------------------------------------------------------------------
# 5. gaps: a cursor older than the log's history, and a cursor that is no cursor
# --------------------------------------------------------------------------------------------


async def test_stale_cursor_resets_on_every_transport_then_continues_live(
        live_servers: Any, redis_url: str, prefix: str, http: httpx.AsyncClient) -> None:
    server = live_servers(LOG_MAX_EVENTS="100")
    tok = token("u1", "t1")
    stale = await publish(http, server, "user:u1", {"n": 0})
    # Redis trims approximately (whole macro-nodes): ten times the limit surely drops `stale`.
    # The filler goes in as a worker would (one pipeline): quicker than 1000 HTTP requests.
    client = sync_redis.Redis.from_url(redis_url)
    try:
        pipe = client.pipeline(transaction=False)
        for i in range(1000):
            worker_publish(pipe, "t1", "repository:fill", "test.filler", {"i": i}, prefix=prefix)
        pipe.execute()
        await eventually(lambda: client.xlen(f"{prefix}:ingest") == 0, timeout=WAIT)  # all taken in
    finally:
        client.close()
    head = await publish(http, server, "repository:fill", {"i": "last"})

    body = await poll_ok(http, server, tok, since=stale, timeout=WAIT)
    assert body == {"events": [], "cursor": head, "reset": True}

    async with await ws_open(server, tok=tok, since=stale) as ws, \
            SSE(http, server, tok, since=stale) as sse:
        assert sse.response.status_code == 200
        assert await ws.next() == {"op": "reset"}
        first = await sse.next()
        assert (first.event, first.data) == ("reset", "{}")

        waiting = asyncio.create_task(poll_ok(http, server, tok, since=body["cursor"], timeout=WAIT))
        live = await publish(http, server, "user:u1", {"n": "live"})
        assert [e["id"] for e in await ws.events(1)] == [live]
        assert [e["id"] for e in await sse.events(1)] == [live]
        later = await waiting
        assert ([e["id"] for e in later["events"]], later["cursor"], later["reset"]) == ([live], live, False)


async def test_malformed_cursor_is_a_client_error(server: Any, http: httpx.AsyncClient) -> None:
    tok = token("u1", "t1")
    for bad in ("not-a-cursor", "12", "1-2-3", "-1-0"):
        response = await poll(http, server, tok, since=bad, timeout=0)
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "bad_cursor"
    async with SSE(http, server, tok, since="not-a-cursor") as sse:
        assert sse.response.status_code == 400
        assert sse.response.json()["code"] == "bad_cursor"
    async with SSE(http, server, tok, headers={"Last-Event-ID": "garbage"}) as sse:
        assert sse.response.status_code == 400
    ws = await ws_connect(server, tok, since="not-a-cursor")
    frames, code = await ws.until_closed()
    assert [f.get("code") for f in frames] == ["bad_cursor"] and frames[0]["op"] == "error", frames
    assert code == 4400
    await ws.aclose()


async def test_cursor_at_the_head_never_resets_however_quiet_the_log(
        live_servers: Any, redis_url: str, http: httpx.AsyncClient) -> None:
    server = live_servers(LOG_RETENTION_SECONDS="1")
    tok = token("u1", "t1")
    last = await publish(http, server, "user:u1", {"n": 1})
    await eventually(lambda: time.time() > id_key(last)[0] / 1000 + 1.5, timeout=WAIT)  # older than the retention

    body = await poll_ok(http, server, tok, since=last, timeout=0)
    assert body == {"events": [], "cursor": last, "reset": False}
    async with await ws_open(server, tok=tok, since=last) as ws:
        fresh = await publish(http, server, "user:u1", {"n": 2})
        assert [e["id"] for e in await ws.events(1)] == [fresh]  # no {"op": "reset"} first


# --------------------------------------------------------------------------------------------
# 6. a WebSocket client that stops reading is cut off, then resumes without loss
# --------------------------------------------------------------------------------------------


async def test_slow_websocket_consumer_is_cut_off_and_resumes_without_loss(
        live_servers: Any, redis_url: str, http: httpx.AsyncClient) -> None:
    server = live_servers(MAX_BACKLOG="50")
    tok = token("u1", "t1")
    slow_metric = 'realtime_slow_consumers_total{transport="ws"}'
    before = await metric(http, server, slow_metric)

    # a raw connection with a tiny receive queue: once it holds a few frames the client stops
    # reading the socket, so TCP pushes back on the server
    conn = await connect(f"{server.ws_url}/v1/ws", additional_headers=auth(tok), max_queue=4, proxy=None,
                         ping_interval=None)  # its pongs would go unread too
    try:
        subscribed = {json.loads(await asyncio.wait_for(conn.recv(), WAIT))["channel"] for _ in range(2)}
        assert subscribed == {"user:u1", "tenant:t1"}

        start = (await poll_ok(http, server, tok, timeout=0))["cursor"]
        pad = "x" * 4096
        ids = await publish_bulk(http, server, "user:u1", [{"seq": i, "pad": pad} for i in range(2000)], concurrency=24)
        ids.sort(key=id_key)

        async def cut_off() -> bool:
            return await metric(http, server, slow_metric) > before

        await eventually(cut_off, timeout=WAIT)

        # now read everything the server had sent before it gave up on us
        got: list[str] = []
        try:
            while True:
                frame = json.loads(await asyncio.wait_for(conn.recv(), WAIT))
                assert "op" not in frame, frame
                got.append(frame["id"])
        except ConnectionClosed:
            pass
        assert await metric(http, server, slow_metric) == before + 1  # one connection, counted once
        # the server waits (up to 10 s) for a slow reader to drain its buffer so that 4008 arrives
        # after the data; a reader stalled longer than that (or than uvicorn's keepalive ping
        # timeout, on a loaded machine) sees the connection dropped instead: 1006 (4008 itself is
        # asserted strictly, by a client that reads again at once, in tests/test_slow_consumers.py)
        assert conn.close_code in (4008, 1006), conn.close_code
    finally:
        await conn.close()

    assert len(got) < len(ids), "the client was never cut off"
    assert got == ids[: len(got)]  # in order, no gap, up to where it was cut off

    # resume with the last id it got: everything it missed, in order, nothing twice
    async with await ws_open(server, tok=tok, since=got[-1] if got else start) as ws:
        rest = await ws.events(len(ids) - len(got))
        assert got + [e["id"] for e in rest] == ids
        # and it is live again afterwards
        live = await publish(http, server, "user:u1", {"seq": "live"})
        assert [e["id"] for e in await ws.events(1)] == [live]


# --------------------------------------------------------------------------------------------
# 7. token expiry on live connections, and refresh
# --------------------------------------------------------------------------------------------


def _exp(tok: str) -> int:
    return jwt.decode(tok, options={"verify_signature": False})["exp"]


def token_until(sub: str, tid: str, exp: int) -> str:
    """A token whose `exp` is the given second (unlike `ttl`, which counts from a whole second)."""
    now = int(time.time())
    return jwt.encode({"sub": sub, "tid": tid, "iat": now, "exp": exp}, TEST_SECRET, algorithm="HS256")


# Seconds the short tokens below have left when minted: time for the steps that must come before
# their expiry (a handshake, a refresh and its answer) on a loaded machine, not a timing claim.
EXPIRY_MARGIN = 6


async def test_expiry_ends_live_connections_unless_the_websocket_refreshes(
        live_servers: Any, redis_url: str, http: httpx.AsyncClient) -> None:
    server = live_servers(JWT_LEEWAY_SECONDS="0")
    exp = int(time.time()) + EXPIRY_MARGIN  # one instant for every short token: a well-defined expiry
    expired = asyncio.Event()  # set once a connection was seen closed for it

    async def websocket_expires() -> None:
        ws = await ws_open(server, "u1", tok=token_until("u1", "t1", exp))
        # a refresh the server refuses (another user's token) extends nothing
        await ws.send({"op": "refresh", "token": token("u9", "t1", ttl=600)})
        assert (await ws.expect("error"))["code"] == "unauthorized"
        frames, code = await ws.until_closed()
        closed_at = time.time()
        assert code == 4001
        assert [(f.get("op"), f.get("code")) for f in frames] == [("error", "token_expired")], frames
        assert closed_at >= exp, f"closed {exp - closed_at:.2f} s before the token's exp"  # never early
        expired.set()
        await ws.aclose()

    async def sse_expires() -> None:
        async with SSE(http, server, token_until("u2", "t1", exp)) as sse:
            assert sse.response.status_code == 200
            last = await sse.next(timeout=WAIT + EXPIRY_MARGIN)
            assert last is not END and last.event == "error", last
            assert time.time() >= exp, "token_expired before the token's exp"
            assert json.loads(last.data)["code"] == "token_expired"
            assert await sse.next() is END  # and the stream ends

    async def websocket_refreshes() -> None:
        short = token_until("u3", "t1", exp)
        assert _exp(short) == exp
        async with await ws_open(server, "u3", tok=short) as ws:
            await ws.send({"op": "refresh", "token": token("u3", "t1", ttl=600)})
            assert await ws.next() == {"op": "refreshed"}
            for refused in (token("u4", "t1", ttl=600), token("u3", "t2", ttl=600), "not-a-jwt"):
                await ws.send({"op": "refresh", "token": refused})
                error = await ws.expect("error")
                assert error["code"] == "unauthorized", error
            # the old exp has passed and the server acted on it: an unrefreshed socket of the same
            # exp was closed (and a second more, for this socket's own timer of that instant)
            await asyncio.wait_for(expired.wait(), WAIT + EXPIRY_MARGIN)
            await eventually(lambda: time.time() > exp + 1, timeout=WAIT)
            await ws.send({"op": "ping"})
            assert await ws.next() == {"op": "pong"}
            event_id = await publish(http, server, "user:u3", {"still": "open"})
            assert [e["id"] for e in await ws.events(1)] == [event_id]

    await asyncio.gather(websocket_expires(), sse_expires(), websocket_refreshes())


# --------------------------------------------------------------------------------------------
# 8. bad input
# --------------------------------------------------------------------------------------------


async def test_websocket_refuses_bad_tokens_with_4001(server: Any) -> None:
    now = int(time.time())
    forged = jwt.encode({"sub": "u1", "tid": "t1", "exp": now + 600}, "another-secret-of-enough-length-0123456789",
                        algorithm="HS256")
    unsigned = jwt.encode({"sub": "u1", "tid": "t1", "exp": now + 600}, None, algorithm="none")
    cases = [("not.a.jwt", "unauthorized"), (forged, "unauthorized"), (unsigned, "unauthorized"),
             (token("u1", "t1", ttl=-60), "token_expired")]
    for tok, code in cases:
        for query_token in (False, True):
            ws = await ws_connect(server, tok, query_token=query_token)
            frames, close = await ws.until_closed()
            assert close == 4001, (tok, query_token, frames)
            assert [(f["op"], f["code"]) for f in frames] == [("error", code)], frames
            await ws.aclose()
    ws = await ws_connect(server)  # no token at all
    frames, close = await ws.until_closed()
    assert close == 4001
    assert all(f["op"] == "error" for f in frames), frames
    await ws.aclose()


async def test_websocket_reports_bad_frames_and_stays_usable(server: Any, http: httpx.AsyncClient) -> None:
    tok = token("u1", "t1")  # no `channels` claim: only user:u1 and tenant:t1

    # channels refused in the URL are reported one by one; the connection goes on with the rest
    ws = await ws_connect(server, tok, channels="user:other,repository:r1")
    refused = [await ws.next() for _ in range(2)]
    assert sorted((f["op"], f["code"], f["channel"]) for f in refused) == [
        ("error", "forbidden", "repository:r1"), ("error", "forbidden", "user:other")]
    assert {(await ws.expect("subscribed"))["channel"] for _ in range(2)} == {"user:u1", "tenant:t1"}
    await ws.aclose()
    # a malformed channel name in the URL is a bad request
    ws = await ws_connect(server, tok, channels="Bad Channel")
    frames, close = await ws.until_closed()
    assert [(f["op"], f["code"]) for f in frames] == [("error", "bad_channel")] and close == 4400

    async with await ws_open(server, tok=tok) as ws:
        async def answer(frame: Any) -> dict:
            await ws.send(frame)
            return await ws.next()

        async def still_usable() -> None:
            assert await answer({"op": "ping"}) == {"op": "pong"}

        for frame in ("this is not json", "[1, 2]", '"text"', json.dumps({"no": "op"}), json.dumps({"op": 7})):
            error = await answer(frame)
            assert (error["op"], error["code"]) == ("error", "bad_frame"), (frame, error)
            await still_usable()
        error = await answer({"op": "dance"})
        assert (error["op"], error["code"]) == ("error", "unknown_op")
        await still_usable()
        for channel in ("user:other", "tenant:other", "repository:r1"):
            error = await answer({"op": "subscribe", "channel": channel})
            assert (error["op"], error["code"], error["channel"]) == ("error", "forbidden", channel), error
            assert error["message"]
        for channel in ("Bad Channel", "nocolon", "user:", 42):
            error = await answer({"op": "subscribe", "channel": channel})
            assert (error["op"], error["code"]) == ("error", "bad_channel"), (channel, error)
        await still_usable()

        # the refused subscriptions really did not happen: user:other's event never arrives
        await publish(http, server, "user:other", {"for": "other"})
        await publish(http, server, "tenant:other", {"for": "other"}, tenant="other")
        mine = await publish(http, server, "user:u1", {"for": "me"})
        assert [e["id"] for e in await ws.events(1)] == [mine]

        await ws.send("x" * 70_000)  # over MAX_FRAME_BYTES (64 KiB)
        frames, close = await ws.until_closed()
        assert close == 1009, (close, frames)


async def test_sse_and_poll_refuse_bad_tokens_and_channels(server: Any, http: httpx.AsyncClient) -> None:
    good = token("u1", "t1")
    expected = [
        ({"Authorization": "Bearer not.a.jwt"}, {}, 401),
        ({}, {"access_token": "not.a.jwt"}, 401),
        (auth(token("u1", "t1", ttl=-60)), {}, 401),
        ({}, {}, 401),
        (auth(good), {"channels": "user:other"}, 403),
        (auth(good), {"channels": "tenant:other"}, 403),
        (auth(good), {"channels": "repository:r1"}, 403),
        (auth(good), {"channels": "Bad!"}, 400),
        (auth(good), {"channels": "user:u1,nocolon"}, 400),
    ]
    for headers, params, status in expected:
        response = await http.get(_url(server.url, "/v1/poll", {**params, "timeout": 0}), headers=headers)
        assert response.status_code == status, (params, response.text)
        assert set(response.json()) >= {"code", "message"}
        async with SSE(http, server, headers=headers, **params) as sse:
            assert sse.response.status_code == status, (params, sse.response.text)
            assert set(sse.response.json()) >= {"code", "message"}


async def test_channels_of_two_tenants_never_meet(server: Any, http: httpx.AsyncClient) -> None:
    t1 = token("u1", "t1", channels=REPO)
    t2 = token("u1", "t2", channels=REPO)  # the same user id and channel name, in another tenant
    start = (await poll_ok(http, server, t2, channels="repository:r1", timeout=0))["cursor"]
    async with await ws_open(server, "u1", "t1", tok=t1, channels=["repository:r1"]) as ws1, \
            await ws_open(server, "u1", "t2", tok=t2, channels=["repository:r1"]) as ws2, \
            SSE(http, server, t2, channels="repository:r1") as sse2:
        assert sse2.response.status_code == 200
        t1_ids = [await publish(http, server, "repository:r1", {"t": 1}, tenant="t1"),
                  await publish(http, server, "user:u1", {"t": 1}, tenant="t1"),
                  await publish(http, server, "tenant:t1", {"t": 1}, tenant="t1")]
        y = await publish(http, server, "repository:r1", {"t": 2}, tenant="t2")
        t1_ids.append(await publish(http, server, "repository:r1", {"t": 1}, tenant="t1"))
        y2 = await publish(http, server, "user:u1", {"t": 2}, tenant="t2")

        assert [e["id"] for e in await ws2.events(2)] == [y, y2]
        assert [e["id"] for e in await sse2.events(2)] == [y, y2]
        body = await poll_ok(http, server, t2, channels="repository:r1", since=start, timeout=0)
        assert [e["id"] for e in published(body["events"])] == [y, y2], (start, body)
        assert [e["id"] for e in await ws1.events(4)] == t1_ids


# --------------------------------------------------------------------------------------------
# 9. Origin
# --------------------------------------------------------------------------------------------


async def test_websocket_handshake_refuses_origins_not_listed(live_servers: Any, redis_url: str, http: httpx.AsyncClient) -> None:
    server = live_servers(CORS_ORIGINS="https://app.example")
    tok = token("u1", "t1")
    for origin in ("https://evil.example", "https://app.example.evil.example", "http://app.example"):
        with pytest.raises(InvalidStatus) as refused:
            await ws_connect(server, tok, origin=origin)
        assert refused.value.response.status_code == 403
    async with await ws_open(server, tok=tok, origin="https://app.example") as ws:
        event_id = await publish(http, server, "user:u1")
        assert [e["id"] for e in await ws.events(1)] == [event_id]
    async with await ws_open(server, tok=tok):  # no Origin at all: a worker, not a browser
        pass
    # the HTTP routes answer CORS for the listed origin only
    allowed = await http.get(f"{server.url}/healthz", headers={"Origin": "https://app.example"})
    assert allowed.headers.get("access-control-allow-origin") == "https://app.example"
    other = await http.get(f"{server.url}/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


# --------------------------------------------------------------------------------------------
# 10. one-time tickets
# --------------------------------------------------------------------------------------------


async def _ticket(http: httpx.AsyncClient, server: Any, tok: str) -> str:
    response = await http.post(f"{server.url}/v1/tickets", headers=auth(tok))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"ticket", "expires_in"} and body["expires_in"] > 0, body
    return body["ticket"]


async def test_tickets_work_once(server: Any, http: httpx.AsyncClient) -> None:
    tok = token("u1", "t1")
    assert (await http.post(f"{server.url}/v1/tickets")).status_code == 401

    ticket = await _ticket(http, server, tok)
    async with await ws_open(server, "u1", "t1", ticket=ticket) as ws:
        event_id = await publish(http, server, "user:u1")
        assert [e["id"] for e in await ws.events(1)] == [event_id]
    again = await ws_connect(server, ticket=ticket)
    frames, close = await again.until_closed()
    assert close == 4001 and [(f["op"], f["code"]) for f in frames] == [("error", "unauthorized")]
    async with SSE(http, server, ticket=ticket) as sse:  # used is used, whatever the transport
        assert sse.response.status_code == 401

    ticket = await _ticket(http, server, tok)
    async with SSE(http, server, ticket=ticket) as sse:
        assert sse.response.status_code == 200
        event_id = await publish(http, server, "user:u1")
        assert [e["id"] for e in await sse.events(1)] == [event_id]
    async with SSE(http, server, ticket=ticket) as sse:
        assert sse.response.status_code == 401
    again = await ws_connect(server, ticket=ticket)
    assert (await again.until_closed())[1] == 4001


# --------------------------------------------------------------------------------------------
# 11. no credentials in the logs
# --------------------------------------------------------------------------------------------


async def test_query_tokens_and_tickets_never_reach_the_logs(server: Any, http: httpx.AsyncClient) -> None:
    ws_jwt, sse_jwt, poll_jwt = token("u1", "t1"), token("u2", "t1"), token("u3", "t1")
    expired_jwt = token("u4", "t1", ttl=-60)
    ws_ticket = await _ticket(http, server, token("u5", "t1"))
    handshake = '"WebSocket /v1/ws'
    handshakes_before = server.logs().count(handshake)
    sse_ticket = await _ticket(http, server, token("u6", "t1"))

    async with await ws_open(server, "u1", tok=ws_jwt, query_token=True):
        pass
    async with await ws_open(server, "u5", ticket=ws_ticket):
        pass
    for tok, params in ((expired_jwt, {}), (None, {"ticket": ws_ticket})):  # refused: the error paths log too
        ws = await ws_connect(server, tok, query_token=True, **params)
        assert (await ws.until_closed())[1] == 4001
    async with SSE(http, server, sse_jwt, query_token=True) as sse:
        assert sse.response.status_code == 200
    async with SSE(http, server, ticket=sse_ticket) as sse:
        assert sse.response.status_code == 200
    async with SSE(http, server, ticket=sse_ticket) as sse:
        assert sse.response.status_code == 401
    response = await http.get(_url(server.url, "/v1/poll", {"access_token": poll_jwt, "timeout": 0}))
    assert response.status_code == 200

    # uvicorn logs every WebSocket handshake with its URL: wait until these four are in the log
    await eventually(lambda: server.logs().count(handshake) >= handshakes_before + 4, timeout=WAIT)
    logs = server.logs()
    for secret in (ws_jwt, sse_jwt, poll_jwt, expired_jwt, ws_ticket, sse_ticket):
        assert secret not in logs
        assert secret.rsplit(".", 1)[-1] not in logs  # not even a JWT's signature, or a ticket's tail
    # nor any other test's token (this server is shared): nothing JWT-shaped at all
    assert not re.search(r"eyJ[\w-]+\.eyJ[\w-]+", logs)


# --------------------------------------------------------------------------------------------
# 12. the embedded engine (no Redis)
# --------------------------------------------------------------------------------------------


async def test_embedded_engine_serves_every_transport(live_servers: Any, http: httpx.AsyncClient) -> None:
    server = live_servers(redis=False)
    poll_tok = token("up", "t1")
    # a poll on a log that never held an event still hands out a cursor that resumes (no reset)
    empty = await poll_ok(http, server, poll_tok, timeout=0)
    assert (empty["events"], empty["reset"]) == ([], False)

    # WebSocket: live, then resume with since, then live again
    tok = token("uw", "t1")
    async with await ws_open(server, "uw", tok=tok) as ws:
        first = await publish(http, server, "user:uw", {"n": 1})
        [frame] = await ws.events(1)
        check_envelope(frame, first, "user:uw", {"n": 1})
    missed = [await publish(http, server, "user:uw", {"n": n}) for n in (2, 3)]
    async with await ws_open(server, "uw", tok=tok, since=first) as ws:
        assert [e["id"] for e in await ws.events(2)] == missed
        live = await publish(http, server, "user:uw", {"n": 4})
        assert [e["id"] for e in await ws.events(1)] == [live]

    # SSE: the same, resuming with Last-Event-ID
    tok = token("us", "t1")
    async with SSE(http, server, tok) as sse:
        first = await publish(http, server, "user:us", {"n": 1})
        assert [e["id"] for e in await sse.events(1)] == [first]
    missed = [await publish(http, server, "user:us", {"n": n}) for n in (2, 3)]
    async with SSE(http, server, tok, headers={"Last-Event-ID": first}) as sse:
        assert [e["id"] for e in await sse.events(2)] == missed
        live = await publish(http, server, "user:us", {"n": 4})
        assert [e["id"] for e in await sse.events(1)] == [live]

    # long-polling: the cursor of each answer is the next `since`
    tok, cursor = poll_tok, empty["cursor"]
    first = await publish(http, server, "user:up", {"n": 1})
    events, cursor = await poll_until(http, server, tok, cursor, 1)
    assert [e["id"] for e in events] == [first]
    missed = [await publish(http, server, "user:up", {"n": n}) for n in (2, 3)]
    events, cursor = await poll_until(http, server, tok, cursor, 2)
    assert [e["id"] for e in events] == missed
    waiting = asyncio.create_task(poll_until(http, server, tok, cursor, 1))
    live = await publish(http, server, "user:up", {"n": 4})
    assert [e["id"] for e in (await waiting)[0]] == [live]


# --------------------------------------------------------------------------------------------
# 13. a worker publishes with the redis package alone
# --------------------------------------------------------------------------------------------


async def test_worker_publish_through_redis_reaches_a_websocket_client(
        live_server: Any, prefix: str, redis_url: str) -> None:
    client = sync_redis.Redis.from_url(redis_url)
    try:
        async with await ws_open(live_server) as ws:
            # a malformed entry never reaches a client; it is kept aside for an operator
            await asyncio.to_thread(client.xadd, f"{prefix}:ingest",
                                    {"tenant": "t1", "channel": "user:u1", "type": "x", "data": "{not json"})
            await asyncio.to_thread(worker_publish, client, "t1", "user:u1", "build.finished", {"buildId": "b1"},
                                    prefix=prefix)
            [frame] = await ws.events(1)
            check_envelope(frame, frame["id"], "user:u1", {"buildId": "b1"}, type_="build.finished")
        await eventually(lambda: client.xlen(f"{prefix}:ingest:rejected") == 1, timeout=WAIT)
    finally:
        client.close()
