"""One REDIS_PARTITIONS count at a time per Redis and prefix (app/eventlog/layout.py): a process of
another count refuses to start while one runs, in-process and as a real server; a clean stop
withdraws at once, a killed process lapses; two counts that slipped in together are said loudly.
On the local Redis (one primary): the guard is the same on Sentinel and Cluster, one hash key."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from app.eventlog import layout
from app.eventlog.layout import LayoutGuard, MixedLayouts
from app.keys import Keys
from tests.conftest import LiveServer, eventually, token
from tests.test_transports_live import WAIT, poll_ok, publish


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def mixed_seen() -> float:
    return REGISTRY.get_sample_value("realtime_engine_failures_total", {"kind": "mixed_layouts"}) or 0.0


async def test_another_count_refuses_to_start_until_the_first_stops(redis: aioredis.Redis, prefix: str) -> None:
    two, also_two = LayoutGuard(redis, Keys(prefix, partitions=2)), LayoutGuard(redis, Keys(prefix, partitions=2))
    three = LayoutGuard(redis, Keys(prefix, partitions=3))
    await two.start()
    await also_two.start()  # the same count: as many processes as wanted
    with pytest.raises(MixedLayouts, match="REDIS_PARTITIONS=3, but processes with REDIS_PARTITIONS=2"):
        await three.start()
    await two.stop()
    with pytest.raises(MixedLayouts):  # one of them still runs
        await three.start()
    await also_two.stop()
    await three.start()  # both withdrew: at once, no waiting for a lapse
    assert await LayoutGuard(redis, Keys(prefix, partitions=2)).others() == [3]
    await three.stop()


async def test_a_killed_process_lapses_after_the_ttl(redis: aioredis.Redis, prefix: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layout, "TTL_SECONDS", 0.5)
    killed = LayoutGuard(redis, Keys(prefix, partitions=2))
    await killed.start()
    assert killed._task is not None
    killed._task.cancel()  # as kill -9 leaves it: no heartbeat, nothing withdrawn
    await asyncio.gather(killed._task, return_exceptions=True)
    four = LayoutGuard(redis, Keys(prefix, partitions=4))
    with pytest.raises(MixedLayouts):
        await four.start()

    async def starts() -> bool:
        try:
            await four.start()
        except MixedLayouts:
            return False
        return True

    await eventually(starts, timeout=WAIT)

    async def pruned() -> bool:  # a field lapsed for another TTL is removed by the next beat
        await four._announce()
        return [key.split(b"|")[0] for key in await redis.hkeys(Keys(prefix).layouts)] == [b"4"]

    await eventually(pruned, timeout=WAIT, interval=0.1)
    await four.stop()
    assert await redis.hkeys(Keys(prefix).layouts) == []  # withdrawn


async def test_two_counts_that_started_together_are_said_loudly(redis: aioredis.Redis, prefix: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layout, "HEARTBEAT_SECONDS", 0.05)
    first = LayoutGuard(redis, Keys(prefix, partitions=2))
    late = LayoutGuard(redis, Keys(prefix, partitions=5))
    await late.start()
    await first._announce()  # past its check in the same instant: announced, heartbeat running
    first._task = asyncio.create_task(first._run())
    before = mixed_seen()
    try:
        await eventually(lambda: mixed_seen() >= before + 2, timeout=WAIT)  # each of the two saw the other
    finally:
        await first.stop()
        await late.stop()


async def test_a_server_of_another_count_refuses_to_start_and_the_next_layout_resets_old_cursors(
        live_servers: Callable[..., LiveServer], redis_url: str, prefix: str) -> None:
    async with httpx.AsyncClient(timeout=httpx.Timeout(WAIT * 2, connect=5.0), trust_env=False) as http:
        old = live_servers(REDIS_PARTITIONS="2")
        cursor = await publish(http, old, "tenant:t1", {"n": 1})
        with pytest.raises(RuntimeError, match="REDIS_PARTITIONS=3, but processes with REDIS_PARTITIONS=2") as refused:
            live_servers(REDIS_PARTITIONS="3")
        assert "stop-then-start" in str(refused.value)
        assert not (await poll_ok(http, old, token("u1", "t1"), since=cursor, timeout=0))["reset"]  # the old one serves on
        old.stop()
        new = live_servers(REDIS_PARTITIONS="3")
        answer: dict[str, Any] = await poll_ok(http, new, token("u1", "t1"), since=cursor, timeout=0)
        assert answer["reset"] is True, answer  # a cursor of the old layout: reset, never a silent gap
