"""The Redis ingest stream: workers publish with one XADD, the service validates and appends.

Redis only. Each test has its own key prefix, so its ingest stream, consumer group, rejected
stream and log are its own.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence

import orjson
import pytest
import redis as sync_redis
import redis.asyncio as aioredis
from forge_publisher import apublish, publish
from prometheus_client import REGISTRY
from redis.exceptions import ConnectionError as RedisConnectionError

from app.eventlog import create_event_log
from app.eventlog.base import ZERO, Appended, Draft, Event, parse_cursor
from app.eventlog.redis import RedisEventLog
from app.ingest import GROUP, Ingest
from app.keys import Keys
from app.redis_client import create_redis
from app.settings import Settings
from tests.conftest import eventually

MAX_EVENT_BYTES = 65536


@pytest.fixture
async def log(make_settings: Callable[..., Settings], redis_url: str) -> AsyncIterator[RedisEventLog]:
    log_settings = make_settings(redis_url=redis_url)
    redis = create_redis(log_settings)
    assert redis is not None
    event_log = create_event_log(log_settings, redis)
    assert isinstance(event_log, RedisEventLog)
    try:
        await event_log.start()
        yield event_log
        await event_log.close()
    finally:
        await redis.aclose()


@pytest.fixture
async def make_ingest(log: RedisEventLog, prefix: str) -> AsyncIterator[Callable[..., Ingest]]:
    """Ingests on the log's own Redis client; every one is stopped afterwards (before the log closes)."""
    made: list[Ingest] = []

    def build(claim_idle_ms: int = 100) -> Ingest:
        ingest = Ingest(log.redis, log, keys=Keys(prefix), max_event_bytes=MAX_EVENT_BYTES, claim_idle_ms=claim_idle_ms)
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

    first = await apublish(log.redis, "t1", "analysis:a1", "analysis.progress", {"analysisId": "a1", "progress": 42},
                           prefix=prefix)
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
    assert [(e.tenant, e.type) for e in tailed] == [
        ("t1", "analysis.progress"), ("t1", "analysis.done"), ("t2", "analysis.progress")]
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
        # an unhashable status once raised TypeError out of the batch: the ingest task died, and the
        # entry, never acknowledged, was reclaimed by the next process, which died in turn
        "status not a string": {"tenant": "t1", "channel": "job:j1", "type": "refactoring.status", "data": '{"status": []}'},
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
        "status not a string": "data.status",
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
    await make_ingest().handle([(entry_id, fields)])
    await ingest.handle([(entry_id, fields), (entry_id, fields)])
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

    ingest = make_ingest()  # not started: handle() alone, the same entry in one batch and across batches
    await ingest.handle([entries[0], entries[0], entries[1]])
    await ingest.handle([entries[1], entries[0]])
    events = await events_of(log, "t1", "analysis:a1")
    assert len(events) == 2  # one per entry, however often each was handled
    assert [orjson.loads(e.data) for e in events] == [{"progress": 1}, {"progress": 1}]
    assert await log.redis.xlen(stream) == 0
    assert (await log.redis.xpending(stream, GROUP))["pending"] == 0


async def test_a_shutdown_stores_the_batch_already_read_in_order(log: RedisEventLog, make_ingest: Callable[..., Ingest],
                                                                 worker_redis: sync_redis.Redis, prefix: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    ingest = make_ingest(claim_idle_ms=600_000)  # nothing may be left for a later reclaim
    real_append_many = log.append_many
    started = asyncio.Event()

    async def slow_append_many(items: Sequence[tuple[Draft, str | None]]) -> list[Appended]:
        started.set()
        await asyncio.sleep(0.2)  # stretches the batch so that stop() lands in its middle
        return await real_append_many(items)

    monkeypatch.setattr(log, "append_many", slow_append_many)
    for n in range(10):
        publish(worker_redis, "t1", "board:b1", "board.moved", {"n": n}, prefix=prefix)
    await ingest.start()
    await asyncio.wait_for(started.wait(), 10)
    await ingest.stop()
    stored = await events_of(log, "t1", "board:b1")
    assert [orjson.loads(e.data)["n"] for e in stored] == list(range(10))
    assert (await log.redis.xpending(f"{prefix}:ingest", GROUP))["pending"] == 0


class Spy:
    """Counts how the ingest calls the log (a wrapper: the log itself is untouched)."""

    def __init__(self, log: RedisEventLog) -> None:
        self.log = log
        self.batches: list[int] = []
        self.singles = 0

    async def append(self, draft: Draft, idempotency_key: str | None = None) -> tuple[str, bool]:
        self.singles += 1
        return await self.log.append(draft, idempotency_key)

    async def append_many(self, items: Sequence[tuple[Draft, str | None]]) -> list[Appended]:
        self.batches.append(len(items))
        return await self.log.append_many(items)


async def test_a_batch_is_appended_at_once_and_its_bad_entries_refused_alone(
    log: RedisEventLog, worker_redis: sync_redis.Redis, prefix: str
) -> None:
    """A malformed and a conflicting entry in the middle of a batch: the others are stored, in
    order, with one append_many; the two are kept aside and counted; the batch is drained."""
    stream = f"{prefix}:ingest"
    entries = [
        ("t1", "analysis:a1", "analysis.progress", {"progress": 30}),
        ("t1", "analysis:a2", "x.y", {"n": 1}),
        ("t1", "Not A Channel", "x.y", {"n": 2}),  # malformed
        ("t1", "analysis:a1", "analysis.progress", {"progress": 20}),  # backwards: 409
        ("t1", "analysis:a1", "analysis.note", {"n": 3}),
        ("t1", "analysis:a2", "x.y", {"n": 4}),
        ("t1", "analysis:a1", "analysis.progress", {"progress": 40}),
    ]
    entry_ids = [worker_redis.xadd(stream, {"tenant": t, "channel": c, "type": ty, "data": orjson.dumps(d)})
                 for t, c, ty, d in entries]
    before = malformed_count()
    spy = Spy(log)
    ingest = Ingest(log.redis, spy, keys=Keys(prefix), max_event_bytes=MAX_EVENT_BYTES,  # type: ignore[arg-type]
                    claim_idle_ms=600_000)
    await ingest.start()
    try:
        a1 = await appears(log, "t1", "analysis:a1", 3)
        await drained(log, stream)
    finally:
        await ingest.stop()

    assert [orjson.loads(e.data) for e in a1] == [{"progress": 30}, {"n": 3}, {"progress": 40}]
    a2 = await events_of(log, "t1", "analysis:a2")
    assert [orjson.loads(e.data) for e in a2] == [{"n": 1}, {"n": 4}]
    # ids follow the entries' order across channels too
    stored = sorted(a1 + a2, key=lambda e: e.key)
    assert [orjson.loads(e.data) for e in stored] == [{"progress": 30}, {"n": 1}, {"n": 3}, {"n": 4}, {"progress": 40}]
    assert (spy.batches, spy.singles) == ([6], 0)  # one call for the batch, without the malformed entry

    rejected = await log.redis.xrange(f"{prefix}:ingest:rejected")
    assert [fields[b"entry_id"] for _, fields in rejected] == [entry_ids[2], entry_ids[3]]
    assert b"channel" in rejected[0][1][b"reason"] and b"backwards" in rejected[1][1][b"reason"]
    assert malformed_count() - before == 2


async def test_a_batch_stored_but_not_acknowledged_is_reclaimed_exactly_once(
    log: RedisEventLog, make_ingest: Callable[..., Ingest], worker_redis: sync_redis.Redis, prefix: str,
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process appends a batch, then loses Redis before acknowledging it: the reclaim stores nothing twice."""
    stream = f"{prefix}:ingest"
    await log.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    for n in range(5):
        publish(worker_redis, "t1", "board:b1", "board.moved", {"n": n}, prefix=prefix)
    [[_, entries]] = await log.redis.xreadgroup(GROUP, "dying", {stream: ">"}, count=3)

    own_redis = aioredis.Redis.from_url(redis_url)  # the ingest's connection, not the log's
    dying = Ingest(own_redis, log, keys=Keys(prefix), max_event_bytes=MAX_EVENT_BYTES, claim_idle_ms=600_000)

    def lost(*args: object, **kwargs: object) -> None:
        raise RedisConnectionError("Redis went away before the acknowledgement")

    monkeypatch.setattr(own_redis, "pipeline", lost)
    try:
        with pytest.raises(RedisConnectionError):
            await dying.handle(entries)
    finally:
        await own_redis.aclose()
    assert len(await events_of(log, "t1", "board:b1")) == 3
    assert (await log.redis.xpending(stream, GROUP))["pending"] == 3

    await make_ingest(claim_idle_ms=100).start()
    stored = await appears(log, "t1", "board:b1", 5)
    await drained(log, stream)
    assert [orjson.loads(e.data)["n"] for e in stored] == list(range(5))
    assert await log.redis.xlen(f"{prefix}:ingest:rejected") == 0


async def test_one_process_drains_at_a_time_so_a_workers_order_survives_and_another_takes_over(
    log: RedisEventLog, make_ingest: Callable[..., Ingest], worker_redis: sync_redis.Redis, prefix: str
) -> None:
    """Several processes share the ingest; batches read by two at once would reach the log in
    whichever order they finished (a worker's progress then refused as moving backwards)."""
    first, second = make_ingest(), make_ingest()
    first.consumer, second.consumer = "process-a", "process-b"
    await first.start()
    await second.start()
    for progress in range(100):
        publish(worker_redis, "t1", "analysis:a1", "analysis.progress", {"analysisId": "a1", "progress": progress},
                prefix=prefix)
        if progress % 10 == 0:
            await asyncio.sleep(0.01)  # batches of various sizes, read while more arrive
    events = await appears(log, "t1", "analysis:a1", 100)
    assert [orjson.loads(e.data)["progress"] for e in events] == list(range(100))
    assert await log.redis.xlen(f"{prefix}:ingest:rejected") == 0
    consumers = {c["name"]: c for c in await log.redis.xinfo_consumers(f"{prefix}:ingest", GROUP)}
    assert len([name for name in consumers if name in (b"process-a", b"process-b")]) == 1  # only the holder ever read

    holder, other = (first, second) if b"process-a" in consumers else (second, first)
    await holder.stop()  # gives the lease up: the other drains from now on
    publish(worker_redis, "t1", "analysis:a1", "analysis.progress", {"analysisId": "a1", "progress": 100}, prefix=prefix)
    assert orjson.loads((await appears(log, "t1", "analysis:a1", 101))[-1].data)["progress"] == 100
    assert await log.redis.get(f"{prefix}:ingest:lease") == other.consumer.encode()


async def test_a_stop_stores_what_the_drainer_read_but_did_not_store(
    log: RedisEventLog, make_ingest: Callable[..., Ingest], worker_redis: sync_redis.Redis, prefix: str
) -> None:
    """A read whose reply the shutdown's cancel cut off leaves its entries pending for this
    consumer: stored before the lease is given up, not 30 s later behind newer events."""
    stream = f"{prefix}:ingest"
    ingest = make_ingest(claim_idle_ms=600_000)
    await log.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    assert await log.redis.eval("return redis.call('SET', KEYS[1], ARGV[1])", 1, f"{prefix}:ingest:lease", ingest.consumer)
    ingest._holding = True  # it drains (its loop read the entry below, then was cancelled)
    publish(worker_redis, "t1", "analysis:a1", "analysis.done", {"ok": True}, prefix=prefix)
    await log.redis.xreadgroup(GROUP, ingest.consumer, {stream: ">"}, count=10)
    await ingest.stop()
    [event] = await events_of(log, "t1", "analysis:a1")
    assert event.type == "analysis.done"
    await drained(log, stream)
    assert await log.redis.get(f"{prefix}:ingest:lease") is None  # given up


async def test_the_drainer_reports_its_backlog_unread_and_pending(log: RedisEventLog, make_ingest: Callable[..., Ingest],
                                                                 prefix: str) -> None:
    """What waits in the ingest stream (unseen by the publish->dispatch histogram, which starts
    at the log): entries no drainer has read yet, and those read but not yet stored."""
    stream = Keys(prefix).ingest
    await log.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    for i in range(5):
        await log.redis.xadd(stream, {"tenant": "t1", "channel": "analysis:a1", "type": "x.y", "data": b'{"i":%d}' % i})
    await log.redis.xreadgroup(GROUP, "someone", {stream: ">"}, count=2)  # read, never acknowledged

    def backlog(state: str) -> float | None:
        return REGISTRY.get_sample_value("realtime_ingest_backlog_entries", {"state": state})

    await make_ingest()._measure_backlog()
    assert (backlog("unread"), backlog("pending")) == (3, 2)
