"""The event log contract, run against both engines (memory and Redis Streams).

Every test here runs twice through the parametrized `settings` fixture; the few Redis-only tests
at the end use the `redis_log` fixture and run once.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from prometheus_client import REGISTRY

from app.core.publish import prepare
from app.eventlog import create_event_log
from app.eventlog.base import ZERO, Event, EventLog, now_ms, parse_cursor
from app.settings import Settings
from tests.conftest import eventually

MAX_EVENT_BYTES = 65536


def draft(tenant: str, channel: str, data: dict | None = None, type_: str = "thing.happened"):
    return prepare(tenant, channel, type_, data if data is not None else {}, max_event_bytes=MAX_EVENT_BYTES)


def key(cursor: str) -> tuple[int, int]:
    return parse_cursor(cursor)


@pytest.fixture
async def make_log(settings: Settings, make_settings: Callable[..., Settings]) -> AsyncIterator[Callable[..., Awaitable[EventLog]]]:
    """Build a started log of the parametrized engine, with settings overrides; closed afterwards."""
    created: list[EventLog] = []

    async def build(**overrides: object) -> EventLog:
        event_log = create_event_log(make_settings(redis_url=settings.redis_url, **overrides))
        await event_log.start()
        created.append(event_log)
        return event_log

    yield build
    for event_log in created:
        await event_log.close()


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
    ids = []
    for i in range(60):
        tenant = ("t1", "t2")[i % 2]
        event_id, created = await log.append(draft(tenant, f"repository:r{i % 3}", {"i": i}))
        assert created is True
        ids.append(event_id)
    keys = [key(i) for i in ids]
    assert all(a < b for a, b in zip(keys, keys[1:])), ids
    assert len(set(ids)) == len(ids)


async def test_head_is_zero_when_empty_then_the_newest_id(log: EventLog) -> None:
    assert await log.head() == ZERO
    first, _ = await log.append(draft("t1", "repository:r1"))
    assert await log.head() == first
    second, _ = await log.append(draft("t2", "repository:r9"))
    assert await log.head() == second
    await log.read("t1", "repository:r1", ZERO, second, 10)  # reads never move the head
    assert await log.head() == second


async def test_read_returns_one_tenant_channel_with_bounds_and_limit(log: EventLog) -> None:
    appended: dict[tuple[str, str], list[str]] = {}
    streams = [("t1", "repository:r1"), ("t1", "repository:r2"), ("t2", "repository:r1"), ("t1", "user:u1")]
    for i in range(40):
        tenant, channel = streams[i % len(streams)]
        event_id, _ = await log.append(draft(tenant, channel, {"i": i, "who": f"{tenant}/{channel}"}))
        appended.setdefault((tenant, channel), []).append(event_id)
    head = await log.head()
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
    head = await log.head()
    for tenant in ("t1", "t2"):
        events = await log.read(tenant, "user:u1", ZERO, head, 1000)
        assert [e.id for e in events] == ids[tenant]
        assert {e.tenant for e in events} == {tenant}
        assert {orjson.loads(e.data)["tenant"] for e in events} == {tenant}
    assert await log.read("t3", "user:u1", ZERO, head, 1000) == []


async def test_idempotency_key_returns_the_first_id_and_stores_nothing(log: EventLog) -> None:
    first, created = await log.append(draft("t1", "repository:r1", {"n": 1}), idempotency_key="k1")
    assert created is True
    again, created = await log.append(draft("t1", "repository:r1", {"n": 2}), idempotency_key="k1")
    assert (again, created) == (first, False)
    # the key is per tenant, not per channel: another channel of t1 still gets the first id
    elsewhere, created = await log.append(draft("t1", "repository:r2", {"n": 3}), idempotency_key="k1")
    assert (elsewhere, created) == (first, False)
    assert await log.head() == first

    events = await log.read("t1", "repository:r1", ZERO, first, 100)
    assert [(e.id, orjson.loads(e.data)) for e in events] == [(first, {"n": 1})]
    assert await log.read("t1", "repository:r2", ZERO, first, 100) == []

    # the same key in another tenant is another event
    theirs, created = await log.append(draft("t2", "repository:r1", {"n": 4}), idempotency_key="k1")
    assert created is True and key(theirs) > key(first)
    # another key, or none, is a new event
    other, created = await log.append(draft("t1", "repository:r1", {"n": 5}), idempotency_key="k2")
    assert created is True and key(other) > key(theirs)
    plain, created = await log.append(draft("t1", "repository:r1", {"n": 6}))
    assert created is True
    head = await log.head()
    assert head == plain
    assert [orjson.loads(e.data)["n"] for e in await log.read("t1", "repository:r1", ZERO, head, 100)] == [1, 5, 6]
    assert [orjson.loads(e.data)["n"] for e in await log.read("t2", "repository:r1", ZERO, head, 100)] == [4]


# --- floor ------------------------------------------------------------------------------


async def test_floor_moves_past_trimmed_history(make_log: Callable[..., Awaitable[EventLog]], engine_name: str) -> None:
    # Redis trims `MAXLEN ~` in whole macro-nodes (100 entries): keep 100, append plenty more.
    max_events, count = (5, 40) if engine_name == "memory" else (100, 1000)
    log = await make_log(log_max_events=max_events)

    first, _ = await log.append(draft("t1", "repository:r1", {"i": 0}))
    assert key(await log.floor()) <= key(first)  # nothing lost yet

    ids = [first]
    for i in range(1, count):
        event_id, _ = await log.append(draft("t1", "repository:r1", {"i": i}))
        ids.append(event_id)
    floor = await log.floor()
    head = await log.head()
    assert head == ids[-1]

    assert key(first) < key(floor), "a cursor older than the trimmed part must be below the floor"
    assert all(key(i) >= key(floor) for i in ids[-max_events:]), "the newest events are still covered"
    # the floor is honest: every event after it is still readable
    after_floor = [i for i in ids if key(i) > key(floor)]
    assert after_floor, "trimming must not empty the log"
    assert [e.id for e in await log.read("t1", "repository:r1", floor, head, 10 * count)] == after_floor


# --- tail -------------------------------------------------------------------------------


async def test_tail_yields_later_appends_in_order(log: EventLog) -> None:
    before = [(await log.append(draft("t1", "repository:r1", {"i": i})))[0] for i in range(3)]
    start = await log.head()
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
    assert [(e.id, e.tenant, e.channel, orjson.loads(e.data)) for e in got] == expected
    assert not set(before) & {e.id for e in got}

    # a tail from an older position yields the history after it first, in order
    history = log.tail(before[0])
    try:
        got = await take(history, 2 + len(expected))
    finally:
        await history.aclose()
    assert [e.id for e in got] == before[1:] + [e[0] for e in expected]


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
        envelope = orjson.loads(current.json)
        assert envelope == {
            "id": event_id,
            "channel": "analysis:a1",
            "type": "analysis.progress",
            "data": data,
            "ts": expected_ts(event_id),
        }
        assert list(envelope) == ["id", "channel", "type", "data", "ts"]
        assert _TS.match(envelope["ts"])
        assert current.text == current.json.decode()
        assert current.sse == b"id: " + event_id.encode() + b"\nevent: analysis.progress\ndata: " + current.json + b"\n\n"
        assert b"\n" not in current.json  # one data line

    # the timestamp is the id's milliseconds, exactly, for any millisecond
    for ms in (0, 1, 999, 1764310000000, 1764310000001, 1764310000123, 1764310000999, 1795849902867):
        handmade = Event(f"{ms}-7", "t1", "analysis:a1", "x", b"{}")
        assert orjson.loads(handmade.json)["ts"] == expected_ts(handmade.id)
    assert orjson.loads(Event("1764310000000-0", "t", "a:b", "x", b"{}").json)["ts"] == "2025-11-28T06:06:40.000Z"


# --- Redis only -------------------------------------------------------------------------


@pytest.fixture
async def redis_log(make_settings: Callable[..., Settings], redis_url: str) -> AsyncIterator[EventLog]:
    event_log = create_event_log(make_settings(redis_url=redis_url))
    await event_log.start()
    yield event_log
    await event_log.close()


async def test_redis_losing_its_data_turns_old_cursors_into_resets(redis_log: EventLog) -> None:
    log = redis_log
    old, _ = await log.append(draft("t1", "user:u1", {"i": 1}))
    await log.append(draft("t1", "user:u1", {"i": 2}))
    assert key(old) >= key(await log.floor())

    # Redis restarts empty: the origin, the log and its indexes are gone
    await eventually(lambda: now_ms() > key(old)[0] + 1)  # a new origin (now - 1 ms) is then later
    redis = log.redis  # type: ignore[attr-defined]
    keys = [k async for k in redis.scan_iter(match=f"{log.prefix}:*")]  # type: ignore[attr-defined]
    assert f"{log.prefix}:origin".encode() in keys and f"{log.prefix}:log".encode() in keys  # type: ignore[attr-defined]
    await redis.delete(*keys)

    assert key(old) < key(await log.floor())
    fresh, _ = await log.append(draft("t1", "user:u1", {"i": 3}))
    assert key(fresh) >= key(await log.floor())


async def test_redis_tail_skips_a_malformed_entry(redis_log: EventLog) -> None:
    log = redis_log
    redis = log.redis  # type: ignore[attr-defined]
    start = await log.head()
    before = malformed_count()
    await redis.xadd(log.log_key, {"garbage": "yes"})  # type: ignore[attr-defined]
    await redis.xadd(log.log_key, {"tenant": "t1", "channel": "user:u1", "type": "x", "data": "{not json"})  # type: ignore[attr-defined]
    await redis.xadd(log.log_key, {"tenant": b"\xff\xfe", "channel": "user:u1", "type": "x", "data": "{}"})  # type: ignore[attr-defined]
    good, _ = await log.append(draft("t1", "user:u1", {"ok": True}))
    stream = log.tail(start)
    try:
        got = await take(stream, 1)
    finally:
        await stream.aclose()
    assert [(e.id, orjson.loads(e.data)) for e in got] == [(good, {"ok": True})]
    assert malformed_count() - before == 3
