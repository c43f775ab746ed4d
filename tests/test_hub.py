"""The fan-out isolates its subscribers: one whose delivery raises is failed and dropped, and every
other subscriber still gets each event exactly once, before and after."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest

from app.auth import Principal
from app.channels import Authorizer
from app.core.hub import Hub
from app.core.outlet import CloseReason, Outlet
from app.core.publish import prepare
from app.core.session import DeliveryFailed, Limits, SessionFactory
from app.eventlog import create_event_log
from app.eventlog.base import Event, EventLog
from app.redis_client import create_redis
from app.settings import Settings
from tests.conftest import eventually


class Recorder:
    """A subscriber that keeps what it is handed."""

    def __init__(self, tenant: str = "t1") -> None:
        self.tenant, self.label = tenant, "test"
        self.got: list[str] = []
        self.failed = 0

    def deliver(self, event: Event) -> bool:
        self.got.append(event.id)
        return False

    def fail(self) -> None:
        self.failed += 1


class Broken(Recorder):
    def deliver(self, event: Event) -> bool:
        raise RuntimeError("a bug in one connection's delivery")


def draft(i: int):  # type: ignore[no-untyped-def]
    return prepare("t1", "repository:r1", "thing.happened", {"i": i}, max_event_bytes=65536)


@pytest.fixture
async def started(settings: Settings) -> AsyncIterator[tuple[EventLog, Hub]]:
    """A log of the parametrized engine and a hub tailing it; all closed afterwards."""
    redis = create_redis(settings)
    log = create_event_log(settings, redis)
    await log.start()
    hub = Hub(log)
    await hub.start()
    yield log, hub
    await hub.stop()
    await log.close()
    if redis is not None:
        await redis.aclose()


async def test_a_subscriber_whose_delivery_raises_neither_stops_nor_duplicates_the_others(
        started: tuple[EventLog, Hub], caplog: pytest.LogCaptureFixture) -> None:
    log, hub = started
    # many good subscribers, so that some come after the broken one in the route's set order
    good = [Recorder() for _ in range(20)]
    broken = Broken()
    for subscriber in [*good[:10], broken, *good[10:]]:
        hub.add(subscriber, "repository:r1")
    with caplog.at_level(logging.ERROR, logger="app.core.hub"):
        sent = [(await log.append(draft(i)))[0] for i in range(5)]
        await eventually(lambda: all(len(s.got) >= len(sent) for s in good))
        more = [(await log.append(draft(i)))[0] for i in range(5, 10)]
        await eventually(lambda: all(len(s.got) >= len(sent) + len(more) for s in good))
    for subscriber in good:
        assert subscriber.got == sent + more  # each once, in order, after the failure too
    assert broken.failed == 1  # told once, then dropped
    assert hub.subscribers("t1", "repository:r1") == len(good)
    assert any("failed; closing that connection" in r.getMessage() for r in caplog.records)


async def test_a_failed_session_tells_its_transport_and_its_consumer(started: tuple[EventLog, Hub]) -> None:
    log, hub = started
    closed: list[CloseReason] = []

    def write(event: Event) -> bool:
        raise RuntimeError("the transport's writer is broken")

    factory = SessionFactory(log=log, hub=hub, authorizer=Authorizer(None, cache_seconds=1, timeout=1),
                             limits=Limits(max_backlog=100, replay_batch=100))
    session = factory.create(Principal("u1", "t1", exp=time.time() + 600, patterns=("repository:*",)), label="test",
                             outlet=Outlet(write=write, close=closed.append))
    other = factory.create(Principal("u2", "t1", exp=time.time() + 600, patterns=("repository:*",)), label="test")
    try:
        await session.open(["repository:r1"], None)
        await other.open(["repository:r1"], None)
        first = await session.next_batch(0)  # nothing yet; parks on the next call
        assert first.events == []
        waiter = asyncio.create_task(session.next_batch())
        await eventually(lambda: session._parked)
        event_id, _ = await log.append(draft(0))
        with pytest.raises(DeliveryFailed):
            await waiter
        assert closed == [CloseReason.FAILED]
        assert session.channels == set() and hub.subscribers("t1", "repository:r1") == 1
        batch = await other.next_batch(5)
        assert [e.id for e in batch.events] == [event_id]
    finally:
        session.close()
        other.close()
