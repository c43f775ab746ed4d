"""Operator-set limits (app.limits): each one hit over real sockets gives the client its named code
and the operator a count in `realtime_limit_hits_total{limit}`; under each limit nothing is refused.

Rates in the live servers are set so low (0.001 per second) that no token comes back during a test:
what is refused depends on counts only, never on how fast the machine is. The bucket itself is
tested with an injected clock.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError

from app import metrics
from app.errors import RateLimited, TooManyConnections
from app.limits import ConnectionSlots, MessageRate, RateLimiter, TokenBucket, retry_after_header
from app.settings import Settings
from tests.conftest import TEST_SECRET, LiveServer, auth, eventually, free_port, running_app, token
from tests.test_transports_live import WAIT, Closed, is_presence, metric, ws_connect, ws_open


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def hits(limit: str) -> float:
    """This process's count of one limit's refusals (in-process tests)."""
    return REGISTRY.get_sample_value("realtime_limit_hits_total", {"limit": limit}) or 0.0


# --------------------------------------------------------------------------------------------
# units: the bucket, the keyed limiter, the connection slots (an injected clock, no sleeping)
# --------------------------------------------------------------------------------------------


def test_a_bucket_admits_its_burst_then_says_how_long_to_wait() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)  # one token at 2 per second
    assert bucket.take() == pytest.approx(0.5)  # a refusal takes nothing
    clock.now += 0.5
    assert bucket.take() == 0.0
    assert bucket.take() == pytest.approx(0.5)


def test_a_bucket_never_saves_up_more_than_its_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10.0, burst=2, clock=clock)
    clock.now += 3600
    assert [bucket.take() for _ in range(3)][:2] == [0.0, 0.0]
    assert bucket.take() > 0


def test_a_bucket_refuses_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1)
    with pytest.raises(ValueError):
        TokenBucket(rate=1, burst=0)


def test_keys_have_their_own_buckets() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=2, clock=clock)
    assert [limiter.take("a"), limiter.take("a")] == [0.0, 0.0]
    assert limiter.take("a") == pytest.approx(1.0)
    assert limiter.take("b") == 0.0


def test_idle_buckets_are_forgotten_once_full_again() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=2, clock=clock)
    for key in ("a", "b", "c"):
        limiter.take(key)
    assert len(limiter) == 3
    clock.now += 0.5  # half a token back: none is full yet, so none may be forgotten
    limiter.take("c")
    assert len(limiter) == 3
    clock.now += 10  # all full again: indistinguishable from new ones
    limiter.take("d")
    assert len(limiter) == 1
    # forgetting a full bucket changes nothing for its key: a whole burst again
    assert [limiter.take("a"), limiter.take("a")] == [0.0, 0.0]
    assert limiter.take("a") > 0


def test_the_bucket_map_is_bounded_even_when_every_key_is_busy() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=0.001, burst=1, max_keys=100, clock=clock)
    for i in range(1000):
        limiter.take(f"key{i}")
    assert len(limiter) == 100
    assert limiter.take("key999") > 0  # the most recent keys are the ones kept


def test_connection_slots_refuse_past_the_maximum_and_count_it() -> None:
    slots = ConnectionSlots(2)
    before = hits("connections")
    slots.acquire()
    slots.acquire()
    with pytest.raises(TooManyConnections) as refused:
        slots.acquire()
    assert refused.value.status == 503 and refused.value.code == "too_many_connections"
    assert refused.value.retry_after is not None and refused.value.retry_after > 0
    assert hits("connections") == before + 1
    slots.release()
    slots.acquire()  # a released slot is usable again
    assert slots.open == 2


def test_zero_connections_means_unlimited_and_a_stray_release_is_a_bug() -> None:
    slots = ConnectionSlots(0)
    for _ in range(10_000):
        slots.acquire()
    assert slots.open == 10_000
    with pytest.raises(RuntimeError):
        ConnectionSlots(1).release()


def test_a_websocket_flood_is_refused_then_marked_persistent() -> None:
    clock = FakeClock()
    rate = MessageRate(rate=1.0, burst=3, clock=clock)
    before = hits("ws_message_rate")
    assert [rate.check() for _ in range(3)] == [None, None, None]
    refusals = [rate.check() for _ in range(6)]
    assert all(isinstance(r, RateLimited) and r.code == "rate_limited" for r in refusals)
    assert rate.persistent  # 2 x burst refused in a row
    assert hits("ws_message_rate") == before + 6


def test_an_admitted_frame_ends_a_streak_of_refusals() -> None:
    clock = FakeClock()
    rate = MessageRate(rate=1.0, burst=2, clock=clock)
    assert (rate.check(), rate.check()) == (None, None)
    for _ in range(3):
        assert rate.check() is not None
    assert not rate.persistent
    clock.now += 1
    assert rate.check() is None
    assert rate.refused_in_a_row == 0


def test_retry_after_is_whole_seconds_and_never_zero() -> None:
    assert [retry_after_header(s) for s in (0.001, 0.999, 1.0, 1.2, 30)] == ["1", "1", "1", "2", "30"]


def test_max_subscriptions_leaves_room_for_the_automatic_channels() -> None:
    with pytest.raises(ValidationError, match="MAX_SUBSCRIPTIONS"):
        Settings(max_subscriptions=1)
    assert Settings(max_subscriptions=0).max_subscriptions == 0
    assert Settings(max_subscriptions=2).max_subscriptions == 2


# --------------------------------------------------------------------------------------------
# in process: the configured limits are exposed and the HTTP refusals are documented
# --------------------------------------------------------------------------------------------


async def test_configured_limits_and_their_refusals_are_visible_to_operators(make_settings: Any) -> None:
    settings = make_settings(max_connections=7, publish_per_second=3, publish_burst=4)
    async with running_app(settings) as (_, client):
        text = (await client.get("/metrics")).text
        assert 'realtime_limit{limit="connections"} 7.0' in text
        assert 'realtime_limit{limit="publish_per_second"} 3.0' in text
        for name in metrics.LIMIT_NAMES:  # every series exists before its first hit
            assert re.search(rf'^realtime_limit_hits_total{{limit="{name}"}} ', text, re.MULTILINE), name
        paths = (await client.get("/openapi.json")).json()["paths"]
    assert "429" in paths["/v1/events"]["post"]["responses"]
    assert "Retry-After" in paths["/v1/events"]["post"]["responses"]["429"]["headers"]
    for path in ("/v1/sse", "/v1/poll"):
        responses = paths[path]["get"]["responses"]
        assert "too_many_connections" in responses["503"]["description"], path
        assert "too_many_subscriptions" in responses["422"]["description"], path


async def test_publish_rate_in_process_is_per_token_subject(make_settings: Any) -> None:
    settings = make_settings(publish_per_second=0.001, publish_burst=2)
    event = {"tenant": "t1", "channel": "analysis:a1", "type": "test.event", "data": {}}
    async with running_app(settings) as (_, client):
        before = hits("publish_rate")
        a = auth(token("svc-a", "t1", scope="publish"))
        assert [(await client.post("/v1/events", json=event, headers=a)).status_code for _ in range(2)] == [202, 202]
        refused = await client.post("/v1/events", json=event, headers=a)
        assert refused.status_code == 429 and refused.json()["code"] == "rate_limited"
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["retry_after"] > 0
        assert hits("publish_rate") == before + 1
        # another service (subject) has its own budget
        b = auth(token("svc-b", "t1", scope="publish"))
        assert (await client.post("/v1/events", json=event, headers=b)).status_code == 202


# --------------------------------------------------------------------------------------------
# over real sockets
# --------------------------------------------------------------------------------------------

LIMITED_ENV = {
    "MAX_SUBSCRIPTIONS": "3",  # user:, tenant: and one more
    "WS_MESSAGES_PER_SECOND": "0.001", "WS_MESSAGE_BURST": "4",
    "PUBLISH_PER_SECOND": "0.001", "PUBLISH_BURST": "3",
    "MAX_FRAME_BYTES": "256",
    "MAX_EVENT_BYTES": "512",
}


def _start(tmp: Path, extra: dict[str, str]) -> LiveServer:
    """A server on the embedded engine (limits do not depend on it) with `extra` settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update({"DATA_DIR": str(tmp), "JWT_SECRET": TEST_SECRET, **extra})
    return LiveServer(env, free_port()).start()


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server with every per-connection and per-token limit set low, shared by this module."""
    server = _start(tmp_path_factory.mktemp("limited"), LIMITED_ENV)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(WAIT * 2, connect=5.0), trust_env=False) as client:
        yield client


async def next_op(ws: Any) -> Any:
    """The next control frame (or the end), past the presence events that repository channels carry."""
    while True:
        frame = await ws.next()
        if isinstance(frame, Closed) or "op" in frame or not is_presence(frame):
            return frame


async def live_hits(http: httpx.AsyncClient, server: LiveServer, limit: str) -> float:
    return await metric(http, server, f'realtime_limit_hits_total{{limit="{limit}"}}')


async def test_websocket_subscriptions_past_the_cap_are_refused_and_the_connection_stays(
        limited: LiveServer, http: httpx.AsyncClient) -> None:
    before = await live_hits(http, limited, "subscriptions")
    # at the cap (user:, tenant:, repository:r1): nothing refused
    ws = await ws_open(limited, "subs1", channels=["repository:r1"])
    try:
        await ws.send({"op": "subscribe", "channel": "repository:r2"})
        refused = await next_op(ws)
        assert (refused["op"], refused["code"], refused["channel"]) == ("error", "too_many_subscriptions", "repository:r2")
        await ws.send({"op": "ping"})
        assert await next_op(ws) == {"op": "pong"}  # still connected
        await ws.send({"op": "unsubscribe", "channel": "repository:r1"})
        assert await next_op(ws) == {"op": "unsubscribed", "channel": "repository:r1"}
        await ws.send({"op": "subscribe", "channel": "repository:r2"})  # room again
        assert await next_op(ws) == {"op": "subscribed", "channel": "repository:r2"}
    finally:
        await ws.aclose()
    # too many in the URL: each extra one reported, the rest joined
    ws = await ws_connect(limited, token("subs2", "t1", channels=["repository:*"]), channels="repository:r1,repository:r2")
    try:
        frames = [await next_op(ws) for _ in range(4)]
        errors = [f for f in frames if f["op"] == "error"]
        assert [(f["code"], f["channel"]) for f in errors] == [("too_many_subscriptions", "repository:r2")]
        assert {f["channel"] for f in frames if f["op"] == "subscribed"} == {"user:subs2", "tenant:t1", "repository:r1"}
    finally:
        await ws.aclose()
    assert await live_hits(http, limited, "subscriptions") == before + 2


async def test_sse_and_poll_refuse_more_channels_than_the_cap_with_422(limited: LiveServer, http: httpx.AsyncClient) -> None:
    tok = auth(token("subs3", "t1", channels=["repository:*"]))
    before = await live_hits(http, limited, "subscriptions")
    ok = await http.get(f"{limited.url}/v1/poll", params={"channels": "repository:r1", "timeout": 0}, headers=tok)
    assert ok.status_code == 200, ok.text
    async with http.stream("GET", f"{limited.url}/v1/sse", params={"channels": "repository:r1"}, headers=tok) as stream:
        assert stream.status_code == 200
    for path, params in (("/v1/poll", {"timeout": 0}), ("/v1/sse", {})):
        refused = await http.get(f"{limited.url}{path}", params={"channels": "repository:r1,repository:r2", **params},
                                 headers=tok)
        assert refused.status_code == 422, (path, refused.text)
        assert refused.json()["code"] == "too_many_subscriptions" and refused.json()["channel"] == "repository:r2"
    assert await live_hits(http, limited, "subscriptions") == before + 2


async def test_a_websocket_client_over_its_frame_rate_gets_rate_limited_and_stays_connected(
        limited: LiveServer, http: httpx.AsyncClient) -> None:
    before = await live_hits(http, limited, "ws_message_rate")
    ws = await ws_open(limited, "rate1")
    try:
        for _ in range(4):  # the burst: all answered
            await ws.send({"op": "ping"})
        assert [await ws.next() for _ in range(4)] == [{"op": "pong"}] * 4
        await ws.send({"op": "ping"})
        refused = await ws.next()
        assert refused["op"] == "error" and refused["code"] == "rate_limited" and refused["retry_after"] > 0
        # still connected: live events keep arriving
        service = auth(token("rate1-publisher", "t1", scope="publish"))
        published = await http.post(f"{limited.url}/v1/events", headers=service,
                                     json={"tenant": "t1", "channel": "user:rate1", "type": "test.event", "data": {"n": 1}})
        assert published.status_code == 202, published.text
        event = await ws.next()
        assert event["id"] == published.json()["id"]
    finally:
        await ws.aclose()
    assert await live_hits(http, limited, "ws_message_rate") == before + 1


async def test_a_websocket_client_that_keeps_flooding_is_closed_with_1008(limited: LiveServer, http: httpx.AsyncClient) -> None:
    before = await live_hits(http, limited, "ws_message_rate")
    ws = await ws_open(limited, "rate2")
    try:
        for _ in range(4 + 8 + 5):  # the burst, then twice the burst refused, then more the server never reads
            await ws.send({"op": "ping"})
        frames, close = await ws.until_closed()
    finally:
        await ws.aclose()
    assert frames[:4] == [{"op": "pong"}] * 4
    assert [f["code"] for f in frames[4:]] == ["rate_limited"] * 8
    assert close == 1008
    assert await live_hits(http, limited, "ws_message_rate") == before + 8


async def test_publish_rate_is_per_token_subject_over_http(limited: LiveServer, http: httpx.AsyncClient) -> None:
    before = await live_hits(http, limited, "publish_rate")
    event = {"tenant": "t1", "channel": "analysis:p1", "type": "test.event", "data": {}}
    first = auth(token("pub1", "t1", scope="publish"))
    for _ in range(3):  # the burst: accepted
        assert (await http.post(f"{limited.url}/v1/events", json=event, headers=first)).status_code == 202
    refused = await http.post(f"{limited.url}/v1/events", json=event, headers=first)
    assert refused.status_code == 429 and refused.json()["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) >= 1
    # a fresh token for the same service (tenant and subject) shares the budget
    again = auth(token("pub1", "t1", scope="publish", ttl=900))
    assert (await http.post(f"{limited.url}/v1/events", json=event, headers=again)).status_code == 429
    other = auth(token("pub2", "t1", scope="publish"))
    assert (await http.post(f"{limited.url}/v1/events", json=event, headers=other)).status_code == 202
    assert await live_hits(http, limited, "publish_rate") == before + 2


async def test_frame_and_payload_size_refusals_are_counted(limited: LiveServer, http: httpx.AsyncClient) -> None:
    frames_before = await live_hits(http, limited, "frame_size")
    ws = await ws_open(limited, "size1")
    try:
        await ws.send({"op": "ping", "pad": "x" * 200})  # under 256 bytes: answered
        assert await ws.next() == {"op": "pong"}
        await ws.send({"op": "ping", "pad": "x" * 300})
        frames, close = await ws.until_closed()
    finally:
        await ws.aclose()
    assert [f["code"] for f in frames] == ["bad_frame"] and close == 1009
    assert await live_hits(http, limited, "frame_size") == frames_before + 1

    payload_before = await live_hits(http, limited, "payload_size")
    service = auth(token("size-publisher", "t1", scope="publish"))
    small = {"tenant": "t1", "channel": "analysis:s1", "type": "test.event", "data": {"pad": "x" * 100}}
    assert (await http.post(f"{limited.url}/v1/events", json=small, headers=service)).status_code == 202
    big = {**small, "data": {"pad": "x" * 600}}
    refused = await http.post(f"{limited.url}/v1/events", json=big, headers=service)
    assert refused.status_code == 413 and refused.json()["code"] == "event_too_large"
    assert await live_hits(http, limited, "payload_size") == payload_before + 1


async def test_connections_past_the_cap_are_refused_on_every_transport(tmp_path: Path, http: httpx.AsyncClient) -> None:
    server = _start(tmp_path, {"MAX_CONNECTIONS": "2"})
    try:
        tok = token("conn1", "t1")
        service = auth(token("conn-publisher", "t1", scope="publish"))

        async def publish() -> str:
            response = await http.post(f"{server.url}/v1/events", headers=service,
                                       json={"tenant": "t1", "channel": "user:conn1", "type": "test.event", "data": {}})
            assert response.status_code == 202, response.text
            return response.json()["id"]

        async def poll(**params: Any) -> httpx.Response:
            return await http.get(f"{server.url}/v1/poll", params=params, headers=auth(tok))

        # at the cap: a WebSocket and a waiting long-poll (resuming, so it cannot miss the event below)
        ws = await ws_open(server, "conn1")
        waiting = asyncio.create_task(poll(since=await publish(), timeout=WAIT))
        await eventually(lambda: _metric_at_least(http, server, 'realtime_connections{transport="poll"}', 1), timeout=WAIT)
        before = await live_hits(http, server, "connections")

        sse = await http.get(f"{server.url}/v1/sse", headers=auth(tok))
        assert sse.status_code == 503 and sse.json()["code"] == "too_many_connections"
        assert int(sse.headers["Retry-After"]) >= 1
        refused = await poll(timeout=0)
        assert refused.status_code == 503 and refused.json()["code"] == "too_many_connections"
        assert int(refused.headers["Retry-After"]) >= 1
        extra = await ws_connect(server, tok)
        frames, close = await extra.until_closed()
        await extra.aclose()
        assert [(f["op"], f["code"]) for f in frames] == [("error", "too_many_connections")] and close == 1013
        assert await live_hits(http, server, "connections") == before + 3

        # the long-poll's slot comes back once it has answered, the WebSocket's once it is closed:
        # then two requests at once are both admitted (retried until the server has let go of them)
        event_id = await publish()
        answered = await waiting
        assert answered.status_code == 200 and [e["id"] for e in answered.json()["events"]] == [event_id]
        await ws.aclose()

        async def both_admitted() -> bool:
            return [r.status_code for r in await asyncio.gather(poll(timeout=0), poll(timeout=0))] == [200, 200]

        await eventually(both_admitted, timeout=WAIT, interval=0.2)
    finally:
        server.stop()


async def _metric_at_least(http: httpx.AsyncClient, server: LiveServer, sample: str, value: float) -> bool:
    return await metric(http, server, sample) >= value

