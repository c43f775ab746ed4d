"""Web Push giving up (app/push/worker.py `_retry`), on both queue engines (SQLite + the memory
queue, Postgres + the Redis Streams queue): a push service that only ever answers 5xx or 429 is
tried exactly PUSH_MAX_ATTEMPTS times, then the push is given up, counted as `failed` and gone
from the queue, so nothing retries it afterwards; a retry that would come after the push's TTL is
not made (given up and counted at once). Waits are on conditions (the metric, the queue's own
state), never on a time window."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from app.push.queue.base import PushJob, PushQueue
from app.push.queue.memory import MemoryPushQueue
from app.push.queue.redis import RedisPushQueue
from app.settings import Settings
from tests.conftest import auth, eventually, running_app, service_token, token
from tests.notify_support import (
    FakePushService,
    backend,  # noqa: F401  (fixture)
    fake_push_service,
    migrate_and_empty,
    pg_url,  # noqa: F401  (fixture)
)

WAIT = 20.0
MAX_ATTEMPTS = 4
TTL = 60
NOTE = {"tenant": "t1", "type": "mention", "title": "You were mentioned", "message": "look"}
RESULTS = ("delivered", "gone", "retry", "failed", "rejected", "vapid_rejected")


@pytest.fixture
async def fake() -> AsyncIterator[FakePushService]:
    async with fake_push_service() as service:
        yield service


@pytest.fixture
async def pushing(backend: tuple[str, str | None], make_settings: Callable[..., Settings],
                  fake: FakePushService) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """The app in-process with PUSH_MAX_ATTEMPTS=4, short backoffs and a TTL of 60 s; its worker
    sends to the fake push service, which knows the app's VAPID key."""
    database_url, redis_url = backend
    await migrate_and_empty(database_url)
    settings = make_settings(database_url=database_url, redis_url=redis_url, push_allowed_endpoints="http://127.0.0.1:",
                             push_max_attempts=MAX_ATTEMPTS, push_retry_base_seconds=0.05, push_retry_max_seconds=0.2,
                             push_ttl_seconds=TTL)
    async with running_app(settings) as (app, client):
        fake.vapid_public_key = (await client.get("/v1/push/vapid-public-key", headers=auth(token()))).json()["public_key"]
        yield app, client


async def subscribe(client: httpx.AsyncClient, fake: FakePushService, name: str, user: str = "u1") -> None:
    response = await client.post("/v1/push/subscriptions", json=fake.browser(name).subscription(fake.endpoint(name)),
                                 headers=auth(token(user)))
    assert response.status_code in (200, 201), response.text


async def notify(client: httpx.AsyncClient, user: str = "u1") -> dict:
    response = await client.post("/v1/notifications", json={**NOTE, "user_id": user}, headers=auth(service_token()))
    assert response.status_code == 201, response.text
    return response.json()


def results() -> dict[str, float]:
    return {r: REGISTRY.get_sample_value("realtime_push_results_total", {"result": r}) or 0.0 for r in RESULTS}


def since(before: dict[str, float]) -> dict[str, float]:
    """What the push results counter gained since `before` (only the outcomes that moved)."""
    now = results()
    return {r: now[r] - before[r] for r in RESULTS if now[r] != before[r]}


async def queue_is_empty(queue: PushQueue) -> bool:
    """Nothing waiting, delayed for a retry or handed out unsettled: nothing can be sent again."""
    if isinstance(queue, MemoryPushQueue):
        return not (queue._ready or queue._delayed or queue._taken)
    assert isinstance(queue, RedisPushQueue)
    # settled entries are acknowledged and deleted, so the stream holds only waiting or pending ones
    return await queue.redis.xlen(queue.stream) == 0 and await queue.redis.zcard(queue.delayed) == 0


def no_problems(fake: FakePushService) -> None:
    assert [r.problem for r in fake.received if r.problem] == []


async def test_a_push_service_that_keeps_failing_is_tried_max_attempts_times_then_given_up(
        pushing: Any, fake: FakePushService, caplog: pytest.LogCaptureFixture) -> None:
    app, client = pushing
    queue = app.state.services.push_queue
    answers = [500, 503, 429, 502] * 10  # all retryable; after these the fake would answer 201
    fake.script("down", *answers)
    await subscribe(client, fake, "down")
    await subscribe(client, fake, "up")
    before = results()
    with caplog.at_level(logging.WARNING, logger="app.push.worker"):
        note = await notify(client)
        await eventually(lambda: since(before).get("failed", 0) >= 1 and fake.for_("up"), WAIT)
        await eventually(lambda: queue_is_empty(queue), WAIT)
    no_problems(fake)
    assert [r.status for r in fake.for_("down")] == answers[:MAX_ATTEMPTS]  # exactly PUSH_MAX_ATTEMPTS sends
    assert all(r.payload and r.payload["id"] == note["id"] for r in fake.received)
    assert since(before) == {"retry": MAX_ATTEMPTS - 1, "failed": 1, "delivered": 1}
    given_up = [r.getMessage() for r in caplog.records if "given up" in r.getMessage()]
    assert len(given_up) == 1 and f"after {MAX_ATTEMPTS} attempts (attempts exhausted" in given_up[0], given_up
    assert fake.endpoint("down") not in given_up[0]  # capability URLs stay out of logs

    # nothing retries it afterwards: the worker still sends (another user's push goes out), the
    # queue is empty again, and the given-up endpoint got no further request
    await subscribe(client, fake, "later", user="u2")
    await notify(client, user="u2")
    await eventually(lambda: fake.for_("later"), WAIT)
    await eventually(lambda: queue_is_empty(queue), WAIT)
    assert len(fake.for_("down")) == MAX_ATTEMPTS
    assert since(before) == {"retry": MAX_ATTEMPTS - 1, "failed": 1, "delivered": 2}
    # the subscription is kept: failing to reach a push service is not the subscription being gone
    endpoints = {s["endpoint"] for s in (await client.get("/v1/push/subscriptions", headers=auth(token()))).json()["items"]}
    assert fake.endpoint("down") in endpoints


async def test_a_retry_that_would_come_after_the_ttl_is_not_made(pushing: Any, fake: FakePushService,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """The push service asks us to come back after the push's TTL (60 s) has passed: the push is
    given up after its first attempt and counted, not sent late. One asked to come back within
    the TTL is retried and delivered, so it is the expiry that decides."""
    app, client = pushing
    queue = app.state.services.push_queue
    fake.script("later", (503, {"Retry-After": str(TTL * 2)}))
    fake.script("much-later", (429, {"Retry-After": format_datetime(datetime.now(UTC) + timedelta(hours=2), usegmt=True)}))
    fake.script("soon", (503, {"Retry-After": "1"}))
    for name in ("later", "much-later", "soon"):
        await subscribe(client, fake, name)
    before = results()
    with caplog.at_level(logging.WARNING, logger="app.push.worker"):
        await notify(client)
        await eventually(lambda: since(before).get("failed", 0) >= 2 and len(fake.for_("soon")) == 2, WAIT)
        await eventually(lambda: queue_is_empty(queue), WAIT)
    no_problems(fake)
    assert [r.status for r in fake.for_("later")] == [503]  # one attempt, no retry after the TTL
    assert [r.status for r in fake.for_("much-later")] == [429]
    assert [r.status for r in fake.for_("soon")] == [503, 201]
    assert since(before) == {"retry": 1, "failed": 2, "delivered": 1}
    given_up = [r.getMessage() for r in caplog.records if "given up" in r.getMessage()]
    assert len(given_up) == 2 and all("after 1 attempts (it would expire first" in m for m in given_up), given_up


async def test_a_push_whose_ttl_passed_while_queued_is_not_sent(pushing: Any, fake: FakePushService) -> None:
    """E.g. every worker was down for longer than the TTL: the push is out of date, so it is
    dropped and counted, not delivered (with a fresh TTL at the push service)."""
    app, _ = pushing
    queue = app.state.services.push_queue
    keys = fake.browser("stale").subscription("x")["keys"]
    stale = PushJob(id="stale", subscription_id="s", endpoint=fake.endpoint("stale"), p256dh=keys["p256dh"], auth=keys["auth"],
                    payload='{"n": 1}', ttl=TTL, urgency="normal", created_ms=int((time.time() - TTL - 10) * 1000))
    before = results()
    await queue.put([stale])
    await eventually(lambda: sum(since(before).values()) >= 1, WAIT)  # settled, one way or another
    await eventually(lambda: queue_is_empty(queue), WAIT)
    assert fake.for_("stale") == []
    assert "delivered" not in since(before) and sum(since(before).values()) == 1


async def test_a_push_sent_late_gets_only_what_is_left_of_its_ttl(pushing: Any, fake: FakePushService) -> None:
    """The push service may keep a push for its TTL: counted from when it was queued, not afresh at
    each attempt, so a late or retried push never outlives what its sender asked for."""
    app, _ = pushing
    queue = app.state.services.push_queue
    keys = fake.browser("late").subscription("x")["keys"]
    late = PushJob(id="late", subscription_id="s", endpoint=fake.endpoint("late"), p256dh=keys["p256dh"], auth=keys["auth"],
                   payload='{"n": 1}', ttl=TTL, urgency="normal", created_ms=int((time.time() - TTL / 2) * 1000))
    await queue.put([late])
    await eventually(lambda: fake.for_("late"), WAIT)
    [got] = fake.for_("late")
    assert 0 < int(got.headers["ttl"]) <= TTL / 2 + 1
