"""Issue 12: no connection set-up is ever left unanswered, and a busy Redis pool is not "down".

Whatever a set-up meets (Redis slow, Redis away, the pool exhausted, a timeout, a bug, the client
leaving half-way), the client is told: a WebSocket gets an error frame and a close code with a
reason (1013 `busy` / `unavailable` with `retry_after` when the engine is at fault, 1011
`internal_error` for a bug), before or after the handshake was accepted; SSE and polling get a named
503 with `Retry-After` (or a named 500 for a bug), never a hang.

Redis is made slow by a proxy that stops forwarding (tests/live_support.StallingProxy: connections
stay open, nothing answers) and away by a proxy that is cut (tests/test_faults.TcpProxy); the pool
is exhausted by holding its connections. Live tests run `python -m app serve` subprocesses; the
in-process ones serve the app with uvicorn on the test's own loop, so the test can reach into it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import pytest
import uvicorn
from prometheus_client import REGISTRY
from redis.exceptions import TimeoutError as RedisTimeoutError
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.main import create_app
from app.settings import Settings
from app.transports import direct
from tests.conftest import LiveServer, free_port, service_token, token
from tests.live_support import WAIT, StallingProxy
from tests.test_faults import TcpProxy

# Short engine timeouts so a stalled Redis is noticed in seconds (the defaults are 5 s and 10 s).
FAST = {"REDIS_SOCKET_TIMEOUT": "2", "REDIS_POOL_TIMEOUT": "1"}
CHANNELS = ["repository:*", "analysis:*"]


class Outcome:
    """What a WebSocket client saw: the frames, then the close code and reason."""

    def __init__(self, frames: list[Any], code: int | None, reason: str | None) -> None:
        self.frames, self.code, self.reason = frames, code, reason

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if isinstance(f, dict) and f.get("op") == "error"]

    def __repr__(self) -> str:
        return f"Outcome(code={self.code}, reason={self.reason!r}, frames={self.frames!r})"


async def ws_outcome(ws_url: str, *, tok: str | None = None, send: list[dict[str, Any]] | None = None,
                     until_subscribed: int = 0, **params: str) -> Outcome:
    """Connect, optionally send frames once `until_subscribed` `subscribed` frames came, and read
    until the server closes (a deadline turns a hang, the bug, into a failure)."""
    query = {"access_token": tok or token("u1", "t1", channels=CHANNELS), **params}
    if "ticket" in params:
        query.pop("access_token")
    frames: list[Any] = []
    async with connect(f"{ws_url}/v1/ws?{urlencode(query)}", proxy=None, open_timeout=WAIT) as conn:
        try:
            async with asyncio.timeout(WAIT):
                subscribed = 0
                async for raw in conn:
                    frame = json.loads(raw)
                    frames.append(frame)
                    if isinstance(frame, dict) and frame.get("op") == "subscribed":
                        subscribed += 1
                        if subscribed == until_subscribed and send:
                            for out in send:
                                await conn.send(json.dumps(out))
                    elif send and subscribed >= until_subscribed and frame.get("op") == "error":
                        break  # the answer to what we sent: the connection is up and serving
        except TimeoutError:
            raise AssertionError(f"the server left the WebSocket unanswered: {frames!r}") from None
        except ConnectionClosed:
            pass
        return Outcome(frames, conn.close_code, conn.close_reason)


def assert_try_again(outcome: Outcome, code: str) -> None:
    assert outcome.code == 1013, outcome
    assert outcome.reason == code, outcome
    assert outcome.errors and outcome.errors[-1]["code"] == code, outcome
    assert outcome.errors[-1]["retry_after"] >= 1, outcome


async def get(http: httpx.AsyncClient, url: str, path: str, **params: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token('u1', 't1', channels=CHANNELS)}"}
    if path == "/v1/sse":
        async with http.stream("GET", f"{url}{path}", params=params, headers=headers) as response:
            await response.aread() if response.status_code != 200 else None
            return response
    return await http.get(f"{url}{path}", params=params, headers=headers)


def assert_503(response: httpx.Response, code: str, retry_after: str) -> None:
    assert response.status_code == 503, (response.request.url.path, response.status_code, response.text[:300])
    assert response.json()["code"] == code, response.text
    assert response.headers.get("retry-after") == retry_after, response.headers


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(WAIT * 2, connect=5.0), trust_env=False) as client:
        yield client


@pytest.fixture
def stalling_redis(redis_url: str) -> Any:
    target = urlsplit(redis_url)
    with StallingProxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        yield proxy


# --------------------------------------------------------------------------------------------
# live: a real server process, Redis slow or away behind a proxy
# --------------------------------------------------------------------------------------------


async def test_redis_slow_at_set_up_is_1013_busy_on_websocket_and_503_busy_on_sse_and_poll(
    live_servers: Callable[..., LiveServer], stalling_redis: StallingProxy, http: httpx.AsyncClient
) -> None:
    server = live_servers(REDIS_URL=f"redis://127.0.0.1:{stalling_redis.port}/0", **FAST)
    ticket = (await http.post(f"{server.url}/v1/tickets",
                              headers={"Authorization": f"Bearer {token('u1', 't1', channels=CHANNELS)}"})).json()["ticket"]
    stalling_redis.stall()
    try:
        plain, with_ticket, sse, poll = await asyncio.gather(
            ws_outcome(server.ws_url, channels="analysis:a1"),
            ws_outcome(server.ws_url, ticket=ticket),  # the ticket is redeemed in Redis, before the session
            get(http, server.url, "/v1/sse", channels="analysis:a1"),
            get(http, server.url, "/v1/poll", channels="analysis:a1", timeout=0),
        )
    finally:
        stalling_redis.resume()
    assert_try_again(plain, "busy")
    assert_try_again(with_ticket, "busy")
    assert_503(sse, "busy", "2")
    assert_503(poll, "busy", "2")
    # Redis answers again: so does the server
    ok = await ws_outcome(server.ws_url, channels="analysis:a1", until_subscribed=3, send=[{"op": "bad"}])
    assert ok.errors[0]["code"] == "unknown_op", ok


async def test_redis_slow_during_an_op_closes_1013_busy(
    live_servers: Callable[..., LiveServer], stalling_redis: StallingProxy
) -> None:
    server = live_servers(REDIS_URL=f"redis://127.0.0.1:{stalling_redis.port}/0", **FAST)

    async def stall_then_subscribe() -> Outcome:
        query = urlencode({"access_token": token("u1", "t1", channels=CHANNELS)})
        async with connect(f"{server.ws_url}/v1/ws?{query}", proxy=None, open_timeout=WAIT) as conn:
            frames = [json.loads(await conn.recv()) for _ in range(2)]  # subscribed user: and tenant:
            stalling_redis.stall()
            await conn.send(json.dumps({"op": "subscribe", "channel": "analysis:a1"}))  # reads its live state
            try:
                async with asyncio.timeout(WAIT):
                    async for raw in conn:
                        frames.append(json.loads(raw))
            except ConnectionClosed:
                pass
            except TimeoutError:
                raise AssertionError(f"unanswered: {frames!r}") from None
            return Outcome(frames, conn.close_code, conn.close_reason)

    try:
        outcome = await stall_then_subscribe()
    finally:
        stalling_redis.resume()
    assert_try_again(outcome, "busy")


async def test_redis_away_at_set_up_is_1013_unavailable_on_websocket_and_503_unavailable_on_sse_and_poll(
    live_servers: Callable[..., LiveServer], redis_url: str, http: httpx.AsyncClient
) -> None:
    proxy = TcpProxy(urlsplit(redis_url).port or 6379).start()
    try:
        server = live_servers(REDIS_URL=f"redis://127.0.0.1:{proxy.port}/0", **FAST)
        proxy.cut()  # every connection dropped and new ones refused, as a Redis restarting
        ws, sse, poll = await asyncio.gather(
            ws_outcome(server.ws_url, channels="analysis:a1"),
            get(http, server.url, "/v1/sse", channels="analysis:a1"),
            get(http, server.url, "/v1/poll", channels="analysis:a1", timeout=0),
        )
        assert_try_again(ws, "unavailable")
        assert_503(sse, "unavailable", "1")
        assert_503(poll, "unavailable", "1")
        metrics = (await http.get(f"{server.url}/metrics")).text
        assert 'realtime_engine_failures_total{kind="unreachable"} 3.0' in metrics, metrics
    finally:
        proxy.close()


# --------------------------------------------------------------------------------------------
# in-process: uvicorn on this loop, so the test can hold the pool or break a part
# --------------------------------------------------------------------------------------------


@asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[tuple[Any, str, str]]:
    """The app served by uvicorn (the same protocols as `python -m app serve`) on this loop."""
    app = create_app(settings)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, ws=direct.DirectWebSocketProtocol,
                            http=direct.DirectHttpProtocol, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(WAIT):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
        yield app, f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, WAIT)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_pool_exhausted_is_busy_counted_as_a_limit_not_an_unreachable_engine(
    make_settings: Callable[..., Settings], redis_url: str, http: httpx.AsyncClient
) -> None:
    settings = make_settings(redis_url=redis_url, redis_max_connections=6, redis_pool_timeout=0.5)
    async with served(settings) as (app, url, ws_url):
        pool = app.state.services.log.redis.connection_pool
        held = []
        try:
            while len(pool._in_use_connections) < pool.max_connections:  # hold every connection
                held.append(await pool.get_connection())
            hits, exhausted = sample("realtime_limit_hits_total", limit="redis_pool"), sample(
                "realtime_engine_failures_total", kind="pool_exhausted")
            ws = await ws_outcome(ws_url)
            poll = await get(http, url, "/v1/poll", timeout=0)
            sse = await get(http, url, "/v1/sse")
        finally:
            for connection in held:
                await pool.release(connection)
        assert_try_again(ws, "busy")
        assert "connection" in ws.errors[-1]["message"], ws
        assert_503(poll, "busy", "2")
        assert_503(sse, "busy", "2")
        assert sample("realtime_limit_hits_total", limit="redis_pool") >= hits + 3
        assert sample("realtime_engine_failures_total", kind="pool_exhausted") == exhausted + 3
        ok = await ws_outcome(ws_url, until_subscribed=2, send=[{"op": "bad"}])  # the pool is free again
        assert ok.errors[0]["code"] == "unknown_op", ok


async def test_a_bug_at_set_up_is_1011_internal_error_and_a_named_500(
    make_settings: Callable[..., Settings], redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with served(make_settings(redis_url=redis_url)) as (app, _url, ws_url):
        services = app.state.services

        async def broken(*args: object) -> str:
            raise ZeroDivisionError("a bug")

        monkeypatch.setattr(services.log, "bounds", broken)  # where a set-up on an empty log reads the head
        ws = await ws_outcome(ws_url)
        assert ws.code == 1011 and ws.reason == "internal_error", ws
        assert ws.errors[-1]["code"] == "internal_error", ws  # not `unavailable`: nothing is down
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                                     base_url="http://app") as local:
            for path in ("/v1/poll", "/v1/sse"):
                response = await get(local, "http://app", path, timeout=0)
                assert response.status_code == 500, (path, response.text)
                assert response.json()["code"] == "internal_error", (path, response.text)

        monkeypatch.setattr(services.verifier, "verify", broken)  # before the session exists
        ws = await ws_outcome(ws_url)
        assert ws.code == 1011 and ws.reason == "internal_error", ws
        assert services.connections.open == 0


async def test_an_engine_timeout_before_accept_answers_the_handshake_503_with_retry_after(
    make_settings: Callable[..., Settings], redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Today nothing before accept() talks to Redis (only the Origin check runs there); should a
    set-up step move before it, its failure still answers: a 503 handshake response."""
    async with served(make_settings(redis_url=redis_url)) as (_app, _url, ws_url):
        def slow(*args: object) -> bool:
            raise RedisTimeoutError("Timeout reading from 127.0.0.1:6379")

        monkeypatch.setattr("app.transports.ws.origin_allowed", slow)
        with pytest.raises(InvalidStatus) as refused:
            await ws_outcome(ws_url)
        response = refused.value.response
        assert response.status_code == 503, response
        assert response.headers.get("Retry-After") == "2", response.headers
        assert json.loads(response.body or b"{}")["code"] == "busy", response.body


async def test_a_client_that_leaves_mid_set_up_is_cleaned_up_quietly(
    make_settings: Callable[..., Settings], redis_url: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture
) -> None:
    async with served(make_settings(redis_url=redis_url)) as (app, _url, ws_url):
        services = app.state.services
        bounds, entered, release = services.log.bounds, asyncio.Event(), asyncio.Event()

        async def slow_bounds(*args: int) -> tuple[str, str]:
            entered.set()
            await release.wait()
            return await bounds(*args)

        monkeypatch.setattr(services.log, "bounds", slow_bounds)
        gauge = sample("realtime_connections", transport="ws")
        query = urlencode({"access_token": token("u1", "t1")})
        with caplog.at_level(logging.INFO):
            async with connect(f"{ws_url}/v1/ws?{query}", proxy=None, open_timeout=WAIT):
                await asyncio.wait_for(entered.wait(), WAIT)  # the set-up is waiting on the engine
            release.set()  # the client is gone; the set-up goes on and meets a closed socket
            async with asyncio.timeout(WAIT):
                while services.connections.open or sample("realtime_connections", transport="ws") != gauge:
                    await asyncio.sleep(0.02)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


async def test_a_parked_long_poll_holds_no_redis_connection(
    make_settings: Callable[..., Settings], redis_url: str
) -> None:
    settings = make_settings(redis_url=redis_url, redis_max_connections=8, max_connections=0)
    async with served(settings) as (app, url, _ws_url):
        pool = app.state.services.log.redis.connection_pool
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(timeout=WAIT * 2, limits=limits, trust_env=False) as http:
            polls = [asyncio.create_task(get(http, url, "/v1/poll", timeout=10, client_id=f"c{i}")) for i in range(40)]
            async with asyncio.timeout(WAIT):
                while sample("realtime_connections", transport="poll") < 40:
                    await asyncio.sleep(0.02)
            # 40 polls waiting on a pool of 8 (the tail, ingest and push worker hold up to 3 of them):
            # once their set-up is done, they hold none (a parked poll would keep the pool full)
            async with asyncio.timeout(WAIT):
                while len(pool._in_use_connections) > 4:
                    await asyncio.sleep(0.02)
            for _ in range(25):
                assert len(pool._in_use_connections) <= 4, len(pool._in_use_connections)
                await asyncio.sleep(0.02)
            assert sample("realtime_connections", transport="poll") == 40  # all still waiting
            body = {"tenant": "t1", "channel": "tenant:t1", "type": "test.wake", "data": {}}
            published = await http.post(f"{url}/v1/events", json=body, headers={"Authorization": f"Bearer {service_token()}"})
            assert published.status_code == 202, published.text
            answers = await asyncio.gather(*polls)
        assert [a.status_code for a in answers] == [200] * 40
        assert all(a.json()["events"][-1]["type"] == "test.wake" for a in answers)
