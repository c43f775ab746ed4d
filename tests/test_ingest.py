"""The Redis ingest stream: workers publish with one XADD, the service validates and appends.

Redis only. Each test has its own key prefix, so its ingest stream, consumer group, rejected
stream and log are its own.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator

import orjson
import pytest
import redis as sync_redis
from prometheus_client import REGISTRY

from app.eventlog import create_event_log
from app.eventlog.base import ZERO, Event, parse_cursor
from app.eventlog.redis import RedisEventLog
from app.ingest import GROUP, Ingest
from app.publisher import apublish, publish
from app.settings import Settings
from tests.conftest import eventually

MAX_EVENT_BYTES = 65536


@pytest.fixture
async def log(make_settings: Callable[..., Settings], redis_url: str) -> AsyncIterator[RedisEventLog]:
    event_log = create_event_log(make_settings(redis_url=redis_url))
    assert isinstance(event_log, RedisEventLog)
    await event_log.start()
    yield event_log
    await event_log.close()


@pytest.fixture
async def make_ingest(log: RedisEventLog, prefix: str) -> AsyncIterator[Callable[..., Ingest]]:
    """Ingests on the log's own Redis client; every one is stopped afterwards (before the log closes)."""
    made: list[Ingest] = []

    def build(claim_idle_ms: int = 100) -> Ingest:
        ingest = Ingest(log.redis, log, prefix=prefix, max_event_bytes=MAX_EVENT_BYTES, claim_idle_ms=claim_idle_ms)
        made.append(ingest)
        return ingest

    yield build
    for ingest in made:
        await ingest.stop()


@pytest.fixture
def worker_redis(redis_url: str) -> Iterator[sync_redis.Redis]:
    """What a backend worker has: the synchronous `redis` package."""
    client = sync_redis.Redis.from_url(redis_url)
    yield client
    client.close()


async def events_of(log: RedisEventLog, tenant: str, channel: str) -> list[Event]:
    return await log.read(tenant, channel, ZERO, await log.head(), 10_000)


async def appears(log: RedisEventLog, tenant: str, channel: str, count: int) -> list[Event]:
    """Wait until the channel holds `count` events (the ingest works asynchronously)."""

    async def check() -> list[Event] | None:
        events = await events_of(log, tenant, channel)
        return events if len(events) >= count else None

    return await eventually(check, timeout=10)  # type: ignore[return-value]


async def drained(log: RedisEventLog, stream: str) -> None:
    """Every ingest entry acknowledged and deleted."""

    async def check() -> bool:
        pending = await log.redis.xpending(stream, GROUP)
        return await log.redis.xlen(stream) == 0 and pending["pending"] == 0

    await eventually(check, timeout=10)


def malformed_count() -> float:
    return REGISTRY.get_sample_value("realtime_malformed_entries_total", {"source": "ingest"}) or 0.0


async def test_apublish_and_publish_reach_the_log(log: RedisEventLog, make_ingest: Callable[..., Ingest],
                                                  worker_redis: sync_redis.Redis, prefix: str) -> None:
    ingest = make_ingest()
    await ingest.start()
    start = await log.head()

    first = await apublish(log.redis, "t1", "analysis:a1", "analysis.progress", {"analysisId": "a1", "progress": 42}, prefix=prefix)
    second = publish(worker_redis, "t1", "analysis:a1", "analysis.done", {"analysisId": "a1", "ok": True}, prefix=prefix)
    publish(worker_redis, "t2", "analysis:a1", "analysis.progress", {"tenant": "t2", "progress": 5}, prefix=prefix)
    assert parse_cursor(first) < parse_cursor(second)  # ingest entry ids, not log ids

    events = await appears(log, "t1", "analysis:a1", 2)
    assert [(e.type, orjson.loads(e.data)) for e in events] == [
        ("analysis.progress", {"analysisId": "a1", "progress": 42}),
        ("analysis.done", {"analysisId": "a1", "ok": True}),
    ]
    theirs = await appears(log, "t2", "analysis:a1", 1)
    assert [orjson.loads(e.data) for e in theirs] == [{"tenant": "t2", "progress": 5}]

    # they went through the log proper: a tail sees all three, in order
    stream = log.tail(start)
    try:
        tailed = await asyncio.wait_for(anext(stream), 10)
        while len(tailed) < 3:
            tailed += await asyncio.wait_for(anext(stream), 10)
    finally:
        await stream.aclose()
    assert [(e.tenant, e.type) for e in tailed] == [("t1", "analysis.progress"), ("t1", "analysis.done"), ("t2", "analysis.progress")]
    assert [e.id for e in tailed[:2]] == [e.id for e in events]
    await drained(log, f"{prefix}:ingest")


async def test_a_workers_idempotency_key_publishes_once(log: RedisEventLog, make_ingest: Callable[..., Ingest],
                                                        worker_redis: sync_redis.Redis, prefix: str) -> None:
    await make_ingest().start()
    publish(worker_redis, "t1", "job:j1", "job.done", {"attempt": 1}, idempotency_key="job-j1-done", prefix=prefix)
    publish(worker_redis, "t1", "job:j1", "job.done", {"attempt": 2}, idempotency_key="job-j1-done", prefix=prefix)
    # the same key in another tenant is another event
    publish(worker_redis, "t2", "job:j1", "job.done", {"attempt": 3}, idempotency_key="job-j1-done", prefix=prefix)
    publish(worker_redis, "t1", "job:j1", "job.sentinel", {}, prefix=prefix)  # processed after the retries
    events = await appears(log, "t1", "job:j1", 2)
    assert [(e.type, orjson.loads(e.data)) for e in events] == [("job.done", {"attempt": 1}), ("job.sentinel", {})]
    assert [orjson.loads(e.data) for e in await appears(log, "t2", "job:j1", 1)] == [{"attempt": 3}]


async def test_the_publisher_helper_refuses_what_the_server_would(worker_redis: sync_redis.Redis, prefix: str) -> None:
    for channel, type_, data in [("Not A Channel", "x", {}), ("analysis:a1", "bad type!", {}), ("analysis:a1", "x", [1, 2])]:
        with pytest.raises(ValueError):
            publish(worker_redis, "t1", channel, type_, data, prefix=prefix)  # type: ignore[arg-type]
    assert worker_redis.xlen(f"{prefix}:ingest") == 0


async def test_malformed_entries_never_reach_the_log_and_are_kept_aside(log: RedisEventLog, make_ingest: Callable[..., Ingest],
                                                                        worker_redis: sync_redis.Redis, prefix: str) -> None:
    ingest = make_ingest()
    await ingest.start()
    before = malformed_count()
    stream = f"{prefix}:ingest"
    bad = {
        "missing tenant": {"channel": "analysis:a1", "type": "x", "data": "{}"},
        "bad tenant": {"tenant": "t 1", "channel": "analysis:a1", "type": "x", "data": "{}"},
        "bad channel": {"tenant": "t1", "channel": "Not A Channel", "type": "x", "data": "{}"},
        "missing type": {"tenant": "t1", "channel": "analysis:a1", "data": "{}"},
        "non-JSON data": {"tenant": "t1", "channel": "analysis:a1", "type": "x", "data": "{oops"},
        "data not an object": {"tenant": "t1", "channel": "analysis:a1", "type": "x", "data": "[1, 2]"},
        "data too large": {"tenant": "t1", "channel": "analysis:a1", "type": "x", "data": json.dumps({"blob": "x" * 70_000})},
    }
    entry_ids = {}
    for what, fields in bad.items():
        entry_ids[what] = worker_redis.xadd(stream, fields)
    good = publish(worker_redis, "t1", "analysis:a1", "analysis.progress", {"ok": True, "progress": 1}, prefix=prefix)
    assert parse_cursor(good) > parse_cursor(entry_ids["data too large"].decode())

    events = await appears(log, "t1", "analysis:a1", 1)
    assert [orjson.loads(e.data) for e in events] == [{"ok": True, "progress": 1}]
    head = await log.head()
    assert head == events[0].id  # the only thing that reached the log, on any channel
    await drained(log, stream)

    rejected = await log.redis.xrange(f"{prefix}:ingest:rejected")
    assert len(rejected) == len(bad)
    kept = {fields[b"entry_id"]: fields for _, fields in rejected}
    assert set(kept) == set(entry_ids.values())
    expected_reason = {
        "missing tenant": "tenant",
        "bad tenant": "tenant",
        "bad channel": "channel",
        "missing type": "type",
        "non-JSON data": "JSON",
        "data not an object": "JSON object",
        "data too large": "limit",
    }
    for what, fields in bad.items():
        entry = kept[entry_ids[what]]
        reason = entry[b"reason"].decode()
        assert expected_reason[what] in reason, (what, reason)
        for name, value in fields.items():  # the original entry, for an operator
            assert entry[name.encode()] == value.encode()
    assert malformed_count() - before == len(bad)


async def test_an_entry_left_by_a_dead_consumer_is_reclaimed_and_published_once(
    log: RedisEventLog, make_ingest: Callable[..., Ingest], worker_redis: sync_redis.Redis, prefix: str
) -> None:
    stream = f"{prefix}:ingest"
    await log.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    entry = publish(worker_redis, "t1", "analysis:a1", "analysis.done", {"ok": True}, prefix=prefix)
    # a process reads it, then dies before acknowledging
    [[_, [(entry_id, fields)]]] = await log.redis.xreadgroup(GROUP, "dead-worker", {stream: ">"}, count=10)
    assert entry_id.decode() == entry

    # an ingest that waits long before claiming leaves it alone while handling new entries
    patient = make_ingest(claim_idle_ms=600_000)
    await patient.start()
    publish(worker_redis, "t1", "analysis:a2", "analysis.other", {}, prefix=prefix)
    await appears(log, "t1", "analysis:a2", 1)  # at least one reclaim pass has run before this
    [pending] = await log.redis.xpending_range(stream, GROUP, min="-", max="+", count=10)
    assert (pending["message_id"], pending["consumer"]) == (entry_id, b"dead-worker")
    assert await events_of(log, "t1", "analysis:a1") == []
    await patient.stop()

    # one that claims after 100 ms takes it over
    ingest = make_ingest(claim_idle_ms=100)
    await ingest.start()
    [event] = await appears(log, "t1", "analysis:a1", 1)
    assert (event.type, orjson.loads(event.data)) == ("analysis.done", {"ok": True})
    await drained(log, stream)

    # the dead process comes back and finishes its work; the ingest handles it once more: no new event
    await make_ingest().handle(entry_id, fields)
    await ingest.handle(entry_id, fields)
    assert [e.id for e in await events_of(log, "t1", "analysis:a1")] == [event.id]
    assert await log.redis.xlen(f"{prefix}:ingest:rejected") == 0


async def test_handling_the_same_entry_twice_appends_one_event(log: RedisEventLog, make_ingest: Callable[..., Ingest],
                                                               worker_redis: sync_redis.Redis, prefix: str) -> None:
    stream = f"{prefix}:ingest"
    await log.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    publish(worker_redis, "t1", "analysis:a1", "analysis.progress", {"progress": 1}, prefix=prefix)
    publish(worker_redis, "t1", "analysis:a1", "analysis.progress", {"progress": 1}, prefix=prefix)  # same body, new entry
    [[_, entries]] = await log.redis.xreadgroup(GROUP, "w", {stream: ">"}, count=10)
    assert len(entries) == 2

    ingest = make_ingest()  # not started: handle() alone
    for entry_id, fields in (entries[0], entries[0], entries[1], entries[0]):
        await ingest.handle(entry_id, fields)
    events = await events_of(log, "t1", "analysis:a1")
    assert len(events) == 2  # one per entry, however often each was handled
    assert [orjson.loads(e.data) for e in events] == [{"progress": 1}, {"progress": 1}]
    assert await log.redis.xlen(stream) == 0
    assert (await log.redis.xpending(stream, GROUP))["pending"] == 0


async def test_a_shutdown_stores_the_batch_already_read_in_order(log: RedisEventLog, make_ingest, worker_redis, prefix: str) -> None:
    ingest = make_ingest(claim_idle_ms=600_000)  # nothing may be left for a later reclaim
    real_handle = ingest.handle
    started = asyncio.Event()

    async def slow_handle(entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        started.set()
        await asyncio.sleep(0.05)  # stretches the batch so that stop() lands in its middle
        await real_handle(entry_id, fields)

    ingest.handle = slow_handle  # type: ignore[method-assign]
    for n in range(10):
        publish(worker_redis, "t1", "board:b1", "board.moved", {"n": n}, prefix=prefix)
    await ingest.start()
    await asyncio.wait_for(started.wait(), 10)
    await ingest.stop()
    stored = await events_of(log, "t1", "board:b1")
    assert [orjson.loads(e.data)["n"] for e in stored] == list(range(10))
