"""The event log contract, run against both engines (memory and Redis Streams).

Every test here runs twice through the parametrized `settings` fixture; the few Redis-only tests
at the end use the `redis_log` fixture and run once.

The suite holds for a partitioned log too (REDIS_PARTITIONS, run so by tests/test_cluster.py): ids
increase, heads and floors hold and tails keep their order per partition (a tenant's), which with
one partition (here) is the whole log.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import orjson
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from app.core.publish import prepare
from app.errors import Conflict
from app.eventlog import create_event_log
from app.eventlog.base import ZERO, Event, EventLog, now_ms, parse_cursor
from app.protocol import encode
from app.redis_client import create_redis
from app.settings import Settings
from tests.conftest import eventually

MAX_EVENT_BYTES = 65536


def draft(tenant: str, channel: str, data: dict | None = None, type_: str = "thing.happened"):
    return prepare(tenant, channel, type_, data if data is not None else {}, max_event_bytes=MAX_EVENT_BYTES)


def key(cursor: str) -> tuple[int, int]:
    return parse_cursor(cursor)


async def head_of(log: EventLog, tenant: str) -> str:
    """The head of `tenant`'s partition (the log's head with one partition)."""
    return await log.head(log.partition(tenant))


def in_partitions(log: EventLog, pairs: list[tuple[str, str]]) -> dict[int, list[str]]:
    """(tenant, id) pairs as each partition's ids, in the order given."""
    out: dict[int, list[str]] = {}
    for tenant, event_id in pairs:
        out.setdefault(log.partition(tenant), []).append(event_id)
    return out


@pytest.fixture
async def make_log(settings: Settings,
                   make_settings: Callable[..., Settings]) -> AsyncIterator[Callable[..., Awaitable[EventLog]]]:
    """Build a started log of the parametrized engine, with settings overrides; closed afterwards
    (each on a Redis client of its own, as each process has)."""
    created: list[tuple[EventLog, aioredis.Redis | None]] = []

    async def build(**overrides: object) -> EventLog:
        log_settings = make_settings(redis_url=settings.redis_url, **overrides)
        redis = create_redis(log_settings)
        event_log = create_event_log(log_settings, redis)
        created.append((event_log, redis))
        await event_log.start()
        return event_log

    yield build
    for event_log, redis in created:
        await event_log.close()
        if redis is not None:
            await redis.aclose()


@pytest.fixture
async def log(make_log: Callable[..., Awaitable[EventLog]]) -> EventLog:
    return await make_log()


async def take(stream: AsyncIterator[list[Event]], count: int, timeout: float = 10.0) -> list[Event]:
    """The first `count` events a tail yields (a guard timeout, not a timing assertion)."""
    out: list[Event] = []

    async def run() -> None:
        async for batch in stream:
            out.extend(batch)
            if len(out) >= count:
                return

    try:
        await asyncio.wait_for(run(), timeout)
    except TimeoutError:
        raise AssertionError(f"tail yielded {len(out)} of {count} events: {[e.id for e in out]}") from None
    return out


def malformed_count() -> float:
    return REGISTRY.get_sample_value("realtime_malformed_entries_total", {"source": "log"}) or 0.0


# --- append, read, head ------------------------------------------------------------------


async def test_append_returns_strictly_increasing_ids(log: EventLog) -> None:
    pairs = []
    for i in range(60):
        tenant = ("t1", "t2")[i % 2]
        event_id, created = await log.append(draft(tenant, f"repository:r{i % 3}", {"i": i}))
        assert created is True
        pairs.append((tenant, event_id))
    for ids in in_partitions(log, pairs).values():  # the whole log with one partition
        assert all(key(a) < key(b) for a, b in itertools.pairwise(ids)), ids


async def test_head_is_zero_when_empty_then_the_newest_id(log: EventLog) -> None:
    p1, p2 = log.partition("t1"), log.partition("t2")
    assert await log.head(p1) == ZERO
    assert (await log.bounds(p1))[0] == ZERO
    first, _ = await log.append(draft("t1", "repository:r1"))
    assert await log.head(p1) == first
    assert (await log.bounds(p1))[0] == first
    second, _ = await log.append(draft("t2", "repository:r9"))
    assert await log.head(p2) == second
    assert await log.head(p1) == (second if p1 == p2 else first)
    await log.read("t1", "repository:r1", ZERO, second, 10)  # reads never move the head
    assert await log.head(p2) == second


async def test_read_returns_one_tenant_channel_with_bounds_and_limit(log: EventLog) -> None:
    appended: dict[tuple[str, str], list[str]] = {}
    streams = [("t1", "repository:r1"), ("t1", "repository:r2"), ("t2", "repository:r1"), ("t1", "user:u1")]
    for i in range(40):
        tenant, channel = streams[i % len(streams)]
        event_id, _ = await log.append(draft(tenant, channel, {"i": i, "who": f"{tenant}/{channel}"}))
        appended.setdefault((tenant, channel), []).append(event_id)
    head = await head_of(log, "t1")
    mine = appended[("t1", "repository:r1")]
    assert len(mine) == 10

    everything = await log.read("t1", "repository:r1", ZERO, head, 1000)
    assert [e.id for e in everything] == mine
    for event in everything:
        assert (event.tenant, event.channel, event.type) == ("t1", "repository:r1", "thing.happened")
        assert orjson.loads(event.data)["who"] == "t1/repository:r1"

    # after is exclusive, until is inclusive
    window = await log.read("t1", "repository:r1", mine[2], mine[5], 1000)
    assert [e.id for e in window] == mine[3:6]
    # the bounds need not be ids of this channel
    other = appended[("t1", "repository:r2")]
    between = [i for i in mine if key(other[1]) < key(i) <= key(other[7])]
    assert [e.id for e in await log.read("t1", "repository:r1", other[1], other[7], 1000)] == between
    # limit: the oldest first
    assert [e.id for e in await log.read("t1", "repository:r1", ZERO, head, 3)] == mine[:3]
    assert [e.id for e in await log.read("t1", "repository:r1", mine[3], head, 2)] == mine[4:6]
    # nothing after the last one, nothing for an unknown channel, nothing when after >= until
    assert await log.read("t1", "repository:r1", mine[-1], head, 1000) == []
    assert await log.read("t1", "repository:nope", ZERO, head, 1000) == []
    assert await log.read("t1", "repository:r1", mine[5], mine[5], 1000) == []
    assert await log.read("t1", "repository:r1", mine[6], mine[2], 1000) == []


async def test_same_channel_name_in_two_tenants_never_mixes(log: EventLog) -> None:
    ids = {"t1": [], "t2": []}
    for i in range(10):
        tenant = "t1" if i % 3 else "t2"
        event_id, _ = await log.append(draft(tenant, "user:u1", {"tenant": tenant, "i": i}))
        ids[tenant].append(event_id)
    for tenant in ("t1", "t2"):
        head = await head_of(log, tenant)
        events = await log.read(tenant, "user:u1", ZERO, head, 1000)
        assert [e.id for e in events] == ids[tenant]
        assert {e.tenant for e in events} == {tenant}
        assert {orjson.loads(e.data)["tenant"] for e in events} == {tenant}
    assert await log.read("t3", "user:u1", ZERO, await head_of(log, "t3"), 1000) == []


async def test_idempotency_key_returns_the_first_id_and_stores_nothing(log: EventLog) -> None:
    first, created = await log.append(draft("t1", "repository:r1", {"n": 1}), idempotency_key="k1")
    assert created is True
    again, created = await log.append(draft("t1", "repository:r1", {"n": 2}), idempotency_key="k1")
    assert (again, created) == (first, False)
    # the key is per tenant, not per channel: another channel of t1 still gets the first id
    elsewhere, created = await log.append(draft("t1", "repository:r2", {"n": 3}), idempotency_key="k1")
    assert (elsewhere, created) == (first, False)
    assert await head_of(log, "t1") == first

    events = await log.read("t1", "repository:r1", ZERO, first, 100)
    assert [(e.id, orjson.loads(e.data)) for e in events] == [(first, {"n": 1})]
    assert await log.read("t1", "repository:r2", ZERO, first, 100) == []

    # the same key in another tenant is another event
    theirs, created = await log.append(draft("t2", "repository:r1", {"n": 4}), idempotency_key="k1")
    assert created is True and (log.partition("t1") != log.partition("t2") or key(theirs) > key(first))
    # another key, or none, is a new event
    other, created = await log.append(draft("t1", "repository:r1", {"n": 5}), idempotency_key="k2")
    assert created is True and key(other) > key(first)
    plain, created = await log.append(draft("t1", "repository:r1", {"n": 6}))
    assert created is True
    head = await head_of(log, "t1")
    assert head == plain
    assert [orjson.loads(e.data)["n"] for e in await log.read("t1", "repository:r1", ZERO, head, 100)] == [1, 5, 6]
    theirs_head = await head_of(log, "t2")
    assert [orjson.loads(e.data)["n"] for e in await log.read("t2", "repository:r1", ZERO, theirs_head, 100)] == [4]


# --- append_many (the ingest's batches) ---------------------------------------------------


async def test_append_many_gives_each_item_what_append_would(log: EventLog) -> None:
    """A conflicting item among good ones is refused alone; the rest are stored in item order."""
    await log.append(draft("t1", "analysis:a1", {"progress": 50}, type_="analysis.progress"))
    results = await log.append_many([
        (draft("t1", "analysis:a1", {"progress": 60}, type_="analysis.progress"), "p60"),
        (draft("t1", "analysis:a1", {"progress": 40}, type_="analysis.progress"), "p40"),  # backwards: 409
        (draft("t1", "analysis:a1", {"note": "after the refused one"}), None),
        (draft("t2", "analysis:a1", {"progress": 10}, type_="analysis.progress"), "p40"),  # another tenant's own order
        (draft("t1", "analysis:a1", {"progress": 70}, type_="analysis.progress"), "p70"),
    ])
    assert len(results) == 5
    refused = results[1]
    assert isinstance(refused, Conflict) and "50" not in refused.message and "60" in refused.message
    stored = [r for i, r in enumerate(results) if i != 1]
    assert all(isinstance(r, tuple) and r[1] is True for r in stored), results
    ids = [r[0] for r in stored]  # type: ignore[index]
    for in_order in in_partitions(log, list(zip(["t1", "t1", "t2", "t1"], ids, strict=True))).values():
        assert all(key(a) < key(b) for a, b in itertools.pairwise(in_order)), ids
    assert await head_of(log, "t1") == ids[-1]

    head = ids[-1]
    mine = await log.read("t1", "analysis:a1", ZERO, head, 100)
    assert [orjson.loads(e.data) for e in mine][1:] == [{"progress": 60}, {"note": "after the refused one"}, {"progress": 70}]
    assert [e.id for e in mine][1:] == [ids[0], ids[1], ids[3]]
    theirs = await log.read("t2", "analysis:a1", ZERO, await head_of(log, "t2"), 100)
    assert [orjson.loads(e.data) for e in theirs] == [{"progress": 10}]
    # live state: the last accepted progress, never the refused one
    [state] = await log.snapshot("t1", "analysis:a1")
    assert (state.id, orjson.loads(state.data)) == (ids[3], {"progress": 70})
    # the refused item's key was not consumed: a valid retry with it is stored
    retry = draft("t1", "analysis:a1", {"progress": 80}, type_="analysis.progress")
    [(retried, created)] = await log.append_many([(retry, "p40")])
    assert created is True and key(retried) > key(head)
    assert await log.append_many([]) == []


async def test_append_many_repeats_are_idempotent_within_and_across_batches(log: EventLog) -> None:
    first = await log.append_many([
        (draft("t1", "job:j1", {"n": 1}), "k1"),
        (draft("t1", "job:j1", {"n": 2}), None),
        (draft("t1", "job:j2", {"n": 3}), "k1"),  # the same key again, in the same batch: the first id
        (draft("t1", "job:j1", {"n": 4}), "k2"),
    ])
    assert [r[1] for r in first] == [True, True, False, True]  # type: ignore[index]
    assert first[2] == (first[0][0], False)  # type: ignore[index]
    # a retry of the whole batch (a reclaim): only the keyless item is new
    single, _ = await log.append(draft("t1", "job:j1", {"n": 5}), idempotency_key="k3")
    again = await log.append_many([
        (draft("t1", "job:j1", {"n": 1}), "k1"),
        (draft("t1", "job:j1", {"n": 4}), "k2"),
        (draft("t1", "job:j1", {"n": 5}), "k3"),  # stored by a single append: the same keys
    ])
    assert again == [(first[0][0], False), (first[3][0], False), (single, False)]  # type: ignore[index]
    head = await head_of(log, "t1")
    assert head == single
    assert [orjson.loads(e.data)["n"] for e in await log.read("t1", "job:j1", ZERO, head, 100)] == [1, 2, 4, 5]
    assert await log.read("t1", "job:j2", ZERO, head, 100) == []


async def test_append_many_follows_a_single_append_and_is_tailed_in_item_order(log: EventLog) -> None:
    start = await log.heads()
    stream = log.tail(start)
    taking = asyncio.ensure_future(take(stream, 301))
    single, _ = await log.append(draft("t1", "user:u1", {"i": -1}))
    items = [(draft("t1", f"user:u{i % 7}", {"i": i}), f"many-{i}") for i in range(300)]
    try:
        results = await log.append_many(items)
        got = await taking
    finally:
        await stream.aclose()
    ids = [r[0] for r in results]  # type: ignore[index]
    assert key(single) < key(ids[0])
    assert [e.id for e in got] == [single, *ids]
    assert [orjson.loads(e.data)["i"] for e in got] == list(range(-1, 300))


# --- floor ------------------------------------------------------------------------------


async def test_floor_moves_past_trimmed_history(make_log: Callable[..., Awaitable[EventLog]], engine_name: str) -> None:
    # Redis trims `MAXLEN ~` in whole macro-nodes (100 entries): keep 100, append plenty more.
    max_events, count = (5, 40) if engine_name == "memory" else (100, 1000)
    log = await make_log(log_max_events=max_events)

    p = log.partition("t1")
    first, _ = await log.append(draft("t1", "repository:r1", {"i": 0}))
    assert key(await log.floor(p)) <= key(first)  # nothing lost yet

    ids = [first]
    for i in range(1, count):
        event_id, _ = await log.append(draft("t1", "repository:r1", {"i": i}))
        ids.append(event_id)
    floor = await log.floor(p)
    head = await log.head(p)
    assert head == ids[-1]
    assert await log.bounds(p) == (head, floor)  # both in one read (one round trip on Redis), as resumes ask

    assert key(first) < key(floor), "a cursor older than the trimmed part must be below the floor"
    assert all(key(i) >= key(floor) for i in ids[-max_events:]), "the newest events are still covered"
    # the floor is honest: every event after it is still readable
    after_floor = [i for i in ids if key(i) > key(floor)]
    assert after_floor, "trimming must not empty the log"
    assert [e.id for e in await log.read("t1", "repository:r1", floor, head, 10 * count)] == after_floor


# --- tail -------------------------------------------------------------------------------


async def test_tail_yields_later_appends_in_order(log: EventLog) -> None:
    before = [(await log.append(draft("t1", "repository:r1", {"i": i})))[0] for i in range(3)]
    start = await log.heads()
    stream = log.tail(start)
    taking = asyncio.ensure_future(take(stream, 12))
    expected = []
    for i in range(12):
        tenant, channel = (("t1", "repository:r1"), ("t2", "user:u9"), ("t1", "tenant:t1"))[i % 3]
        event_id, _ = await log.append(draft(tenant, channel, {"i": i}))
        expected.append((event_id, tenant, channel, {"i": i}))
        if i % 4 == 0:
            await asyncio.sleep(0)  # let the tail run between appends (not synchronization)
    try:
        got = await taking
    finally:
        await stream.aclose()
    def each_partition(items: list[tuple[str, str, str, dict]]) -> dict[int, list[tuple[str, str, str, dict]]]:
        out: dict[int, list[tuple[str, str, str, dict]]] = {}
        for item in items:
            out.setdefault(log.partition(item[1]), []).append(item)
        return out

    # in order (with partitions: each partition in its order)
    assert each_partition([(e.id, e.tenant, e.channel, orjson.loads(e.data)) for e in got]) == each_partition(expected)
    assert not {("t1", i) for i in before} & {(e.tenant, e.id) for e in got}

    # a tail from an older position yields the history after it first, in order
    history = log.tail(before[0])
    try:
        got = await take(history, 2 + len(expected))
    finally:
        await history.aclose()
    assert in_partitions(log, [(e.tenant, e.id) for e in got]) == in_partitions(
        log, [("t1", i) for i in before[1:]] + [(e[1], e[0]) for e in expected])


# --- cursors ----------------------------------------------------------------------------


async def test_cursors_are_per_tenant_user_and_client(log: EventLog) -> None:
    assert await log.get_cursor("t1", "u1", "c1") is None
    await log.set_cursor("t1", "u1", "c1", "1700000000000-1")
    await log.set_cursor("t1", "u1", "c2", "1700000000000-2")
    await log.set_cursor("t1", "u2", "c1", "1700000000000-3")
    await log.set_cursor("t2", "u1", "c1", "1700000000000-4")
    assert await log.get_cursor("t1", "u1", "c1") == "1700000000000-1"
    assert await log.get_cursor("t1", "u1", "c2") == "1700000000000-2"
    assert await log.get_cursor("t1", "u2", "c1") == "1700000000000-3"
    assert await log.get_cursor("t2", "u1", "c1") == "1700000000000-4"
    assert await log.get_cursor("t2", "u2", "c1") is None
    await log.set_cursor("t1", "u1", "c1", "1700000000005-0")
    assert await log.get_cursor("t1", "u1", "c1") == "1700000000005-0"
    assert await log.get_cursor("t1", "u1", "c2") == "1700000000000-2"


# --- wire forms -------------------------------------------------------------------------

_TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def expected_ts(event_id: str) -> str:
    ms = int(event_id.split("-")[0])
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


async def test_event_json_and_sse_match_the_contract(log: EventLog) -> None:
    data = {"analysisId": "a1", "progress": 42, "note": "héllo \"quoted\"", "nested": {"list": [1, 2.5, None, True]}}
    event_id, _ = await log.append(draft("t1", "analysis:a1", data, type_="analysis.progress"))
    [event] = await log.read("t1", "analysis:a1", ZERO, event_id, 10)
    stream = log.tail(ZERO)
    try:
        [tailed] = await take(stream, 1)
    finally:
        await stream.aclose()

    for current in (event, tailed):
        envelope = orjson.loads(encode.envelope(current))
        assert envelope == {
            "id": event_id,
            "channel": "analysis:a1",
            "type": "analysis.progress",
            "data": data,
            "ts": expected_ts(event_id),
        }
        assert list(envelope) == ["id", "channel", "type", "data", "ts"]
        assert _TS.match(envelope["ts"])
        assert encode.text(current) == encode.envelope(current).decode()
        assert encode.sse_event(current) == (b"id: " + event_id.encode() + b"\nevent: analysis.progress\ndata: "
                                             + encode.envelope(current) + b"\n\n")
        assert b"\n" not in encode.envelope(current)  # one data line

    # the timestamp is the id's milliseconds, exactly, for any millisecond
    for ms in (0, 1, 999, 1764310000000, 1764310000001, 1764310000123, 1764310000999, 1795849902867):
        handmade = Event(f"{ms}-7", "t1", "analysis:a1", "x", b"{}")
        assert orjson.loads(encode.envelope(handmade))["ts"] == expected_ts(handmade.id)
    assert orjson.loads(encode.envelope(Event("1764310000000-0", "t", "a:b", "x", b"{}")))["ts"] == "2025-11-28T06:06:40.000Z"


# --- Redis only -------------------------------------------------------------------------


@pytest.fixture
async def redis_log(make_settings: Callable[..., Settings], redis_url: str) -> AsyncIterator[EventLog]:
    log_settings = make_settings(redis_url=redis_url)
    redis = create_redis(log_settings)
    assert redis is not None
    event_log = create_event_log(log_settings, redis)
    try:
        await event_log.start()
        yield event_log
        await event_log.close()
    finally:
        await redis.aclose()


async def test_redis_losing_its_data_turns_old_cursors_into_resets(redis_log: EventLog) -> None:
    log = redis_log
    old, _ = await log.append(draft("t1", "user:u1", {"i": 1}))
    await log.append(draft("t1", "user:u1", {"i": 2}))
    assert key(old) >= key(await log.floor())

    # Redis restarts empty: the origin, the log and its indexes are gone
    await eventually(lambda: now_ms() > key(old)[0] + 1)  # a new origin (now - 1 ms) is then later
    redis = log.redis  # type: ignore[attr-defined]
    prefix = log.keys.prefix  # type: ignore[attr-defined]
    keys = [k async for k in redis.scan_iter(match=f"{prefix}:*")]
    assert f"{prefix}:origin".encode() in keys and f"{prefix}:log".encode() in keys
    await redis.delete(*keys)

    assert key(old) < key(await log.floor())
    fresh, _ = await log.append(draft("t1", "user:u1", {"i": 3}))
    assert key(fresh) >= key(await log.floor())


async def test_redis_tail_skips_a_malformed_entry(redis_log: EventLog) -> None:
    log = redis_log
    redis = log.redis  # type: ignore[attr-defined]
    start = await log.head()
    before = malformed_count()
    await redis.xadd(log.keys.log, {"garbage": "yes"})  # type: ignore[attr-defined]
    await redis.xadd(log.keys.log, {"tenant": "t1", "channel": "user:u1", "type": "x", "data": "{not json"})  # type: ignore[attr-defined]
    await redis.xadd(log.keys.log, {"tenant": b"\xff\xfe", "channel": "user:u1", "type": "x", "data": "{}"})  # type: ignore[attr-defined]
    good, _ = await log.append(draft("t1", "user:u1", {"ok": True}))
    stream = log.tail(start)
    try:
        got = await take(stream, 1)
    finally:
        await stream.aclose()
    assert [(e.id, orjson.loads(e.data)) for e in got] == [(good, {"ok": True})]
    assert malformed_count() - before == 3


async def test_redis_append_many_is_one_round_trip(redis_log: EventLog, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ingest's throughput rests on this: a batch is one write to Redis, not one per event."""
    from redis.asyncio.connection import AbstractConnection

    log = redis_log
    await log.append(draft("t1", "user:u1", {"warm": True}))  # the script is loaded
    writes = 0
    real_send = AbstractConnection.send_packed_command

    async def counting_send(self: AbstractConnection, command: object, check_health: bool = True) -> None:
        nonlocal writes
        writes += 1
        await real_send(self, command, check_health)  # type: ignore[arg-type]

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting_send)
    results = await log.append_many([(draft("t1", f"user:u{i % 5}", {"i": i}), None) for i in range(200)])
    monkeypatch.undo()
    assert writes == 1
    assert len({r[0] for r in results}) == 200  # type: ignore[index]


async def test_redis_append_many_loads_its_script_when_redis_lacks_it(redis_log: EventLog) -> None:
    """A fresh (or restarted) Redis answers NOSCRIPT: the batch must still be stored, once."""
    from app.eventlog.redis import _APPEND

    log = redis_log
    first, _ = await log.append(draft("t1", "user:u1", {"i": 0}))
    # the same script under a hash Redis has never seen (SCRIPT FLUSH would disturb a shared Redis)
    log._append = log.redis.register_script(f"{_APPEND}\n-- {uuid.uuid4()}")  # type: ignore[attr-defined]
    assert not (await log.redis.script_exists(log._append.sha))[0]  # type: ignore[attr-defined]
    results = await log.append_many([(draft("t1", "user:u1", {"i": i}), f"k{i}") for i in (1, 2)])
    head = await head_of(log, "t1")
    assert [r[0] for r in results] == [e.id for e in await log.read("t1", "user:u1", first, head, 10)]  # type: ignore[index]
    assert [orjson.loads(e.data)["i"] for e in await log.read("t1", "user:u1", ZERO, head, 10)] == [0, 1, 2]


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70000])
def test_an_events_websocket_frame_is_what_a_websocket_library_reads(size: int) -> None:
    """The frame the fan-out writes to every socket parses as one text message holding the envelope."""
    from websockets.frames import Frame, Opcode
    from websockets.streams import StreamReader

    event = Event(id="1-0", tenant="t", channel="c", type="x", data=orjson.dumps("a" * size))
    reader = StreamReader()
    reader.feed_data(encode.ws_frame(event))
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        frame = done.value
    else:
        raise AssertionError("the frame was incomplete")
    assert frame.opcode is Opcode.TEXT and frame.fin
    assert bytes(frame.data) == encode.envelope(event)
    assert reader.at_eof() or not reader.buffer
