"""REDIS_MAX_CONNECTIONS: one bounded pool per process, and requests that find it busy wait for a
connection (README: "a request waits (up to REDIS_POOL_TIMEOUT, 10 s) when all are busy") instead of
failing; a wait that runs out is a retryable 503 `busy` (not `unavailable`: Redis is not down, this
process has too much to do), never a 500 and never a hang.

The smallest pool allowed (4) is busy almost by itself: the hub's tail, the ingest reader and the
push worker each hold a connection in a blocking read most of the time. To keep it busy for longer
than the wait, the server reaches Redis through a proxy (tests/live_support.py) that stops
forwarding: the connections stay open and answer nothing. A request that did get a connection then
waits for its reply until the client's read timeout (REDIS_SOCKET_TIMEOUT, 5 s) and answers 503
`busy` as well.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis as sync_redis
import redis.asyncio as aioredis

from app.redis_client import Pool
from tests.conftest import REDIS_URL, LiveServer, service_token, token
from tests.live_support import WAIT, StallingProxy

POOL = {"REDIS_MAX_CONNECTIONS": "4"}
POOL_WAIT = 10  # the pool's timeout (REDIS_POOL_TIMEOUT); what a request may wait for a connection


@pytest.fixture
async def http() -> Any:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    # the burst opens 500 connections at once from one event loop (anyio resolves each address in
    # a worker thread of forty): on a loaded machine a connect may wait its turn for seconds
    timeout = httpx.Timeout(POOL_WAIT + WAIT * 2, connect=WAIT)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False) as client:
        yield client


async def publish(http: httpx.AsyncClient, server: LiveServer, n: int) -> httpx.Response:
    body = {"tenant": "t1", "channel": "repository:pool", "type": "test.event", "data": {"n": n}}
    return await http.post(f"{server.url}/v1/events", json=body, headers={"Authorization": f"Bearer {service_token()}"})


async def poll(http: httpx.AsyncClient, server: LiveServer, **params: Any) -> httpx.Response:
    return await http.get(f"{server.url}/v1/poll", params={"timeout": 0, "channels": "repository:pool", **params},
                          headers={"Authorization": f"Bearer {token('u1', 't1', channels=['repository:*'])}"})


async def ticket(http: httpx.AsyncClient, server: LiveServer) -> httpx.Response:
    return await http.post(f"{server.url}/v1/tickets", headers={"Authorization": f"Bearer {token('u1', 't1')}"})


async def sse_status(http: httpx.AsyncClient, server: LiveServer) -> httpx.Response:
    async with http.stream("GET", f"{server.url}/v1/sse", params={"channels": "repository:pool"},
                           headers={"Authorization": f"Bearer {token('u1', 't1', channels=['repository:*'])}"}) as response:
        if response.status_code != 200:
            await response.aread()
        return response


async def test_a_burst_on_the_smallest_pool_waits_and_completes(
    live_servers: Callable[..., LiveServer], redis_url: str, http: httpx.AsyncClient
) -> None:
    server = live_servers(**POOL)
    start = (await poll(http, server)).json()["cursor"]
    requests = ([publish(http, server, n) for n in range(100)] + [poll(http, server) for _ in range(30)]
                + [ticket(http, server) for _ in range(20)] + [sse_status(http, server) for _ in range(10)])
    responses = await asyncio.wait_for(asyncio.gather(*requests), POOL_WAIT + WAIT * 2)
    failed = [(r.request.method, r.request.url.path, r.status_code, r.text[:200]) for r in responses if r.status_code >= 300]
    assert failed == []
    # and every publish is in the log, once
    published = {r.json()["id"] for r in responses[:100]}
    seen: set[str] = set()
    since = start
    while True:
        body = (await poll(http, server, since=since)).json()
        if not body["events"]:
            break
        seen |= {e["id"] for e in body["events"] if e["type"] == "test.event"}
        since = body["cursor"]
    assert seen == published and len(published) == 100


async def test_a_pool_busy_past_its_wait_answers_503_busy_then_recovers(
    live_servers: Callable[..., LiveServer], redis_url: str, http: httpx.AsyncClient
) -> None:
    target = urlsplit(redis_url)
    with StallingProxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        server = live_servers(REDIS_URL=f"redis://127.0.0.1:{proxy.port}/0", **POOL)
        warm = await asyncio.gather(*(publish(http, server, n) for n in range(40)))  # the pool at its size
        assert [r.status_code for r in warm] == [202] * 40

        proxy.stall()  # Redis answers nothing now: every connection of the pool stays busy
        try:
            # requests that wait for a connection give up after the pool's wait, and those that
            # got one after the read timeout: each one a clear 503 (this deadline only ends a hang)
            stalled = await asyncio.wait_for(asyncio.gather(
                *[publish(http, server, n) for n in range(6)], *[poll(http, server) for _ in range(3)],
                *[ticket(http, server) for _ in range(3)], *[sse_status(http, server) for _ in range(3)]),
                POOL_WAIT + WAIT * 2)
            for response in stalled:
                assert response.status_code == 503, (response.request.url.path, response.status_code, response.text[:300])
                assert response.json()["code"] == "busy", response.text
                assert response.headers.get("retry-after") == "2"
        finally:
            proxy.resume()
        # Redis answers again: the server works as before
        after = await asyncio.gather(*(publish(http, server, n) for n in range(10)))
        assert [r.status_code for r in after] == [202] * 10
        assert (await http.get(f"{server.url}/readyz")).status_code == 200


# --------------------------------------------------------------------------------------------
# after a burst the pool returns to its size at rest (REDIS_POOL_IDLE_SECONDS, REDIS_POOL_MIN_IDLE)
# --------------------------------------------------------------------------------------------


def pool_connections(name: str) -> int:
    """This server's TCP connections to Redis, as Redis sees them (named by `client_name` in REDIS_URL)."""
    client = sync_redis.Redis.from_url(REDIS_URL)
    try:
        return sum(1 for c in client.client_list() if c.get("name") == name)
    finally:
        client.close()


async def test_the_pool_returns_to_its_size_at_rest_after_a_burst(
    live_servers: Callable[..., LiveServer], redis_url: str, http: httpx.AsyncClient
) -> None:
    name = f"pooltest-{uuid.uuid4().hex[:8]}"
    server = live_servers(REDIS_URL=f"{redis_url}?client_name={name}", REDIS_POOL_IDLE_SECONDS="1",
                          REDIS_POOL_MIN_IDLE="0")
    await poll(http, server)
    await asyncio.sleep(2)  # the background readers (tail, ingest, push worker, presence) settle
    rest = max([pool_connections(name) for _ in range(10) if not await asyncio.sleep(0.1)])
    # a burst: concurrent publishes and polls (each of its own client_id: a stored cursor read and
    # written, each borrowing a connection at the same time); the peak is sampled while it runs
    # (on a loaded machine the reaper may start before it ends). Redis holds writes back for a
    # moment (CLIENT PAUSE WRITE, at most 4 s: under REDIS_SOCKET_TIMEOUT), so the requests' Redis
    # calls overlap however fast Redis answers and however slowly this loaded machine lets the
    # requests in; writes go on as soon as the pool has grown.
    pauser = sync_redis.Redis.from_url(REDIS_URL)
    try:
        pauser.client_pause(4000, all=False)
        burst = asyncio.gather(*[publish(http, server, n) for n in range(400)],
                               *[poll(http, server, client_id=f"burst-{i}") for i in range(100)])
        peak, paused = 0, True
        while not burst.done():
            peak = max(peak, await asyncio.to_thread(pool_connections, name))
            if paused and peak > rest + 5:
                await asyncio.to_thread(pauser.client_unpause)
                paused = False
    finally:
        pauser.close()
    responses = await burst
    assert all(r.status_code < 300 for r in responses)
    assert peak > rest + 5, (rest, peak)  # the burst grew the pool (else this test shows nothing)
    deadline = asyncio.get_running_loop().time() + WAIT
    while (now := pool_connections(name)) > rest:
        assert asyncio.get_running_loop().time() < deadline, f"pool stayed at {now} (rest {rest}, peak {peak})"
        await asyncio.sleep(0.2)
    metrics = (await http.get(f"{server.url}/metrics")).text
    reaped = re.search(r"^realtime_redis_pool_reaped_total (\S+)", metrics, re.M)
    assert reaped and float(reaped.group(1)) >= peak - rest, metrics


async def test_the_reaper_closes_only_connections_idle_past_the_limit_beyond_the_floor(redis_url: str) -> None:
    pool = Pool.from_url(redis_url, max_connections=50, timeout=1)
    redis = aioredis.Redis.from_pool(pool)
    try:
        await asyncio.gather(*(redis.blpop([f"reaper-test-{uuid.uuid4().hex}"], timeout=0.2) for _ in range(20)))
        assert pool.size == 20 and pool.in_use == 0
        assert await pool.reap(idle_seconds=60, keep_idle=2) == 0  # none idle long enough
        await asyncio.sleep(0.3)
        await redis.ping()  # the most recently used one is fresh again
        assert await pool.reap(idle_seconds=0.25, keep_idle=2) == 18  # the floor of 2 stays, the fresh one among them
        assert pool.size == 2
        assert await redis.ping()  # and the pool still works
    finally:
        await redis.aclose()
