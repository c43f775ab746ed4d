"""Start-up and shutdown: what started is stopped, in reverse order, also when start-up fails.

Every part's start and stop is spied on (recorded, then run for real). On Redis the app's
connections carry a client name of this test's own (`?client_name=` in REDIS_URL), so `CLIENT LIST`
on the shared Redis tells whether the process left any open.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis as sync_redis
import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth import Principal
from app.channels import Authorizer
from app.core.hub import Hub
from app.drain import Drain
from app.eventlog.memory import MemoryEventLog
from app.eventlog.redis import RedisEventLog
from app.ingest import Ingest
from app.main import create_app
from app.presence.tracker import PresenceTracker
from app.push.queue.memory import MemoryPushQueue
from app.push.queue.redis import RedisPushQueue
from app.push.sender import PushSender
from app.push.worker import PushWorker
from app.settings import Settings
from tests.conftest import REDIS_URL, eventually

# (part, its start or None when it is only made, its stop), in start-up order: shutdown is the reverse
PARTS = [
    ("redis", None, "redis.aclose"),
    ("event_log", "event_log.start", "event_log.close"),
    ("engine", None, "engine.dispose"),
    ("authorizer", None, "authorizer.close"),
    ("ingest", "ingest.start", "ingest.stop"),
    ("push_queue", "push_queue.start", "push_queue.close"),
    ("sender", "sender.start", "sender.close"),
    ("pusher", "pusher.start", "pusher.stop"),
    ("hub", "hub.start", "hub.stop"),
    ("presence", "presence.start", "presence.stop"),
]
REDIS_ONLY = {"redis", "ingest"}


class Boom(Exception):
    pass


class Lifecycle:
    """Records every part's start and stop; can make one of them raise instead."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, client_name: str | None) -> None:
        self.calls: list[str] = []
        self.open_at_failure: int | None = None  # the app's Redis connections when the failure hit
        self._monkeypatch = monkeypatch
        self._client_name = client_name
        self._methods: dict[str, list[tuple[type, str]]] = {}
        for label, targets in {
            "event_log.start": [(RedisEventLog, "start"), (MemoryEventLog, "start")],
            "event_log.close": [(RedisEventLog, "close"), (MemoryEventLog, "close")],
            "engine.dispose": [(AsyncEngine, "dispose")],
            "authorizer.close": [(Authorizer, "close")],
            "ingest.start": [(Ingest, "start")],
            "ingest.stop": [(Ingest, "stop")],
            "push_queue.start": [(RedisPushQueue, "start"), (MemoryPushQueue, "start")],
            "push_queue.close": [(RedisPushQueue, "close"), (MemoryPushQueue, "close")],
            "sender.start": [(PushSender, "start")],
            "sender.close": [(PushSender, "close")],
            "pusher.start": [(PushWorker, "start")],
            "pusher.stop": [(PushWorker, "stop")],
            "hub.start": [(Hub, "start")],
            "hub.stop": [(Hub, "stop")],
            "presence.start": [(PresenceTracker, "start")],
            "presence.stop": [(PresenceTracker, "stop")],
            "redis.aclose": [(aioredis.Redis, "aclose")],
        }.items():
            self._methods[label] = targets
            for cls, name in targets:
                self._wrap(cls, name, label, fail=False)
        real_begin = Drain.begin

        def begin(drain: Drain) -> None:
            self.calls.append("drain.begin")
            real_begin(drain)

        monkeypatch.setattr(Drain, "begin", begin)

    def _mine(self, label: str, obj: Any) -> bool:
        """Only the app's own Redis client counts (not this test's, nor another test's)."""
        if label != "redis.aclose":
            return True
        return obj.connection_pool.connection_kwargs.get("client_name") == self._client_name

    def _wrap(self, cls: type, name: str, label: str, *, fail: bool) -> None:
        real = getattr(cls, name)

        async def spy(obj: Any, *args: Any, **kwargs: Any) -> Any:
            if not self._mine(label, obj):
                return await real(obj, *args, **kwargs)
            if fail:
                self.open_at_failure = app_connections(self._client_name)
                raise Boom(label)
            self.calls.append(label)
            return await real(obj, *args, **kwargs)

        self._monkeypatch.setattr(cls, name, spy)

    def fail(self, label: str) -> None:
        """Make `label` raise Boom instead of running (not recorded: it never ran)."""
        for cls, name in self._methods[label]:
            self._wrap(cls, name, label, fail=True)


def app_connections(client_name: str | None) -> int:
    """Connections open on the shared Redis under the app's client name."""
    if client_name is None:
        return 0
    client = sync_redis.Redis.from_url(REDIS_URL)
    try:
        return sum(1 for c in client.client_list() if c.get("name") == client_name)
    finally:
        client.close()


def parts_of(engine_name: str) -> list[tuple[str, str | None, str]]:
    return [p for p in PARTS if engine_name == "redis" or p[0] not in REDIS_ONLY]


def expected(parts: list[tuple[str, str | None, str]], drain: bool) -> list[str]:
    """The starts of `parts` in order, then their stops in reverse (the drain before all of them)."""
    starts = [start for _, start, _ in parts if start]
    return starts + (["drain.begin"] if drain else []) + [stop for _, _, stop in reversed(parts)]


@pytest.fixture
def app_settings(engine_name: str, make_settings: Callable[..., Settings], prefix: str,
                 request: pytest.FixtureRequest) -> Iterator[tuple[Settings, str | None]]:
    if engine_name == "redis":
        client_name = f"{prefix}-app"
        yield make_settings(redis_url=f"{request.getfixturevalue('redis_url')}?client_name={client_name}"), client_name
    else:
        yield make_settings(), None


@pytest.mark.parametrize(("engine_name", "failing"), [
    *(("memory", failing) for failing in ("event_log.start", "pusher.start", "presence.start")),
    *(("redis", failing) for failing in ("event_log.start", "ingest.start", "pusher.start", "presence.start")),
])
async def test_a_start_up_that_fails_part_way_stops_what_it_had_started(
    engine_name: str, app_settings: tuple[Settings, str | None], failing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, client_name = app_settings
    parts = parts_of(engine_name)
    lifecycle = Lifecycle(monkeypatch, client_name)
    lifecycle.fail(failing)
    app = create_app(settings)

    with pytest.raises(Boom, match=failing):
        async with app.router.lifespan_context(app):
            pytest.fail("start-up went on after a part failed")

    before = parts[: [start for _, start, _ in parts].index(failing)]
    # every part started before the failure stopped, in reverse; nothing after it started
    assert lifecycle.calls == expected(before, drain=False)
    if client_name is not None:
        if failing != "event_log.start":  # the log had used Redis: the test sees the app's connections
            assert lifecycle.open_at_failure
        await eventually(lambda: app_connections(client_name) == 0)


async def test_shutdown_stops_every_part_in_reverse_draining_first(
    engine_name: str, app_settings: tuple[Settings, str | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, client_name = app_settings
    lifecycle = Lifecycle(monkeypatch, client_name)
    app = create_app(settings)

    async with app.router.lifespan_context(app):
        started = list(lifecycle.calls)
        # a few commands at once: connections then wait idle in the pool, where a close must find them
        tickets = app.state.services.tickets
        await asyncio.gather(*(tickets.issue(Principal("u1", "t1", time.time() + 60)) for _ in range(4)))
        open_while_running = app_connections(client_name)

    parts = parts_of(engine_name)
    assert started == [start for _, start, _ in parts if start]
    assert lifecycle.calls == expected(parts, drain=True)
    if client_name is not None:
        assert open_while_running
        await eventually(lambda: app_connections(client_name) == 0)


async def test_a_stop_that_fails_does_not_keep_the_other_parts_running(
    engine_name: str, app_settings: tuple[Settings, str | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, client_name = app_settings
    lifecycle = Lifecycle(monkeypatch, client_name)
    lifecycle.fail("hub.stop")
    app = create_app(settings)

    with pytest.raises(Boom, match=r"hub\.stop"):
        async with app.router.lifespan_context(app):
            pass

    parts = parts_of(engine_name)
    assert lifecycle.calls == [c for c in expected(parts, drain=True) if c != "hub.stop"]
    if client_name is not None:
        await eventually(lambda: app_connections(client_name) == 0)
