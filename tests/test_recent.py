"""The hub's recent window (REPLAY_MEMORY_EVENTS): a resume inside it reads nothing from the log,
gets exactly what the log would have given, and shares the live events' objects (one encoding);
a resume below it, or a window too small, reads the log as before."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator

import pytest

from app.auth import Principal
from app.channels import Authorizer
from app.core.hub import Hub
from app.core.publish import prepare
from app.core.recent import RecentEvents
from app.core.session import Limits, SessionFactory
from app.eventlog.base import Event, EventLog
from app.eventlog.memory import MemoryEventLog


def event(ms: int, seq: int, tenant: str = "t1", channel: str = "user:u1") -> Event:
    return Event(f"{ms}-{seq}", tenant, channel, "x", b"{}")


def reference(events: list[Event], tenant: str, channel: str, after: str, until: str, limit: int) -> list[Event]:
    a, u = Event(after, "", "", "", b"").key, Event(until, "", "", "", b"").key
    return [e for e in events if e.tenant == tenant and e.channel == channel and a < e.key <= u][:limit]


def test_reads_match_the_log_inside_the_window_and_refuse_outside_it() -> None:
    rng = random.Random(7)
    window = RecentEvents(capacity=50)
    assert window.read("t1", "user:u1", "1-0", "2-0", 10) is None  # not started: nothing is known
    window.start("1000-0")
    seen: list[Event] = []
    for i in range(400):
        e = event(1001 + i // 3, i % 3, tenant=rng.choice(["t1", "t2"]), channel=rng.choice(["user:u1", "analysis:a"]))
        window.add(e)
        seen.append(e)
        held = seen[-50:]
        floor = seen[-51].id if len(seen) > 50 else "1000-0"
        for _ in range(5):
            after = rng.choice([floor, *(x.id for x in held)])
            until = rng.choice([x.id for x in held if x.key >= Event(after, "", "", "", b"").key] or [after])
            tenant, channel = rng.choice(["t1", "t2"]), rng.choice(["user:u1", "analysis:a", "job:j"])
            limit = rng.choice([1, 3, 500])
            assert window.read(tenant, channel, after, until, limit) == reference(seen, tenant, channel, after, until, limit)
        if len(seen) > 51:  # a cursor below the floor may have lost events to eviction: not answered
            assert window.read("t1", "user:u1", seen[-52].id, seen[-1].id, 500) is None
        assert window.read("t1", "user:u1", seen[-1].id, f"{1001 + 400}-0", 500) is None  # past the last dispatched
    assert len(window) == 50


def test_a_window_of_zero_holds_nothing_and_answers_nothing() -> None:
    window = RecentEvents(capacity=0)
    window.start("1000-0")
    window.add(event(1001, 0))
    assert len(window) == 0
    assert window.read("t1", "user:u1", "1000-0", "1001-0", 10) is None
    assert window.read("t1", "user:u1", "1001-0", "1001-0", 10) == []  # nothing after the last one: exact


class CountingLog(MemoryEventLog):
    """The memory engine, counting the history reads a replay makes."""

    def __init__(self) -> None:
        super().__init__(max_events=100_000, retention_seconds=3600, idempotency_seconds=60)
        self.reads = 0

    async def read(self, tenant: str, channel: str, after: str, until: str, limit: int) -> list[Event]:
        self.reads += 1
        return await super().read(tenant, channel, after, until, limit)


@pytest.fixture
async def log() -> AsyncIterator[CountingLog]:
    event_log = CountingLog()
    await event_log.start()
    yield event_log
    await event_log.close()


async def started_hub(log: EventLog, recent_events: int) -> Hub:
    hub = Hub(log, recent_events=recent_events)
    await hub.start()
    return hub


async def append(log: EventLog, channel: str, n: int) -> list[str]:
    out = []
    for i in range(n):
        event_id, _ = await log.append(prepare("t1", channel, "thing.happened", {"i": i}, max_event_bytes=65536))
        out.append(event_id)
    return out


async def dispatched(hub: Hub, event_id: str) -> None:
    assert await hub.reached(event_id, 5), f"the hub never dispatched {event_id}"


async def resume(hub: Hub, log: EventLog, since: str, until_id: str) -> list[Event]:
    factory = SessionFactory(log=log, hub=hub, authorizer=Authorizer(None, cache_seconds=1, timeout=1),
                             limits=Limits(max_backlog=10_000, replay_batch=7))
    session = factory.create(Principal("u1", "t1", exp=time.time() + 600, patterns=("repository:*",)), label="test")
    await session.open(["repository:r1"], since)
    got: list[Event] = []
    try:
        while not got or got[-1].key < Event(until_id, "", "", "", b"").key:
            batch = await session.next_batch(timeout=5)
            assert batch.events and not batch.reset, f"stalled after {len(got)} events"
            got += batch.events
    finally:
        session.close()
    return got


async def test_a_resume_inside_the_window_reads_no_history_and_shares_the_live_objects(log: CountingLog) -> None:
    hub = await started_hub(log, recent_events=1000)
    try:
        first = (await append(log, "user:u1", 1))[0]
        mine = (await append(log, "user:u1", 20)) + (await append(log, "repository:r1", 20)) + (await append(log, "user:u2", 5))
        await dispatched(hub, mine[-1])
        got = await resume(hub, log, first, mine[-6])
        assert [e.id for e in got] == mine[:40]  # both channels merged in id order, nothing of user:u2
        assert log.reads == 0
        held = {e.id: e for e in hub.recent._order}
        assert all(e is held[e.id] for e in got)  # the objects live delivery encoded: one encoding each
    finally:
        await hub.stop()


@pytest.mark.parametrize("recent_events", [10, 0], ids=["below-the-window", "no-window"])
async def test_a_resume_the_window_does_not_cover_reads_the_log_and_gets_the_same(log: CountingLog,
                                                                                   recent_events: int) -> None:
    hub = await started_hub(log, recent_events=recent_events)
    try:
        first = (await append(log, "user:u1", 1))[0]
        mine = await append(log, "user:u1", 30)
        await dispatched(hub, mine[-1])
        assert [e.id for e in await resume(hub, log, first, mine[-1])] == mine
        assert log.reads > 0
    finally:
        await hub.stop()
