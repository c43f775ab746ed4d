"""The subscription core without sockets: Hub + Session over both log engines.

Every delivery check ends with a sentinel event appended last: the client reads until it sees it,
so "nothing missing, nothing twice, in order" is proved without waiting for silence.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import orjson
import pytest
from prometheus_client import REGISTRY

from app.auth import Principal
from app.channels import Authorizer
from app.core.hub import Hub
from app.core.outlet import QUEUED, Outlet
from app.core.publish import prepare
from app.core.session import Batch, Limits, Session, SessionFactory, SlowConsumer
from app.errors import BadChannel, BadCursor, Forbidden
from app.eventlog import create_event_log
from app.eventlog.base import ZERO, Event, EventLog, parse_cursor
from app.redis_client import create_redis
from app.settings import Settings
from tests.conftest import eventually

MAX_EVENT_BYTES = 65536


def draft(tenant: str, channel: str, data: dict | None = None):
    return prepare(tenant, channel, "thing.happened", data if data is not None else {}, max_event_bytes=MAX_EVENT_BYTES)


def key(cursor: str) -> tuple[int, int]:
    return parse_cursor(cursor)


@dataclass
class Core:
    log: EventLog
    hub: Hub
    authorizer: Authorizer
    sessions: list[Session] = field(default_factory=list)

    def session(self, user: str = "u1", tenant: str = "t1", *, client_id: str | None = None, max_backlog: int = 100_000,
                replay_batch: int = 100, patterns: tuple[str, ...] = ("repository:*",), outlet: Outlet = QUEUED,
                cursor_flush_seconds: float = 0.5, state_namespaces: frozenset[str] = frozenset()) -> Session:
        principal = Principal(user, tenant, exp=time.time() + 600, patterns=patterns)
        factory = SessionFactory(log=self.log, hub=self.hub, authorizer=self.authorizer,
                                 limits=Limits(max_backlog=max_backlog, replay_batch=replay_batch),
                                 cursor_flush_seconds=cursor_flush_seconds, state_namespaces=state_namespaces)
        session = factory.create(principal, label="test", outlet=outlet, client_id=client_id)
        self.sessions.append(session)
        return session

    async def append(self, tenant: str, channel: str, data: dict | None = None) -> str:
        event_id, created = await self.log.append(draft(tenant, channel, data))
        assert created
        return event_id


@pytest.fixture(params=[0, 50_000], ids=["replay-from-log", "replay-from-memory"])
async def make_core(settings: Settings, make_settings: Callable[..., Settings],
                    request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Awaitable[Core]]]:
    """A started log (of the parametrized engine, with settings overrides) and hub, with and without
    the hub's recent window (REPLAY_MEMORY_EVENTS); all closed afterwards."""
    cores: list[Core] = []
    clients = []  # each core's Redis client (none on the memory engine), closed last

    async def build(**overrides: object) -> Core:
        core_settings = make_settings(redis_url=settings.redis_url, **overrides)
        redis = create_redis(core_settings)
        if redis is not None:
            clients.append(redis)
        event_log = create_event_log(core_settings, redis)
        await event_log.start()
        hub = Hub(event_log, recent_events=request.param)
        await hub.start()
        core = Core(event_log, hub, Authorizer(None, cache_seconds=1, timeout=1))
        cores.append(core)
        return core

    yield build
    for core in cores:
        for session in core.sessions:
            session.close()
        await core.hub.stop()
        await core.authorizer.close()
        await core.log.close()
    for redis in clients:
        await redis.aclose()


@pytest.fixture
async def core(make_core: Callable[..., Awaitable[Core]]) -> Core:
    return await make_core()


async def receive_until(session: Session, last_id: str, timeout: float = 10.0, batches: list[Batch] | None = None) -> list[Event]:
    """Every event the session hands out up to and including `last_id` (fails on a reset or a miss)."""
    got: list[Event] = []
    deadline = time.monotonic() + timeout
    while not got or key(got[-1].id) < key(last_id):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{last_id} not received; got {len(got)} events, last {got[-1].id if got else None}")
        batch = await session.next_batch(timeout=remaining)
        assert not batch.reset
        if batches is not None and batch.events:
            batches.append(batch)
        got.extend(batch.events)
    return got


def ids(events: list[Event]) -> list[str]:
    return [e.id for e in events]


async def marker(core: Core) -> str:
    """An unrelated event whose id is a valid cursor from before what follows."""
    return await core.append("t9", "repository:marker")


# --- positioning ------------------------------------------------------------------------


async def test_without_since_only_live_events_after_open(core: Core) -> None:
    for i in range(3):
        old = await core.append("t1", "user:u1", {"old": i})
    await eventually(lambda: core.hub.position == old)  # this process's fan-out has seen them
    session = core.session()
    assert await session.open([], None) == []
    assert session.position == await core.log.head()
    live = [await core.append("t1", "user:u1", {"live": 1}), await core.append("t1", "tenant:t1", {"live": 2})]
    assert ids(await receive_until(session, live[-1])) == live


async def test_a_connection_starts_where_the_fan_out_stands_without_reading_the_log(core: Core) -> None:
    """A fresh connection is positioned at the hub's last dispatched event: no read of the log's
    head (at a storm's rate, most of a fresh set-up's Redis cost); events the hub has not
    dispatched yet still reach it, once, live. A resume still reads the head (what was published
    before it is due, even if this process has not dispatched it yet) and the floor (only the log
    knows what it has lost)."""
    before = await core.append("t1", "user:u1", {"n": 0})
    await eventually(lambda: core.hub.position == before)
    reads: list[str] = []
    for name in ("head", "floor", "bounds"):
        method = getattr(core.log, name)

        async def counted(*args, method=method, name=name) -> str:  # type: ignore[no-untyped-def]
            reads.append(name)
            return await method(*args)
        setattr(core.log, name, counted)
    fresh, resumed = core.session(), core.session()
    await fresh.open([], None)
    assert fresh.position == before and reads == []
    live = await core.append("t1", "user:u1", {"n": 1})
    await eventually(lambda: core.hub.position == live)
    await resumed.open([], before)
    # a resume: the head (what was published before it is due) and the floor (unless the log lost
    # it), read together (one round trip on Redis) and shared with the resumes of the moment
    assert reads[0] == "bounds"
    last = await core.append("t1", "user:u1", {"n": 2})
    assert ids(await receive_until(fresh, last)) == [live, last]
    assert ids(await receive_until(resumed, last)) == [live, last]


async def test_without_a_running_fan_out_the_log_positions_the_connection(core: Core) -> None:
    await core.hub.stop()
    await core.append("t1", "user:u1", {"n": 0})
    session = core.session()
    await session.open([], None)
    assert session.position == await core.log.head()


async def test_a_session_on_an_empty_log_gets_the_very_first_event(make_core: Callable[..., Awaitable[Core]]) -> None:
    core = await make_core()  # a log born just now: its first ids share the millisecond of its origin
    assert await core.log.head() == ZERO
    session = core.session()
    await session.open([], None)
    first = await core.append("t1", "user:u1", {"first": True})
    assert ids(await receive_until(session, first)) == [first]


async def test_since_replays_exactly_the_missed_events_of_the_users_channels(core: Core) -> None:
    since = await marker(core)
    streams = [
        ("t1", "user:u1"), ("t1", "tenant:t1"), ("t1", "repository:r1"),  # the user's: joined + requested
        ("t1", "repository:r2"), ("t1", "user:u2"), ("t1", "tenant:t2"),  # same tenant, not joined
        ("t2", "user:u1"), ("t2", "tenant:t1"), ("t2", "repository:r1"), ("t2", "tenant:t2"),  # another tenant
    ]
    rng = random.Random(7)
    mine = []
    for i in range(150):
        tenant, channel = rng.choice(streams)
        event_id = await core.append(tenant, channel, {"i": i, "at": f"{tenant}/{channel}"})
        if tenant == "t1" and channel in ("user:u1", "tenant:t1", "repository:r1"):
            mine.append((event_id, channel, i))
    assert {c for _, c, _ in mine} == {"user:u1", "tenant:t1", "repository:r1"}

    session = core.session(replay_batch=7)
    assert await session.open(["repository:r1"], since) == []
    sentinel = await core.append("t1", "user:u1", {"sentinel": True})
    got = await receive_until(session, sentinel)
    assert [(e.id, e.channel, orjson.loads(e.data).get("i")) for e in got] == [*mine, (sentinel, "user:u1", None)]
    assert {e.tenant for e in got} == {"t1"}

    # a cursor in the middle: exactly what came after it
    later = core.session(replay_batch=5)
    await later.open(["repository:r1"], mine[40][0])
    again = await core.append("t1", "tenant:t1", {"sentinel": 2})
    assert ids(await receive_until(later, again)) == [m[0] for m in mine[41:]] + [sentinel, again]


async def test_replay_larger_than_a_batch_arrives_complete_and_in_order(core: Core) -> None:
    since = await marker(core)
    channels = ["user:u1", "tenant:t1", "repository:r1"]
    expected = [await core.append("t1", channels[i % 3 if i % 5 else 0], {"i": i}) for i in range(1234)]
    session = core.session(replay_batch=100)
    await session.open(["repository:r1"], since)
    sentinel = await core.append("t1", "user:u1")
    batches: list[Batch] = []
    got = await receive_until(session, sentinel, batches=batches)
    assert ids(got) == [*expected, sentinel]
    assert len(batches) >= 13, [len(b.events) for b in batches]
    assert max(len(b.events) for b in batches) <= 100


async def test_resume_racing_a_concurrent_publisher_yields_each_event_once_in_order(core: Core) -> None:
    since = await marker(core)
    appended = [await core.append("t1", ("user:u1", "repository:r1")[i % 2], {"backlog": i}) for i in range(300)]
    opening = asyncio.Event()
    batches_seen = 0

    async def publish() -> None:
        await opening.wait()
        i = 0
        while i < 400 or batches_seen < 5:  # keep publishing while the replay is under way
            tenant, channel = (("t1", "user:u1"), ("t1", "repository:r1"), ("t2", "user:u1"), ("t1", "tenant:t1"),
                               ("t1", "repository:zz"))[i % 5]
            event_id = await core.append(tenant, channel, {"live": i})
            if tenant == "t1" and channel != "repository:zz":
                appended.append(event_id)
            i += 1
            await asyncio.sleep(0)  # interleave with the session (a yield, not a wait)

    publisher = asyncio.create_task(publish())
    session = core.session(replay_batch=20)
    opening.set()
    await asyncio.sleep(0)
    await session.open(["repository:r1"], since)
    got: list[Event] = []
    while not publisher.done():
        batch = await session.next_batch(timeout=1)
        assert not batch.reset
        got.extend(batch.events)
        batches_seen += 1
    await publisher
    sentinel = await core.append("t1", "tenant:t1", {"sentinel": True})
    got.extend(await receive_until(session, sentinel))
    assert ids(got) == [*appended, sentinel]
    assert not session.cut_off


async def test_overflow_during_replay_still_yields_everything_once(core: Core) -> None:
    since = await marker(core)
    expected = [await core.append("t1", "user:u1", {"backlog": i}) for i in range(200)]
    probe = core.session(user="probe")  # live, unbounded: tells when the hub has dispatched
    await probe.open(["repository:r1"], None)
    session = core.session(max_backlog=5, replay_batch=10)
    await session.open(["repository:r1"], since)

    # live events while the replay has not even started: far more than the backlog allows
    for i in range(50):
        expected.append(await core.append("t1", "repository:r1", {"live": i}))
    await receive_until(probe, expected[-1])
    assert session._overflowed, "the scenario must overflow the queue during the replay"

    # and more while it replays: after each of its first batches, another burst over the backlog
    got: list[Event] = []
    for burst in range(12):  # 12 batches of at most 10 cannot get past the 200 events of backlog
        batch = await session.next_batch(timeout=5)
        assert batch.events and not batch.reset
        got.extend(batch.events)
        for i in range(8):
            expected.append(await core.append("t1", ("user:u1", "repository:r1", "tenant:t1")[i % 3], {"burst": burst, "i": i}))
        last = await core.append("t1", "repository:r1", {"burst": burst, "last": True})
        expected.append(last)
        await receive_until(probe, last)  # the hub has handed the burst to the replaying session
    sentinel = await core.append("t1", "user:u1", {"sentinel": True})
    got.extend(await receive_until(session, sentinel))
    assert ids(got) == [*expected, sentinel]
    assert not session.cut_off


async def test_a_live_session_over_its_backlog_is_cut_off(core: Core) -> None:
    probe = core.session(user="probe")
    await probe.open(["repository:r1"], None)
    session = core.session(max_backlog=10)
    await session.open(["repository:r1"], None)

    ten = [await core.append("t1", "repository:r1", {"i": i}) for i in range(10)]
    await receive_until(probe, ten[-1])
    assert not session.cut_off  # exactly max_backlog waiting is still fine

    dropped_before = REGISTRY.get_sample_value(
        "realtime_events_dropped_total", {"transport": "test", "reason": "slow_consumer"}) or 0.0
    eleventh = await core.append("t1", "repository:r1", {"i": 10})
    await receive_until(probe, eleventh)
    await eventually(lambda: session.cut_off)
    # the ten queued and the one that overflowed are dropped from memory (not from the log)
    assert REGISTRY.get_sample_value(
        "realtime_events_dropped_total", {"transport": "test", "reason": "slow_consumer"}) == dropped_before + 11
    with pytest.raises(SlowConsumer):
        await session.next_batch(timeout=1)
    with pytest.raises(SlowConsumer):  # and stays cut off
        await session.next_batch(timeout=1)

    # a session that keeps up is not affected by the same traffic
    steady = core.session(max_backlog=10)
    await steady.open(["repository:r1"], None)
    for round_ in range(3):
        burst = [await core.append("t1", "repository:r1", {"round": round_, "i": i}) for i in range(8)]
        assert ids(await receive_until(steady, burst[-1])) == burst
    assert not steady.cut_off


async def test_since_below_the_floor_resets_then_continues_live_from_head(make_core: Callable[..., Awaitable[Core]],
                                                                          engine_name: str) -> None:
    max_events, count = (5, 40) if engine_name == "memory" else (100, 1000)
    core = await make_core(log_max_events=max_events)
    old = await core.append("t1", "user:u1", {"old": True})
    for i in range(count):
        await core.append("t1", ("user:u1", "repository:zz")[i % 2], {"i": i})
    assert key(old) < key(await core.log.floor())
    head = await core.log.head()

    session = core.session()
    await session.open([], old)
    first = await session.next_batch(timeout=5)
    assert first.reset is True and first.events == []
    assert session.position == head
    live = [await core.append("t1", "user:u1", {"after": i}) for i in range(3)]
    assert ids(await receive_until(session, live[-1])) == live


@pytest.mark.parametrize("bad", ["", "nope", "12", "1-2-3", "-1-0", "1-x", "1 -0", "9" * 20 + "-0"])
async def test_a_bad_cursor_is_a_named_error(core: Core, bad: str) -> None:
    session = core.session()
    with pytest.raises(BadCursor):
        await session.open([], bad)
    assert core.hub.subscribers("t1", "user:u1") == 0


# --- authorization and subscriptions ----------------------------------------------------


async def test_other_users_and_tenants_channels_are_refused(core: Core) -> None:
    session = core.session(patterns=("repository:*",))
    refused = await session.open(["user:u2", "tenant:t2", "project:p1", "repository:r1", "Bad Channel"], None)
    assert [(type(e), e.channel) for e in refused] == [
        (Forbidden, "user:u2"), (Forbidden, "tenant:t2"), (Forbidden, "project:p1"), (BadChannel, "Bad Channel"),
    ]
    assert session.channels == {"user:u1", "tenant:t1", "repository:r1"}
    for channel in ("user:u2", "tenant:t2", "tenant:t1x", "user:u1x", "project:p1"):
        with pytest.raises(Forbidden):
            await session.subscribe(channel)
    assert session.channels == {"user:u1", "tenant:t1", "repository:r1"}
    assert core.hub.subscribers("t1", "user:u2") == 0 and core.hub.subscribers("t1", "tenant:t2") == 0

    await core.append("t1", "user:u2", {"private": True})
    await core.append("t1", "tenant:t2")
    await core.append("t1", "project:p1")
    await core.append("t2", "tenant:t2")
    await core.append("t2", "repository:r1")
    ok = await core.append("t1", "repository:r1", {"ok": True})
    assert ids(await receive_until(session, ok)) == [ok]

    # refused channels are not replayed either
    since = await marker(core)
    await core.append("t1", "user:u2", {"private": 2})
    await core.append("t1", "tenant:t2")
    resumed = core.session()
    refused = await resumed.open(["user:u2", "tenant:t2"], since)
    assert len(refused) == 2
    mine = await core.append("t1", "user:u1")
    assert ids(await receive_until(resumed, mine)) == [mine]


async def test_unsubscribe_stops_delivery(core: Core) -> None:
    probe = core.session(user="probe")
    await probe.open(["repository:r1"], None)
    session = core.session()
    await session.open(["repository:r1"], None)
    first = await core.append("t1", "repository:r1", {"n": 1})
    assert ids(await receive_until(session, first)) == [first]

    # queued but not yet handed out when the client unsubscribes: dropped as well
    queued = await core.append("t1", "repository:r1", {"n": 2})
    await receive_until(probe, queued)
    session.unsubscribe("repository:r1")
    assert core.hub.subscribers("t1", "repository:r1") == 1  # the probe only
    await core.append("t1", "repository:r1", {"n": 3})
    sentinel = await core.append("t1", "user:u1")
    assert ids(await receive_until(session, sentinel)) == [sentinel]

    await session.subscribe("repository:r1")
    again = await core.append("t1", "repository:r1", {"n": 4})
    assert ids(await receive_until(session, again)) == [again]


# --- server-side cursor per client_id -----------------------------------------------------


async def test_client_id_resumes_exactly_after_what_was_delivered(core: Core) -> None:
    first = core.session(client_id="c1")
    await first.open(["repository:r1"], None)
    delivered = [await core.append("t1", ("user:u1", "repository:r1")[i % 2], {"i": i}) for i in range(3)]
    assert ids(await receive_until(first, delivered[-1])) == delivered
    await first.save_cursor(force=True)
    first.close()
    assert await core.log.get_cursor("t1", "u1", "c1") == delivered[-1]

    missed = [await core.append("t1", ("repository:r1", "tenant:t1")[i % 2], {"missed": i}) for i in range(4)]
    await core.append("t1", "repository:zz")
    await core.append("t2", "user:u1")

    second = core.session(client_id="c1")
    await second.open(["repository:r1"], None)
    sentinel = await core.append("t1", "user:u1")
    assert ids(await receive_until(second, sentinel)) == [*missed, sentinel]
    await second.save_cursor(force=True)
    assert await core.log.get_cursor("t1", "u1", "c1") == sentinel

    # another client_id of the same user has no cursor: it starts at the head
    other = core.session(client_id="c2")
    await other.open(["repository:r1"], None)
    live = await core.append("t1", "user:u1")
    assert ids(await receive_until(other, live)) == [live]
    # and the same client_id of another user or tenant is another cursor
    assert await core.log.get_cursor("t2", "u1", "c1") is None
    assert await core.log.get_cursor("t1", "u2", "c1") is None


async def test_a_session_that_received_nothing_does_not_move_the_stored_cursor(core: Core) -> None:
    stored = await core.append("t1", "user:u1")
    await core.log.set_cursor("t1", "u1", "c1", stored)
    await core.append("t1", "repository:zz")  # traffic the user does not see
    await core.append("t2", "user:u1")

    resumed = core.session(client_id="c1")
    await resumed.open([], None)
    assert (await resumed.next_batch(timeout=0.05)).events == []
    await resumed.save_cursor(force=True)
    resumed.close()
    assert await core.log.get_cursor("t1", "u1", "c1") == stored

    # an explicit since with nothing after it: no move either
    explicit = core.session(client_id="c1")
    await explicit.open([], await core.log.head())
    assert (await explicit.next_batch(timeout=0.05)).events == []
    await explicit.save_cursor(force=True)
    assert await core.log.get_cursor("t1", "u1", "c1") == stored

    # a client_id without a stored cursor that received nothing stores nothing
    fresh = core.session(client_id="c-new")
    await fresh.open([], None)
    assert (await fresh.next_batch(timeout=0.05)).events == []
    await fresh.save_cursor(force=True)
    assert await core.log.get_cursor("t1", "u1", "c-new") is None


# --- resume cost --------------------------------------------------------------------------


async def test_resume_cost_follows_what_the_user_missed_not_the_logs_traffic(core: Core, engine_name: str) -> None:
    backlog = 200_000 if engine_name == "memory" else 50_000
    since = await marker(core)
    noise = [
        ("t1", "repository:r2"), ("t1", "user:u2"), ("t1", "tenant:t1x"),
        ("t2", "user:u1"), ("t2", "tenant:t1"), ("t2", "repository:r1"), ("t3", "repository:r1"),
    ]
    drafts = [draft(tenant, channel, {"noise": True}) for tenant, channel in noise]
    mine_channels = ["user:u1", "tenant:t1", "repository:r1"]
    mine = []
    chunk = 50
    for start in range(0, backlog, chunk):
        # concurrent appends only speed up the Redis setup; the user's events are appended in between
        if engine_name == "redis":
            await asyncio.gather(*(core.log.append(drafts[i % len(drafts)]) for i in range(start, start + chunk)))
        else:
            for i in range(start, start + chunk):
                await core.log.append(drafts[i % len(drafts)])
        if start % (backlog // 20) == 0 and len(mine) < 20:
            mine.append(await core.append("t1", mine_channels[len(mine) % 3], {"mine": len(mine)}))
    assert len(mine) == 20

    returned: list[int] = []
    read = core.log.read

    async def counting_read(tenant: str, channel: str, after: str, until: str, limit: int) -> list[Event]:
        events = await read(tenant, channel, after, until, limit)
        returned.append(len(events))
        return events

    core.log.read = counting_read  # type: ignore[method-assign]
    session = core.session(replay_batch=500)
    await session.open(["repository:r1"], since)
    replayed: list[Event] = []
    while True:
        batch = await session.next_batch(timeout=5)
        assert batch.events, "the replay stalled"
        replayed.extend(batch.events)
        if len(replayed) >= 20:
            break
    assert ids(replayed) == mine
    assert sum(returned) == 20, returned
    sentinel = await core.append("t1", "user:u1")
    assert ids(await receive_until(session, sentinel)) == [sentinel]
    assert sum(returned) == 20


# --- the direct path (a transport that writes synchronously, as WebSocket does) ---------


class DirectClient:
    """A transport whose outlet writes synchronously (as WebSocket's does) and can be made to refuse
    writes (a full socket buffer), plus a pump like the WebSocket transport's: what the session
    queues, it sends afterwards."""

    def __init__(self) -> None:
        self.writable = True
        self.received: list[Event] = []
        self.direct_count = 0
        self.queued_count = 0
        self.outlet = Outlet(write=self.write)

    def start(self, session: Session) -> None:
        self.session = session
        self.pump = asyncio.create_task(self._pump())

    def write(self, event: Event) -> bool:
        if not self.writable:
            return False
        self.received.append(event)
        self.direct_count += 1
        return True

    async def _pump(self) -> None:
        while True:
            batch = await self.session.next_batch()
            if not batch.events:  # closed
                return
            self.received.extend(batch.events)
            self.queued_count += len(batch.events)
            await self.session.save_cursor()

    async def until(self, last_id: str) -> list[str]:
        await eventually(lambda: bool(self.received) and key(self.received[-1].id) >= key(last_id))
        return ids(self.received)


async def test_a_parked_session_hands_live_events_straight_to_the_transport(core: Core) -> None:
    client = DirectClient()
    session = core.session(outlet=client.outlet)
    await session.open(["repository:r1"], None)
    client.start(session)
    await eventually(lambda: session._parked)
    sent = [await core.append("t1", "repository:r1", {"i": i}) for i in range(20)]
    assert await client.until(sent[-1]) == sent
    assert client.direct_count == 20 and client.queued_count == 0  # no queue, no task wake-up
    assert session.position == sent[-1]
    client.pump.cancel()


async def test_a_refused_direct_write_falls_back_to_the_queue_in_order(core: Core) -> None:
    client = DirectClient()
    session = core.session(outlet=client.outlet)
    await session.open(["repository:r1"], None)
    client.start(session)
    await eventually(lambda: session._parked)
    first = [await core.append("t1", "repository:r1", {"i": i}) for i in range(5)]
    await client.until(first[-1])
    client.writable = False  # the socket's buffer is full: the queue takes over
    second = [await core.append("t1", "repository:r1", {"i": i}) for i in range(5, 10)]
    await client.until(second[-1])
    assert client.queued_count == 5
    client.writable = True
    third = [await core.append("t1", "repository:r1", {"i": i}) for i in range(10, 15)]
    assert await client.until(third[-1]) == first + second + third  # each once, in order
    assert client.direct_count >= 5
    client.pump.cancel()


async def test_the_direct_path_keeps_the_stored_cursor_moving(core: Core) -> None:
    """With a client_id, the debounced cursor save still happens although no batch is queued."""
    client = DirectClient()
    session = core.session(client_id="c1", outlet=client.outlet, cursor_flush_seconds=0.05)
    await session.open(["repository:r1"], None)
    client.start(session)
    sent: list[str] = []
    for i in range(10):
        sent.append(await core.append("t1", "repository:r1", {"i": i}))
        await asyncio.sleep(0.02)
    assert await client.until(sent[-1]) == sent
    assert client.direct_count > 0

    async def saved() -> bool:
        cursor = await core.log.get_cursor("t1", "u1", "c1")
        return cursor is not None and key(cursor) >= key(sent[-2])
    # every event after a due save goes the queued way, whose consumer saves the cursor
    last = await core.append("t1", "repository:r1", {"i": "last"})
    await client.until(last)
    await eventually(saved)
    client.pump.cancel()


async def test_snapshots_of_a_new_subscription_precede_direct_events(make_core: Callable[..., Awaitable[Core]]) -> None:
    core = await make_core()
    client = DirectClient()
    session = core.session(patterns=("analysis:*",), max_backlog=100, outlet=client.outlet,
                           state_namespaces=frozenset({"analysis"}))
    await core.log.append(prepare("t1", "analysis:a1", "analysis.progress", {"progress": 40}, max_event_bytes=MAX_EVENT_BYTES,
                                  state_namespaces=frozenset({"analysis"})))
    await session.open([], None)
    client.start(session)
    await eventually(lambda: session._parked)
    await session.subscribe("analysis:a1")
    live = await core.append("t1", "analysis:a1", {"progress": 50})
    await client.until(live)
    assert [e.snapshot for e in client.received] == [True, False]
    client.pump.cancel()


async def test_events_the_transport_could_not_write_are_not_in_the_cursor(core: Core) -> None:
    """A WebSocket whose send failed mid-batch (the client went away) tells the session: the
    cursor its close stores for client_id stops at the last event written, not at the batch's end."""
    since = await marker(core)
    sent = [await core.append("t1", "user:u1", {"i": i}) for i in range(4)]
    session = core.session(client_id="c1")
    await session.open([], since)
    batch = await session.next_batch(timeout=5)
    assert ids(batch.events) == sent and session.position == sent[-1]
    session.unsent(batch, 2)
    assert session.position == sent[1]
    session.unsent(batch, 0)
    assert session.position == since
    session.unsent(batch, 4)  # everything written: nothing moves
    assert session.position == since
